; LAR, LSL, VERR and VERW over every GDT entry and a few impossible selectors, at
; CPL 0 (SDM vol 2: which descriptor types each accepts, and the DPL/RPL rule).
%include "common.inc"

tests:
	mov ebx, 0
.next:
	mov eax, ebx
	and eax, 0xFF
	SHOW eax
	xor eax, eax
	lar eax, bx
	pushfd
	pop edx
	and edx, 0x40
	SHOW eax
	SHOW edx
	xor eax, eax
	lsl eax, bx
	pushfd
	pop edx
	and edx, 0x40
	SHOW eax
	SHOW edx
	verr bx
	pushfd
	pop edx
	and edx, 0x40
	SHOW edx
	verw bx
	pushfd
	pop edx
	and edx, 0x40
	SHOW edx
	call newline
	add ebx, 8
	cmp ebx, 0xA8
	jb .next
	TAG "rpl3"              ; RPL 3 hides DPL 0 segments
	mov bx, DATA32 | 3
	lar eax, bx
	pushfd
	pop edx
	and edx, 0x40
	SHOW edx
	mov bx, CODE_CONF | 3   ; conforming code is visible anyway
	lar eax, bx
	pushfd
	pop edx
	and edx, 0x40
	SHOW edx
	call newline
	TAG "arpl"
	mov ax, 0x10
	mov cx, 0x23
	arpl ax, cx
	pushfd
	pop edx
	and edx, 0x40
	movzx eax, ax
	SHOW eax
	SHOW edx
	call newline
	ret

%include "end.inc"
