; EFLAGS.TF: a #DB trap after each instruction, DR6.BS set, the pushed EIP the next
; instruction's; INT n clears TF for its handler (SDM vol 3 17.3.1.4).
%include "common.inc"

tests:
	mov eax, db_handler
	mov [IDT_BASE + 1 * 8], ax
	mov word [IDT_BASE + 1 * 8 + 2], CODE32
	mov word [IDT_BASE + 1 * 8 + 4], 0x8E00
	shr eax, 16
	mov [IDT_BASE + 1 * 8 + 6], ax
	TAG "steps"
	mov dword [0x5000], 0
	pushfd
	or dword [esp], 0x100
	popfd                   ; TF takes effect after POPF
	mov eax, 1
	add eax, 2
	nop
	pushfd
	and dword [esp], ~0x100
	popfd
	mov eax, [0x5000]
	SHOW eax
	mov eax, dr6
	and eax, 0x4000
	SHOW eax
	call newline
	TAG "eips"
	mov ecx, 0
.print:	cmp ecx, [0x5000]
	jae .done
	mov eax, [0x5100 + ecx * 4]
	SHOW eax
	inc ecx
	jmp .print
.done:	call newline
	ret

db_handler:
	push eax
	push ebx
	mov ebx, [0x5000]
	mov eax, [esp + 8]
	mov [0x5100 + ebx * 4], eax
	inc dword [0x5000]
	pop ebx
	pop eax
	iretd

%include "end.inc"
