; SSE2 string functions as glibc writes them (aligned 16-byte loads, PCMPEQB,
; PMOVMSKB, BSF; MOVDQU/MOVDQA/MOVNTDQ copies), run over a pseudo-random buffer from
; many starting offsets, with checksums printed; and a little scalar SSE2 and x87
; arithmetic. Enables SSE as an OS does (CR4.OSFXSR, OSXMMEXCPT; SDM vol 3 13.1).
%include "common.inc"
%include "long.inc"

%define BUF     0x100000        ; 64 KiB of pseudo-random bytes
%define DST     0x120000        ; memcpy's destination
%define BUFLEN  0x10000

tests:
	mov eax, cr0
	and eax, ~(1 << 2)      ; EM off
	or eax, (1 << 1) | (1 << 5) ; MP, NE
	mov cr0, eax
	mov eax, cr4
	or eax, (1 << 9) | (1 << 10)
	mov cr4, eax
	call enter_long
	ret

BITS 64
; xorshift64 in RAX
%macro NEXT 0
	mov rdx, rax
	shl rdx, 13
	xor rax, rdx
	mov rdx, rax
	shr rdx, 7
	xor rax, rdx
	mov rdx, rax
	shl rdx, 17
	xor rax, rdx
%endmacro

tests64:
	; Fill the buffer: random bytes, about one in 24 made zero, then a zero at the end.
	mov rax, 0x9e3779b97f4a7c15
	mov rdi, BUF
	mov rcx, BUFLEN
.fill:	NEXT
	mov [rdi], al
	mov rdx, rax
	shr rdx, 40
	and edx, 0xff
	cmp edx, 11
	jae .keep
	mov byte [rdi], 0
.keep:	inc rdi
	loop .fill
	mov byte [BUF + BUFLEN - 1], 0

	TAG64 "strlen"          ; the sum of strlen from 4096 starting offsets
	xor r12, r12
	xor r13, r13
.sl:	lea rdi, [BUF + r13 * 8 + 3]
	call strlen_sse2
	add r12, rax
	inc r13
	cmp r13, 4096
	jb .sl
	SHOW64 r12
	call newline64

	TAG64 "memchr"          ; memchr for 1024 bytes from 1024 offsets, 0x5a
	xor r12, r12
	xor r13, r13
.mc:	lea rdi, [BUF + r13 * 8 + 1]
	mov esi, 0x5a
	mov rdx, 1024
	call memchr_sse2
	test rax, rax
	jz .none
	sub rax, BUF
	add r12, rax
.none:	inc r13
	cmp r13, 1024
	jb .mc
	SHOW64 r12
	call newline64

	TAG64 "memcpy"          ; 200 copies of odd lengths and alignments, then FNV-1a
	xor r13, r13
.cp:	mov rax, r13
	imul rax, 977
	and eax, 0x3fff
	lea rsi, [BUF + rax]
	lea rdi, [DST + r13 * 4 + 1]
	mov rdx, r13
	imul rdx, 131
	and edx, 0x7ff
	add edx, 17
	call memcpy_sse2
	inc r13
	cmp r13, 200
	jb .cp
	mov rsi, DST
	mov rcx, 0x2000
	call fnv
	SHOW64 rax
	call newline64

	TAG64 "scalar-fp"       ; sum of sqrt(i) * 1.5 for i = 1..999, SSE2 and x87
	pxor xmm2, xmm2
	mov ecx, 1
	mov eax, 0x3ff80000
	shl rax, 32
	movq xmm3, rax          ; 1.5
.fp:	cvtsi2sd xmm0, ecx
	sqrtsd xmm0, xmm0
	mulsd xmm0, xmm3
	addsd xmm2, xmm0
	inc ecx
	cmp ecx, 1000
	jb .fp
	movq rax, xmm2
	SHOW64 rax
	cvttsd2si rax, xmm2
	SHOW64 rax
	finit
	fldz
	mov ecx, 1
.x87:	mov [0x5000], ecx
	fild dword [0x5000]
	fsqrt
	faddp st1, st0
	inc ecx
	cmp ecx, 1000
	jb .x87
	fstp qword [0x5008]
	mov rax, [0x5008]
	SHOW64 rax
	call newline64
	ret

; strlen(rdi): aligned loads from rdi & ~15, the bytes before rdi masked off.
strlen_sse2:
	mov rcx, rdi
	and rcx, 15
	mov rax, rdi
	and rax, ~15
	pxor xmm0, xmm0
	movdqa xmm1, [rax]
	pcmpeqb xmm1, xmm0
	pmovmskb edx, xmm1
	shr edx, cl
	shl edx, cl
	test edx, edx
	jnz .found
.loop:	add rax, 16
	movdqa xmm1, [rax]
	pcmpeqb xmm1, xmm0
	pmovmskb edx, xmm1
	test edx, edx
	jz .loop
.found:	bsf edx, edx
	add rax, rdx
	sub rax, rdi
	ret

; memchr(rdi, sil, rdx): unaligned 16-byte loads, a byte-wise tail.
memchr_sse2:
	movd xmm1, esi
	punpcklbw xmm1, xmm1
	punpcklwd xmm1, xmm1
	pshufd xmm1, xmm1, 0
.blk:	cmp rdx, 16
	jb .tail
	movdqu xmm0, [rdi]
	pcmpeqb xmm0, xmm1
	pmovmskb eax, xmm0
	test eax, eax
	jnz .hit
	add rdi, 16
	sub rdx, 16
	jmp .blk
.hit:	bsf eax, eax
	add rax, rdi
	ret
.tail:	test rdx, rdx
	jz .miss
	cmp [rdi], sil
	je .one
	inc rdi
	dec rdx
	jmp .tail
.one:	mov rax, rdi
	ret
.miss:	xor eax, eax
	ret

; memcpy(rdi, rsi, rdx): 16-byte unaligned chunks (non-temporal when the destination
; is aligned), then bytes.
memcpy_sse2:
.blk:	cmp rdx, 16
	jb .tail
	movdqu xmm0, [rsi]
	test dil, 15
	jnz .un
	movntdq [rdi], xmm0
	jmp .nx
.un:	movdqu [rdi], xmm0
.nx:	add rsi, 16
	add rdi, 16
	sub rdx, 16
	jmp .blk
.tail:	test rdx, rdx
	jz .done
	mov al, [rsi]
	mov [rdi], al
	inc rsi
	inc rdi
	dec rdx
	jmp .tail
.done:	sfence
	ret

; FNV-1a 64 over rcx bytes at rsi.
fnv:
	mov rax, 0xcbf29ce484222325
	mov r8, 0x100000001b3
.b:	movzx edx, byte [rsi]
	xor rax, rdx
	imul rax, r8
	inc rsi
	loop .b
	ret
BITS 32

%include "end.inc"
