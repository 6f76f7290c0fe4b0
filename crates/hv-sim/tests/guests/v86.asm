; Virtual-8086 mode: entered by IRET with VM set; INT n with IOPL 3 goes to the
; protected-mode handler with the V86 segments on the stack; with IOPL 0 CLI, PUSHF
; and INT are #GP(0); I/O through the TSS bitmap (SDM vol 3 20.2-20.3).
%include "common.inc"

%define V86_CS 0xF000
%define V86_SS 0x6000

; enter_v86 IP, EFLAGS: IRET to V86 mode at F000:IP with SS:SP = 6000:FFF0.
%macro ENTER_V86 2
	push dword 0x1111       ; GS
	push dword 0x2222       ; FS
	push dword 0x3333       ; DS
	push dword 0x4444       ; ES
	push dword V86_SS
	push dword 0xFFF0
	push dword %2
	push dword V86_CS
	push dword %1
	iretd
%endmacro

tests:
	; Gate 0x21 (DPL 3) to a handler that reports the V86 frame.
	mov eax, v86_frame
	mov [IDT_BASE + 0x21 * 8], ax
	mov word [IDT_BASE + 0x21 * 8 + 2], CODE32
	mov word [IDT_BASE + 0x21 * 8 + 4], 0xEE00
	shr eax, 16
	mov [IDT_BASE + 0x21 * 8 + 6], ax
	TAG "int-iopl3"
	RECOVER .a
	ENTER_V86 .v1, 0x23002
BITS 16
.v1:	mov ax, 0x1234
	int 0x21
BITS 32
.a:	call newline
	TAG "cli-iopl0"
	RECOVER .b
	ENTER_V86 .v2, 0x20002
BITS 16
.v2:	cli
	int 0x21
BITS 32
.b:	TAG "pushf-iopl0"
	RECOVER .c
	ENTER_V86 .v3, 0x20002
BITS 16
.v3:	pushf
	int 0x21
BITS 32
.c:	TAG "int-iopl0"
	RECOVER .d
	ENTER_V86 .v4, 0x20002
BITS 16
.v4:	int 0x21
BITS 32
.d:	TAG "io-denied"         ; no bitmap in the TSS: #GP(0) even with IOPL 3
	RECOVER .e
	ENTER_V86 .v5, 0x23002
BITS 16
.v5:	in al, 0x80
	int 0x21
BITS 32
.e:	TAG "io-bitmap"         ; a bitmap allowing port 0x80 (and not 0x81)
	mov word [TSS_BASE + 0x66], 0x68
	mov dword [GDT_BASE + TSS_SEL], (TSS_BASE << 16) | 0x2068   ; limit 0x2068
	mov byte [GDT_BASE + TSS_SEL + 5], 0x89                     ; available again
	mov ax, TSS_SEL
	ltr ax
	mov edi, TSS_BASE + 0x68
	mov ecx, 0x2000 / 4
	mov eax, 0xFFFFFFFF
	rep stosd
	mov byte [TSS_BASE + 0x68 + 0x10], 0xFE   ; port 0x80 allowed
	RECOVER .f
	ENTER_V86 .v6, 0x20002
BITS 16
.v6:	in al, 0x80
	in al, 0x81
	int 0x21
BITS 32
.f:	TAG "segments"          ; V86 segment loads: base = selector * 16
	RECOVER .g
	ENTER_V86 .v7, 0x23002
BITS 16
.v7:	mov ax, 0x0500
	mov ds, ax
	mov word [0x0010], 0xBEEF    ; linear 0x5010
	int 0x21
BITS 32
.g:	mov eax, [0x5010]
	and eax, 0xFFFF
	SHOW eax
	call newline
	ret

v86_frame:
	; [esp] IP, CS, EFLAGS, SP, SS, ES, DS, FS, GS (each a dword)
	mov eax, [esp + 4]
	call hex32
	mov eax, [esp + 8]
	and eax, 0x3FFFF
	call hex32
	mov eax, [esp + 12]
	call hex32
	mov eax, [esp + 20]
	call hex32
	mov eax, [esp + 24]
	call hex32
	mov ax, ds
	movzx eax, ax
	call hex32              ; DS was nulled on the way in
	jmp int80

%include "end.inc"
