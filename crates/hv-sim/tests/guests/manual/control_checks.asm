; Checks QEMU's TCG cannot judge, since it accepts the write and the guest is lost:
; held to the SDM directly. The comment after each TAG, from its equals sign on, is
; the line the guest must print; the sections that say so are below.
;
; SDM vol 2 MOV (Control Registers), "Protected Mode Exceptions" and "64-Bit Mode
; Exceptions"; vol 3 2.5 (CR4's reserved bits), 4.1.1 (CR0.PG needs PE), 10.8.5
; (long mode needs PAE first); vol 2 CMPXCHG8B/CMPXCHG16B; vol 2 JMP.
%include "common.inc"
%include "long.inc"

tests:
	TAG "pg-no-pe"          ;= pg-no-pe exc 0000000d 00000000
	RECOVER .a
	mov eax, cr0
	and eax, ~1
	or eax, 0x80000000
	mov cr0, eax
	NOFAULT
.a:	TAG "nw-no-cd"          ;= nw-no-cd exc 0000000d 00000000
	RECOVER .b
	mov eax, cr0
	and eax, ~(1 << 30)
	or eax, 1 << 29
	mov cr0, eax
	NOFAULT
.b:	TAG "cr4-bit30"         ;= cr4-bit30 exc 0000000d 00000000
	RECOVER .c
	mov eax, cr4
	or eax, 1 << 30
	mov cr4, eax
	NOFAULT
.c:	TAG "cr4-vmxe"          ;= cr4-vmxe exc 0000000d 00000000
	RECOVER .d              ; (CPUID.1:ECX.VMX is clear)
	mov eax, cr4
	or eax, 1 << 13
	mov cr4, eax
	NOFAULT
.d:	TAG "cr4-la57"          ;= cr4-la57 exc 0000000d 00000000
	RECOVER .e              ; (CPUID.7:ECX.LA57 is clear)
	mov eax, cr4
	or eax, 1 << 12
	mov cr4, eax
	NOFAULT
.e:	TAG "cr4-pcide"         ;= cr4-pcide exc 0000000d 00000000
	RECOVER .f              ; (outside IA-32e mode)
	mov eax, cr4
	or eax, 1 << 17
	mov cr4, eax
	NOFAULT
.f:	TAG "jmp-past-limit"    ;= jmp-past-limit exc 0000000d 00000000
	RECOVER .g              ; CS's limit is 0xFFFF: the JMP faults, EIP unchanged
	mov eax, 0x10010
	jmp eax
	NOFAULT
.g:	TAG "pg-lme-no-pae"     ;= pg-lme-no-pae exc 0000000d 00000000
	RECOVER .h
	mov ecx, 0xC0000080
	rdmsr
	or eax, 0x100
	wrmsr
	mov dword [0x10000], 0
	mov eax, 0x10000
	mov cr3, eax
	mov eax, cr0
	or eax, 0x80000000
	mov cr0, eax
	NOFAULT
.h:	mov ecx, 0xC0000080
	rdmsr
	and eax, ~0x100
	wrmsr
	TAG "cr0-unchanged"     ;= cr0-unchanged 60000011
	mov eax, cr0
	and eax, 0xE0000011
	SHOW eax
	call newline
	call enter_long
	ret

BITS 64
tests64:
	TAG64 "cr0-high"        ;= cr0-high exc 000000000000000d 0000000000000000
	RECOVER64 .a
	mov rax, cr0
	bts rax, 40
	mov cr0, rax
	NOFAULT64
.a:	TAG64 "clear-pae"       ;= clear-pae exc 000000000000000d 0000000000000000
	RECOVER64 .b
	mov rax, cr4
	and rax, ~0x20
	mov cr4, rax
	NOFAULT64
.b:	TAG64 "cr3-high"        ;= cr3-high exc 000000000000000d 0000000000000000
	RECOVER64 .c            ; (bits above MAXPHYADDR, 40)
	mov rax, cr3
	bts rax, 45
	mov cr3, rax
	NOFAULT64
.c:	TAG64 "cr8-high"        ;= cr8-high exc 000000000000000d 0000000000000000
	RECOVER64 .d
	mov eax, 0x10
	mov cr8, rax
	NOFAULT64
.d:	TAG64 "cmpxchg16b-misaligned"  ;= cmpxchg16b-misaligned exc 000000000000000d 0000000000000000
	RECOVER64 .e
	mov rdi, 0x5008
	cmpxchg16b [rdi]
	NOFAULT64
.e:	TAG64 "cmpxchg16b-aligned"     ;= cmpxchg16b-aligned 0000000000000001
	mov qword [0x5010], 7
	mov qword [0x5018], 8
	mov eax, 7
	mov edx, 8
	xor ebx, ebx
	xor ecx, ecx
	cmpxchg16b [0x5010]
	setz al
	movzx eax, al
	SHOW64 rax
	call newline64
	ret
BITS 32

%include "end.inc"
