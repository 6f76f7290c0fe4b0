; Exceptions the processor raises in protected mode, their error codes and the
; return addresses they push (SDM vol 3 6.15, "Exception and Interrupt Reference").
%include "common.inc"

tests:
	TAG "div0"              ; #DE, a fault: EIP on the DIV
	RECOVER .a
	xor ecx, ecx
	div ecx
	NOFAULT
.a:	TAG "div-overflow"
	RECOVER .b
	mov edx, 1
	mov ecx, 1
	div ecx
	NOFAULT
.b:	TAG "idiv-min"          ; -2^31 / -1 overflows
	RECOVER .c
	mov eax, 0x80000000
	cdq
	mov ecx, -1
	idiv ecx
	NOFAULT
.c:	TAG "ud2"
	RECOVER .d
	ud2
	NOFAULT
.d:	TAG "bound"             ; #BR
	RECOVER .e
	mov dword [0x5000], 10
	mov dword [0x5004], 20
	mov eax, 21
	bound eax, [0x5000]
	NOFAULT
.e:	TAG "bound-ok"
	mov eax, 15
	bound eax, [0x5000]
	SHOW eax
	call newline
	TAG "into"              ; #OF, a trap
	RECOVER .f
	mov al, 0x7F
	add al, 1
	into
	NOFAULT
.f:	TAG "int-dpl"           ; INT 0x0D from ring 3 through a DPL 0 gate: #GP(0x6A)
	RECOVER .g
	TO_RING3 .r3
	NOFAULT
.r3:	int 0x0D
.g:	TAG "int3-frame"        ; INT3 pushes the address after it
	mov dword [IDT_BASE + 3 * 8], 0  ; point #BP at a handler that reports the frame
	mov eax, bp_handler
	mov [IDT_BASE + 3 * 8], ax
	mov word [IDT_BASE + 3 * 8 + 2], CODE32
	mov word [IDT_BASE + 3 * 8 + 4], 0x8F00
	shr eax, 16
	mov [IDT_BASE + 3 * 8 + 6], ax
	int3
.int3_next:
	call newline
	TAG "gate-np"           ; a gate marked not present: #NP(vector * 8 + 2)
	RECOVER .h
	and byte [IDT_BASE + 0x40 * 8 + 5], 0x7F
	mov word [IDT_BASE + 0x40 * 8 + 4], 0x0E00
	int 0x40
	NOFAULT
.h:	TAG "gate-beyond"       ; past the IDT's limit: #GP(vector * 8 + 2)
	RECOVER .i
	int 0xF0
	NOFAULT
.i:	TAG "cli-ok"            ; CLI at CPL 0 is fine
	cli
	SHOW 0
	call newline
	ret

bp_handler:
	mov eax, [esp]
	sub eax, exceptions_int3_next
	call hex32              ; 0: the pushed EIP is the instruction after INT3
	mov eax, [esp + 8]
	and eax, 0x8D5
	call hex32
	add esp, 12
	jmp exceptions_int3_next

exceptions_int3_next equ tests.int3_next

%include "end.inc"
