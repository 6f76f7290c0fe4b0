; A ROM (on the frame of crates/hv-sim/tests/guests) that enters long mode, writes
; "{S}" to port 0xE9, calls workload WORKLOAD of workloads.asm (nasm -DWORKLOAD=n -DREPS=n)
; with RDI = 0x200000 and ESI = REPS, writes "{E}", and exits through port 0xF4.
%include "common.inc"

tests:
	call enter_long
	ret

BITS 64
tests64:
	mov al, '{'
	out 0xE9, al
	mov al, 'S'
	out 0xE9, al
	mov al, '}'
	out 0xE9, al
	mov edi, 0x200000
	mov esi, REPS
	; The table holds ROM offsets (ORG 0): the function is at ROM + entry.
	mov rax, [FLAT(functions) + WORKLOAD * 8]
	add rax, ROM
	call rax
	mov al, '{'
	out 0xE9, al
	mov al, 'E'
	out 0xE9, al
	mov al, '}'
	out 0xE9, al
	ret

	align 16
functions:
%include "workloads.asm"

%include "long.inc"
%include "end.inc"
