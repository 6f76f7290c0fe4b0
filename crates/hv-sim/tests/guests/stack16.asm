; A 16-bit stack segment (B = 0) under 32-bit code: PUSH/POP move SP only, the upper
; half of ESP stays; POP SS takes the width it began with; ENTER and LEAVE at both
; operand sizes (SDM vol 2 PUSH, POP, ENTER, LEAVE).
%include "common.inc"

tests:
	mov [0x4100], esp
	mov ax, DATA16
	mov ss, ax
	mov esp, 0x12340100
	TAG "push16stack"
	push dword 0xAABBCCDD
	push word 0x1122
	mov eax, esp
	SHOW eax
	mov eax, [0xFA]
	SHOW eax
	pop ax
	pop ebx
	SHOW esp
	SHOW ebx
	call newline
	TAG "wrap"              ; SP = 4: a dword push lands at 0; the next word wraps SP to 0xFFFE
	mov esp, 0x56780004
	push dword 0x99887766
	mov ebx, esp
	push word 0x5566
	mov ecx, esp
	pop dx
	add esp, 4
	mov edx, esp
	mov esp, 0x56780100
	SHOW ebx
	SHOW ecx
	SHOW edx
	mov eax, [0]
	SHOW eax
	call newline
	TAG "enter32"
	mov esp, 0x00010100
	mov ebp, 0x77770200
	o32 enter 8, 2
	SHOW esp
	SHOW ebp
	o32 leave
	SHOW esp
	SHOW ebp
	call newline
	TAG "enter16"
	mov esp, 0x00010100
	mov ebp, 0x77770200
	o16 enter 4, 0
	SHOW esp
	SHOW ebp
	o16 leave
	SHOW esp
	SHOW ebp
	call newline
	TAG "pop-ss"            ; POP SS of a 32-bit stack from a 16-bit one
	mov esp, 0x0002FFFC
	mov word [0xFFFC], DATA32
	pop ss
	SHOW esp
	call newline
	mov ax, DATA32
	mov ss, ax
	mov esp, [0x4100]
	ret

%include "end.inc"
