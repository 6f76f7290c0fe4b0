; Entering long mode and 64-bit code: canonical addresses (#GP, and #SS for the
; stack), 64-bit arithmetic and addressing, RIP-relative data, the 2 MiB pages' A/D
; bits, NX (SDM vol 3 10.8.5, vol 1 3.3.7.1, vol 3 4.5, 4.6).
%include "common.inc"
%include "long.inc"

tests:
	call enter_long
	ret

BITS 64
tests64:
	TAG64 "lma"
	mov ecx, 0xC0000080
	rdmsr
	and eax, 0xD01
	SHOW64 rax
	call newline64
	TAG64 "arith64"
	mov rax, 0x123456789ABCDEF0
	mov rbx, 0x0FEDCBA987654321
	add rax, rbx
	SHOW64 rax
	imul rax, rbx
	SHOW64 rax
	shr rax, 33
	SHOW64 rax
	call newline64
	TAG64 "riprel"
	lea rax, [rel riprel_data]
	mov rax, [rel riprel_data]
	SHOW64 rax
	call newline64
	TAG64 "noncanon-read"
	RECOVER64 .a
	mov rax, 0x0000800000000000
	mov rax, [rax]
	NOFAULT64
.a:	TAG64 "noncanon-stack"  ; through RSP/RBP: #SS(0)
	RECOVER64 .b
	mov rbp, 0xFFFF700000000000
	mov rax, [rbp]
	NOFAULT64
.b:	TAG64 "ad-2m"
	mov rax, [PDIR]
	and rax, 0x60
	SHOW64 rax
	call newline64
	TAG64 "nx"              ; fetch from a page with XD set: #PF 0x11
	mov rax, 0x8000000000600087
	mov [PDIR + 3 * 8], rax
	mov rax, cr3
	mov cr3, rax
	mov byte [0x600000], 0xC3
	RECOVER64 .c
	mov rax, 0x600000
	call rax
	NOFAULT64
.c:	TAG64 "rsvd"            ; a reserved bit in a PDE: #PF with RSVD
	mov rax, 0x0000010000600087     ; bit 40, above MAXPHYADDR 40
	mov [PDIR + 3 * 8], rax
	mov rax, cr3
	mov cr3, rax
	RECOVER64 .d
	mov rax, [0x600000]
	NOFAULT64
.d:	TAG64 "push-pop"
	push qword 0x1234
	push word 0x55
	pop ax
	pop rbx
	movzx eax, ax
	SHOW64 rax
	SHOW64 rbx
	call newline64
	ret

riprel_data: dq 0x1122334455667788
BITS 32

%include "end.inc"
