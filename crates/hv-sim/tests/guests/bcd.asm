; The BCD adjustments over a spread of AL/AH values and carry/adjust flags: DAA, DAS,
; AAA, AAS, AAM, AAD (SDM vol 2; flags left undefined there are masked out).
%include "common.inc"

%macro BCD 3            ; name, instruction, defined flags mask
	TAG %1
	xor ebx, ebx
%%loop:
	mov eax, ebx
	imul eax, eax, 0x3B
	and eax, 0xFFFF
	mov edx, ebx
	and edx, 3
	shl edx, 4              ; AF from bit 0, CF from bit 1 of the counter
	mov ecx, edx
	shr ecx, 5
	or edx, ecx
	and edx, 0x11
	push edx
	popfd
	%2
	pushfd
	pop edx
	and edx, %3
	imul esi, esi, 0x01000193   ; FNV-1a over (result, flags)
	xor esi, eax
	imul esi, esi, 0x01000193
	xor esi, edx
	inc ebx
	cmp ebx, 0x400
	jb %%loop
	SHOW esi
	call newline
%endmacro

tests:
	mov esi, 0x811C9DC5
	BCD "daa", daa, 0xD5    ; OF undefined
	mov esi, 0x811C9DC5
	BCD "das", das, 0xD5
	mov esi, 0x811C9DC5
	BCD "aaa", aaa, 0x11    ; only AF and CF defined
	mov esi, 0x811C9DC5
	BCD "aas", aas, 0x11
	mov esi, 0x811C9DC5
	BCD "aam", {aam 10}, 0xC4  ; SF, ZF, PF
	mov esi, 0x811C9DC5
	BCD "aam7", {aam 7}, 0xC4
	mov esi, 0x811C9DC5
	BCD "aad", {aad 10}, 0xC4
	mov esi, 0x811C9DC5
	BCD "aad3", {aad 3}, 0xC4
	TAG "aam0"              ; AAM 0: #DE
	RECOVER .a
	aam 0
	NOFAULT
.a:	ret

%include "end.inc"
