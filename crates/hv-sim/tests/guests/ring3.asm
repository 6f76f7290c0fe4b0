; Ring 3: IRET to an outer privilege, privileged and IOPL-sensitive instructions there,
; the stack switch on the way back in, data segments nulled by the return outward (SDM
; vol 3 5.8, 6.12.1, 19.5; vol 2 IRET, HLT, CLI, IN).
%include "common.inc"

tests:
	TAG "frame"             ; INT 0x80 from ring 3 switches to the TSS's ring-0 stack
	mov eax, frame_handler
	mov [IDT_BASE + 0x81 * 8], ax
	mov word [IDT_BASE + 0x81 * 8 + 2], CODE32
	mov word [IDT_BASE + 0x81 * 8 + 4], 0xEE00
	shr eax, 16
	mov [IDT_BASE + 0x81 * 8 + 6], ax
	RECOVER .a
	TO_RING3 .r3a
.r3a:	mov eax, 0x1234
	int 0x81
.a:	call newline
	TAG "hlt"               ; privileged at CPL 3: #GP(0)
	RECOVER .b
	TO_RING3 .r3b
.r3b:	hlt
	int 0x80
.b:	TAG "cli"               ; IOPL 0 < CPL 3: #GP(0)
	RECOVER .c
	TO_RING3 .r3c
.r3c:	cli
	int 0x80
.c:	TAG "mov-cr0"
	RECOVER .d
	TO_RING3 .r3d
.r3d:	mov eax, cr0
	int 0x80
.d:	TAG "in-port"           ; no I/O bitmap: #GP(0)
	RECOVER .e
	TO_RING3 .r3e
.r3e:	in al, 0x80
	int 0x80
.e:	TAG "popf-if"           ; POPF at CPL 3 > IOPL leaves IF alone, no fault
	RECOVER .f
	TO_RING3 .r3f
.r3f:	push dword 0x202
	popfd
	pushfd
	pop eax
	mov [0x5000], eax
	int 0x80
.f:	mov eax, [0x5000]
	and eax, 0x200
	SHOW eax
	call newline
	TAG "null-ds"           ; IRET to ring 3 nulls a DS whose DPL is 0
	RECOVER .g
	push dword DATA32R3
	push dword STACK_R3
	push dword 0x2
	push dword CODE32R3
	push dword .r3g
	mov ax, DATA32
	mov ds, ax
	mov ax, DATA32R3
	mov es, ax
	iretd
.r3g:	mov ax, ds
	mov bx, es
	mov [es:0x5000], ax
	mov [es:0x5002], bx
	int 0x80
.g:	mov eax, [0x5000]
	SHOW eax
	call newline
	TAG "iopl3-in"          ; with IOPL 3, ring 3 may use ports
	RECOVER .h
	push dword DATA32R3
	push dword STACK_R3
	push dword 0x3002
	push dword CODE32R3
	push dword .r3h
	iretd
.r3h:	in al, 0x80
	int 0x80
.h:	SHOW 1
	call newline
	ret

frame_handler:
	; [esp] EIP, +4 CS, +8 EFLAGS, +12 ESP, +16 SS
	mov eax, [esp + 4]
	call hex32
	mov eax, [esp + 8]
	and eax, 0xFFF
	call hex32
	mov eax, [esp + 12]
	call hex32
	mov eax, [esp + 16]
	call hex32
	mov eax, esp
	call hex32
	jmp int80

%include "end.inc"
