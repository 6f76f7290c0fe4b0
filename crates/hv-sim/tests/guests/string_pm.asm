; String instructions in protected mode: REP MOVS/STOS/CMPS/SCAS with both
; directions and address sizes, and a REP MOVS that faults part way through (the
; registers show the elements done, SDM vol 2 REP "Operation", vol 1 7.3.9).
%include "common.inc"

tests:
	mov edi, 0x5000
	mov ecx, 64
	mov eax, 0x03020100
.fill:	mov [edi], eax
	add eax, 0x04040404
	add edi, 4
	loop .fill
	TAG "movsd"
	cld
	mov esi, 0x5000
	mov edi, 0x6000
	mov ecx, 16
	rep movsd
	SHOW esi
	SHOW edi
	SHOW ecx
	mov eax, [0x603C]
	SHOW eax
	call newline
	TAG "std-stosw"
	std
	mov edi, 0x6100
	mov ecx, 5
	mov ax, 0xABCD
	rep stosw
	cld
	SHOW edi
	mov eax, [0x60F8]
	SHOW eax
	call newline
	TAG "repe-cmpsb"
	mov esi, 0x5000
	mov edi, 0x6000
	mov byte [0x6020], 0xEE
	mov ecx, 100
	repe cmpsb
	SHOW ecx
	SHOW esi
	pushfd
	pop eax
	and eax, 0x8D5
	SHOW eax
	call newline
	TAG "repne-scasb"
	mov edi, 0x5000
	mov al, 0x2A
	mov ecx, 256
	repne scasb
	SHOW ecx
	SHOW edi
	call newline
	TAG "a16-movsb"         ; 16-bit addresses: SI and DI wrap at 64 KiB
	mov esi, 0x1234FFFE
	mov edi, 0x5678FFFE
	mov ecx, 4
	a16 rep movsb
	SHOW esi
	SHOW edi
	SHOW ecx
	call newline
	TAG "fault-mid"         ; REP MOVSB into a read-only segment after a few bytes
	mov ax, DATA_LIM        ; writable, limit 0xFFF
	mov es, ax
	RECOVER .a
	mov esi, 0x5000
	mov edi, 0xFFC
	mov ecx, 10
	rep movsb
	NOFAULT
.a:	SHOW ecx                ; (ESI is the exception handler's by now)
	SHOW edi
	call newline
	mov ax, DATA32
	mov es, ax
	ret

%include "end.inc"
