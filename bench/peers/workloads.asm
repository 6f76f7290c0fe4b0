; The workloads of issue #20, each a SysV-callable 64-bit function: RDI = a 1 MiB
; scratch buffer (two halves), ESI = repetitions. Position-independent and using only
; caller-saved registers (RBX saved), so the same bytes run natively, under Unicorn,
; and inside the ROM (rom.asm) on the sim, QEMU's TCG and Bochs.
;
; The table at offset 0 gives each function's offset: alu, checksum, copy, fib, movsb,
; alias_copy. alias_copy needs a buffer of 4 MiB + 64 KiB.
BITS 64
	dq alu, checksum, copy, fib_loop, movsb, alias_copy

; ALU loop: add/xor/sub/dec/jnz, a million a repetition.
alu:
	push rbx
.rep:	mov ecx, 1000000
.l:	add eax, 1
	xor ebx, eax
	sub edx, 3
	dec ecx
	jnz .l
	dec esi
	jnz .rep
	pop rbx
	ret

; Byte checksum: load, add, store back, over 64 KiB.
checksum:
.rep:	mov r9, rdi
	mov ecx, 65536
.l:	movzx eax, byte [r9]
	add edx, eax
	mov [r9], dl
	inc r9
	dec ecx
	jnz .l
	dec esi
	jnz .rep
	ret

; Qword copy: 64 KiB from the buffer's first half to its second.
copy:
	mov edx, 0x80000
	; RDX: how far the copy's destination lies from its source.
copy_apart:
.rep:	mov r9, rdi
	lea r10, [rdi + rdx]
	mov ecx, 8192
.l:	mov rax, [r9]
	mov [r10], rax
	add r9, 8
	add r10, 8
	dec ecx
	jnz .l
	dec esi
	jnz .rep
	ret

; TLB-alias copy: the qword copy with its destination 4 MiB past its source (issue
; #20's "a TLB fast path that does not alias on 4 MiB strides"): each page read and the
; page written after it are 1024 pages apart, so they share the low ten bits of their
; page numbers and a TLB indexed by those bits (1024 sets or fewer) misses on each access.
alias_copy:
	mov edx, 0x400000
	jmp copy_apart

; Recursive fib(20): call/ret/push/pop.
fib_loop:
	mov r8d, esi
.rep:	mov edi, 20
	call fib
	dec r8d
	jnz .rep
	ret
fib:
	cmp edi, 2
	jb .small
	push rdi
	dec edi
	call fib
	pop rdi
	push rax
	sub edi, 2
	call fib
	pop rdx
	add eax, edx
	ret
.small:	mov eax, edi
	ret

; rep movsb: 64 KiB RAM to RAM.
movsb:
	mov r8d, esi
	mov r9, rdi
.rep:	mov rsi, r9
	lea rdi, [r9 + 0x80000]
	mov ecx, 65536
	cld
	rep movsb
	dec r8d
	jnz .rep
	ret
