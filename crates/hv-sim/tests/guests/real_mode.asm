; Real-address mode, entered back from protected mode: segment arithmetic, the IVT
; (moved with LIDT), faults through it, 16-bit address wrap, the cached limits that
; survive the switch ("unreal" mode), POPF's full reach at CPL 0 (SDM vol 3 9.9.2,
; 20.1; vol 2 INT n, IRET, POPF, MOV).
%include "common.inc"

%define recover16       0x4100  ; word: where the real-mode handler resumes
%define recover_sp16    0x4102  ; and with which SP
%define saved_esp       0x4104

; TAG16 "name": the test's name, from real-mode code.
%macro TAG16 1
	push si
	mov si, %%s
	call print16
	pop si
	jmp %%e
%%s: db %1, " ", 0
%%e:
%endmacro

tests:
	mov [saved_esp], esp
	mov dword [0x200000], 0xB16B16       ; for the unreal-mode read
	mov ax, DATA32          ; DS keeps a 4 GiB limit into real mode
	mov ds, ax
	mov ax, DATA16
	mov es, ax
	mov ss, ax
	jmp CODE16:.pm16
BITS 16
.pm16:	mov eax, cr0
	and eax, ~1
	mov cr0, eax
	jmp 0xF000:.real
.real:	xor ax, ax
	mov ss, ax
	mov es, ax
	mov sp, 0x7000
	; IVT entries for the faults the tests expect.
	mov word [es:0 * 4], rstub0
	mov word [es:5 * 4], rstub5
	mov word [es:6 * 4], rstub6
	mov word [es:13 * 4], rstub13
	mov word [es:0x50 * 4], int50
	mov word [es:0 * 4 + 2], 0xF000
	mov word [es:5 * 4 + 2], 0xF000
	mov word [es:6 * 4 + 2], 0xF000
	mov word [es:13 * 4 + 2], 0xF000
	mov word [es:0x50 * 4 + 2], 0xF000
	lidt [cs:ivt_at_0]

	TAG16 "unreal"          ; DS kept its 4 GiB limit: a 32-bit offset works
	mov esi, 0x200000
	mov eax, [esi]
	call hex32r
	mov ax, 0               ; a real-mode load changes the base, not the limit
	mov ds, ax
	mov eax, [esi]
	call hex32r
	call newline16
	TAG16 "seg-arith"       ; linear = segment * 16 + offset
	mov edi, 0x179B8        ; (read back through the big DS)
	mov dword [edi], 0
	mov ax, 0x1234
	mov es, ax
	mov word [es:0x5678], 0xBEEF
	mov ax, [edi]
	call hex16
	call newline16
	TAG16 "addr-wrap"       ; [BX+SI] wraps at 64 KiB
	mov ax, 0x2000
	mov es, ax
	mov word [es:0x0001], 0x5A5A
	mov bx, 0xFFFF
	mov si, 2
	mov ax, [es:bx + si]
	call hex16
	call newline16
	TAG16 "int-ivt"         ; INT n: FLAGS, CS and IP pushed, IRET restores FLAGS
	mov ax, 0x1111
	push word 0x08C3        ; (IF stays clear: nothing programs QEMU's PIC here)
	popf
	int 0x50
	pushf
	pop cx
	call hex16
	mov ax, cx
	call hex16
	call newline16
	TAG16 "div0"            ; #DE through the IVT, IP at the DIV
	mov [recover16], word .a
	mov [recover_sp16], sp
	xor cx, cx
	mov ax, 1
	div cl
	call nofault16
.a:	TAG16 "bound"
	mov [recover16], word .b
	mov [recover_sp16], sp
	mov dword [0x5000], 0x00200010
	mov ax, 0x30
	bound ax, [0x5000]
	call nofault16
.b:	TAG16 "ud2"
	mov [recover16], word .c
	mov [recover_sp16], sp
	ud2
	call nofault16
.c:	TAG16 "moved-ivt"       ; LIDT moves the IVT
	mov word [0x8000 + 0x50 * 4], int50b
	mov word [0x8000 + 0x50 * 4 + 2], 0xF000
	lidt [cs:ivt_at_8000]
	int 0x50
	call hex16
	lidt [cs:ivt_at_0]
	call newline16
	TAG16 "popf-iopl-nt"    ; at CPL 0 POPF sets IOPL and NT too
	push word 0x7002
	popf
	pushf
	pop ax
	call hex16
	push word 0x0002
	popf
	call newline16
	TAG16 "push-sp"         ; PUSH SP pushes SP as it was before the push
	mov bx, sp
	push sp
	pop ax
	sub ax, bx
	call hex16
	pusha
	mov bp, sp
	mov ax, [bp + 6]        ; PUSHA's SP slot: SP before PUSHA
	sub ax, bx
	call hex16
	popa
	call newline16
	TAG16 "limit-word"      ; a word at offset 0xFFFF crosses the 64 KiB limit: #GP
	mov [recover16], word .d
	mov [recover_sp16], sp
	mov ax, 0x2000
	mov es, ax
	mov ax, [es:0xFFFF]
	call nofault16
.d:	; Back to protected mode and the framework.
	lgdt [cs:gdtr]
	mov eax, cr0
	or eax, 1
	mov cr0, eax
	jmp dword CODE32:.back
BITS 32
.back:	mov ax, DATA32
	mov ds, ax
	mov es, ax
	mov ss, ax
	mov esp, [saved_esp]
	lidt [FLAT(idtr)]
	ret

BITS 16
ivt_at_0:    dw 0x3FF
	dd 0
ivt_at_8000: dw 0x3FF
	dd 0x8000

int50:	add ax, 0x2222
	pushf
	pop cx                  ; the handler's FLAGS
	push bp
	mov bp, sp
	mov dx, [bp + 6]        ; the pushed FLAGS
	pop bp
	push ax
	mov ax, dx
	call hex16
	mov ax, cx
	call hex16
	pop ax
	iret

int50b:	mov ax, 0x5050
	iret

%macro RSTUB 1
rstub%1:
	mov al, %1
	jmp rexc
%endmacro
RSTUB 0
RSTUB 5
RSTUB 6
RSTUB 13

rexc:	xor bx, bx
	mov ds, bx
	mov si, msg_rexc
	call print16
	movzx ax, al
	call hex16
	mov bp, sp
	mov ax, [bp]            ; the pushed IP, as an offset from the ROM's start
	call hex16
	call newline16
	mov sp, [recover_sp16]
	jmp [recover16]

msg_rexc: db "rexc ", 0
msg_nofault16: db "no fault", 10, 0

print16:
	push ax
	push si
.n:	mov al, [cs:si]
	test al, al
	jz .e
	out 0xE9, al
	inc si
	jmp .n
.e:	pop si
	pop ax
	ret

nofault16:
	push si
	mov si, msg_nofault16
	call print16
	pop si
	ret

newline16:
	push ax
	mov al, 10
	out 0xE9, al
	pop ax
	ret

; hex16: AX as 4 hex digits and a space; hex32r: EAX as 8.
hex16:
	push cx
	push ax
	mov cx, 4
	shl eax, 16
	jmp hexn
hex32r:
	push cx
	push ax
	mov cx, 8
hexn:	push edx
	mov edx, eax
.d:	rol edx, 4
	mov al, dl
	and al, 0x0F
	add al, '0'
	cmp al, '9'
	jbe .o
	add al, 'a' - '9' - 1
.o:	out 0xE9, al
	loop .d
	mov al, ' '
	out 0xE9, al
	pop edx
	pop ax
	pop cx
	ret

BITS 32

%include "end.inc"
