; Segment-register loads in protected mode and their faults (SDM vol 2 MOV, "Protected
; Mode Exceptions"; vol 3 5.4-5.6).
%include "common.inc"

tests:
	TAG "null-ds"           ; a null selector in DS is allowed...
	xor ax, ax
	mov ds, ax
	mov ax, DATA32
	mov ds, ax
	call newline
	TAG "null-ss"           ; ...in SS it is #GP(0)
	RECOVER .a
	xor ax, ax
	mov ss, ax
	NOFAULT
.a:	TAG "code-in-ss"        ; a code segment in SS: #GP(selector)
	RECOVER .b
	mov ax, CODE32
	mov ss, ax
	NOFAULT
.b:	TAG "ro-in-ss"          ; read-only data in SS: #GP(selector)
	RECOVER .c
	mov ax, DATA_RO
	mov ss, ax
	NOFAULT
.c:	TAG "r3-in-ss"          ; DPL 3 stack at CPL 0: #GP(selector)
	RECOVER .d
	mov ax, DATA32R3
	mov ss, ax
	NOFAULT
.d:	TAG "np-in-ds"          ; not present: #NP(selector)
	RECOVER .e
	mov ax, DATA_NP
	mov ds, ax
	NOFAULT
.e:	TAG "beyond-gdt"        ; an index past the GDT's limit: #GP(selector)
	RECOVER .f
	mov ax, 0x1F8
	mov ds, ax
	NOFAULT
.f:	TAG "ldt-none"          ; an LDT selector with no LDT loaded: #GP(selector)
	RECOVER .g
	mov ax, 0x0C
	mov es, ax
	NOFAULT
.g:	TAG "xo-in-ds"          ; execute-only code in DS: #GP(selector)
	RECOVER .h
	mov ax, CODE_XO
	mov fs, ax
	NOFAULT
.h:	TAG "tss-in-gs"         ; a system descriptor: #GP(selector)
	RECOVER .i
	mov ax, TSS_SEL
	mov gs, ax
	NOFAULT
.i:	TAG "rpl3-dpl0"         ; RPL 3 to a DPL 0 data segment: #GP(selector)
	RECOVER .j
	mov ax, DATA32 | 3
	mov ds, ax
	NOFAULT
.j:	TAG "conf-code-ds"      ; readable conforming code in DS: allowed
	RECOVER .k
	mov ax, CODE_CONF
	mov ds, ax
	mov eax, [0]            ; read through it: CS-like base 0xF0000
	SHOW eax
	call newline
.k:	mov ax, DATA32
	mov ds, ax
	TAG "accessed"          ; loading set the descriptor's accessed bit
	mov ax, DATA16
	mov es, ax
	mov eax, [GDT_BASE + DATA16 + 4]
	SHOW eax
	call newline
	TAG "pop-ss-np"         ; POP SS of a not-present segment: #SS(selector)
	RECOVER .l
	push dword DATA_NP
	pop ss
	NOFAULT
.l:	mov ax, DATA32
	mov es, ax
	ret

%include "end.inc"
