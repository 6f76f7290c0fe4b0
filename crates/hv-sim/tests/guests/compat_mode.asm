; Compatibility mode: far transfers between 64-bit and 32- or 16-bit code, what
; segment bases mean in each, 0x40 as INC or REX, the 64-bit frame an interrupt in
; compatibility mode pushes and IRETQ back, LAHF/SAHF in 64-bit mode (SDM vol 3 5.2.1,
; 6.14; vol 2 JMP, RET, IRET, LAHF; vol 1 3.3.7).
%include "common.inc"
%include "long.inc"

tests:
	call enter_long
	ret

BITS 64
tests64:
	mov dword [0x5000], 0x11111111
	mov dword [0x20010], 0x22222222
	TAG64 "to-compat"       ; JMP FAR m16:32 into 32-bit code
	jmp dword far [rel .p32]
.p32:	dd compat32
	dw CODE32
.back:	call newline64
	TAG64 "bases64"         ; 64-bit mode ignores DS's base; FS keeps its base
	mov ax, DATA_LIM
	mov ds, ax
	mov eax, [0x5000]
	SHOW64 rax
	mov ax, DATA_LIM
	mov fs, ax
	mov eax, [fs:0x10]
	SHOW64 rax
	mov ax, DATA32
	mov ds, ax
	call newline64
	TAG64 "rex40"           ; 0x40 is a REX prefix here: 0x40 0xFF 0xC0 is INC EAX
	mov rax, 0x100000000
	db 0x40, 0xFF, 0xC0
	SHOW64 rax
	call newline64
	TAG64 "retfq"           ; RETF with REX.W pops an 8-byte RIP and CS
	push qword CODE32
	push qword compat_retf
	o64 retf
.r2:	call newline64
	TAG64 "jmp-m16:64"      ; Intel's JMP FAR with REX.W: an 8-byte offset
	jmp far qword [rel .p64]
.p64:	dq FLAT(.at64)
	dw CODE64
.at64:	mov ax, cs
	movzx eax, ax
	SHOW64 rax
	call newline64
	TAG64 "lahf-sahf"
	mov ah, 0xD5
	sahf
	mov ah, 0
	lahf
	movzx eax, ah
	SHOW64 rax
	call newline64
	TAG64 "int-frame"       ; INT3 in compatibility mode: a 64-bit frame, RSP aligned
	mov rax, FLAT(frame_dump)
	mov [IDT64 + 3 * 16], ax
	shr rax, 16
	mov [IDT64 + 3 * 16 + 6], ax
	jmp dword far [rel .p3]
.p3:	dd compat_int
	dw CODE32
.back3:	call newline64
	TAG64 "to-compat16"     ; a 16-bit code segment in compatibility mode
	jmp dword far [rel .p16]
.p16:	dd compat16
	dw CODE16
.back16: call newline64
	ret

; A 64-bit dump of the interrupt frame, then IRETQ to where INT3 left off.
frame_dump:
	mov rax, [rsp]
	mov rbx, compat_int.after  ; an offset in CS (base 0xF0000)
	sub rax, rbx
	SHOW64 rax
	mov rax, [rsp + 8]
	SHOW64 rax
	mov rax, [rsp + 16]
	and eax, 0x3FFFFF
	SHOW64 rax
	mov rax, [rsp + 24]
	SHOW64 rax
	mov rax, [rsp + 32]
	SHOW64 rax
	mov rax, rsp
	SHOW64 rax
	iretq

BITS 32
compat32:
	mov eax, esp
	push eax
	sub eax, esp
	pop ebx
	call hex32
	inc eax                 ; 0x40: INC EAX here
	call hex32
	mov ebx, 0xFFFFFFF0     ; 32-bit addresses wrap at 4 GiB
	mov ecx, 0x5010
	mov eax, [ebx + ecx]
	call hex32
	mov ax, DATA_LIM        ; and segment bases apply
	mov ds, ax
	mov eax, [0x10]
	call hex32
	mov ax, DATA32
	mov ds, ax
	jmp CODE64:FLAT(tests64.back)

compat_retf:
	mov ax, cs
	movzx eax, ax
	call hex32
	jmp CODE64:FLAT(tests64.r2)

compat_int:
	mov ecx, esp
	mov esp, 0x7E004
	int3
.after:
	mov eax, esp
	call hex32
	mov esp, ecx
	jmp CODE64:FLAT(tests64.back3)

BITS 16
compat16:
	mov ax, 0x1234
	push ax
	pop bx
	mov dx, 0xFFFF
	inc dx
	jmp dword CODE64:FLAT(.ret)
BITS 64
.ret:
	movzx eax, bx
	SHOW64 rax
	movzx eax, dx
	SHOW64 rax
	jmp tests64.back16
BITS 32

%include "end.inc"
