; Far JMP, CALL and RETF between code segments: conforming and non-conforming
; privilege rules, not-present and wrong-type targets, and the 16-bit forms (SDM vol 2
; JMP, CALL, RET "Protected Mode Exceptions").
%include "common.inc"

tests:
	TAG "jmp-conf"          ; a conforming DPL 0 segment at CPL 0: CPL stays 0
	RECOVER .a
	jmp CODE_CONF:.conf
.conf:	mov ax, cs
	movzx eax, ax
	SHOW eax
	jmp CODE32:.a
.a:	call newline
	TAG "jmp-to-data"       ; a data segment as a jump target: #GP(selector)
	RECOVER .b
	jmp DATA32:0
	NOFAULT
.b:	TAG "jmp-np"            ; a code segment marked not present: #NP(selector)
	mov dword [GDT_BASE + 0xA0], 0x0000FFFF
	mov dword [GDT_BASE + 0xA4], 0x004F1B0F
	RECOVER .c
	jmp 0xA0:0
	NOFAULT
.c:	TAG "jmp-r3-code"       ; non-conforming DPL 3 code from CPL 0: #GP(selector)
	RECOVER .d
	jmp CODE32R3:.d
	NOFAULT
.d:	TAG "call-16"           ; a 16-bit far call pushes 2 + 2 bytes
	RECOVER .d2
	mov [0x5000], esp
	o16 call CODE16:far16
	mov ebx, [0x5004]
	SHOW ebx
	mov eax, [0x5000]
	sub eax, esp
	SHOW eax
.d2:	call newline
	TAG "retf-imm"
	push dword 0xAAAA
	push dword 0xBBBB
	mov [0x5000], esp
	call CODE32:far32
	mov eax, [0x5000]
	sub eax, esp
	SHOW eax                ; -8: RETF 8 released both
	add esp, 0
	call newline
	TAG "retf-null"         ; RETF to a null CS: #GP(0)
	RECOVER .e
	push dword 0
	push dword .e
	retf
	NOFAULT
.e:	TAG "call-ldt"          ; a code segment in the LDT
	mov dword [LDT_BASE], 0x0000FFFF
	mov dword [LDT_BASE + 4], 0x004F9B0F
	mov ax, LDT_SEL
	lldt ax
	call 0x04:ldt_target
	call newline
	ret

BITS 16
far16:
	mov bx, sp
	mov eax, [ss:bx]
	mov [0x5004], eax
	o16 retf
BITS 32

far32:
	retf 8

ldt_target:
	mov ax, cs
	movzx eax, ax
	call hex32
	retf

%include "end.inc"
