; SYSCALL and SYSRET in long mode: the selectors they derive from IA32_STAR, RCX and
; R11, the RFLAGS mask, #UD without EFER.SCE, #GP(0) for a non-canonical SYSRET RIP;
; SWAPGS, the FS/GS base MSRs, RDFSBASE/WRFSBASE under CR4.FSGSBASE, RDTSCP's
; TSC_AUX (SDM vol 2 SYSCALL, SYSRET, SWAPGS, RDFSBASE, RDTSCP; vol 3 5.8.8).
%include "common.inc"
%include "long.inc"

; The STAR layout SYSCALL and SYSRET need (SDM vol 2 SYSRET): kernel CS at K and SS
; at K + 8; user SS at U + 8 and 64-bit user CS at U + 16.
%define K_CS    0xA0
%define U_BASE  0xB0

tests:
	; 0xA0 kernel 64-bit code, 0xA8 kernel data, 0xB0 user 32-bit code,
	; 0xB8 user data, 0xC0 user 64-bit code.
	mov dword [GDT_BASE + 0xA0], 0x0000FFFF
	mov dword [GDT_BASE + 0xA4], 0x00AF9B00
	mov dword [GDT_BASE + 0xA8], 0x0000FFFF
	mov dword [GDT_BASE + 0xAC], 0x00CF9300
	mov dword [GDT_BASE + 0xB0], 0x0000FFFF
	mov dword [GDT_BASE + 0xB4], 0x00CFFB00
	mov dword [GDT_BASE + 0xB8], 0x0000FFFF
	mov dword [GDT_BASE + 0xBC], 0x00CFF300
	mov dword [GDT_BASE + 0xC0], 0x0000FFFF
	mov dword [GDT_BASE + 0xC4], 0x00AFFB00
	; The 64-bit TSS's RSP0 (the 32-bit TSS's layout differs from offset 4 on).
	mov dword [TSS_BASE + 4], 0x7E000
	mov dword [TSS_BASE + 8], 0
	call enter_long
	ret

BITS 64
tests64:
	TAG64 "no-sce"          ; EFER.SCE = 0: #UD
	mov ecx, 0xC0000080
	rdmsr
	and eax, ~1
	wrmsr
	RECOVER64 .a
	syscall
	NOFAULT64
.a:	mov ecx, 0xC0000080
	rdmsr
	or eax, 1
	wrmsr
	mov ecx, 0xC0000081     ; STAR
	xor eax, eax
	mov edx, (U_BASE << 16) | K_CS
	wrmsr
	mov ecx, 0xC0000082     ; LSTAR
	mov rax, FLAT(kernel_entry)
	mov rdx, rax
	shr rdx, 32
	wrmsr
	mov ecx, 0xC0000084     ; FMASK: clear TF, DF, OF and CF on entry
	mov eax, 0x0D01
	xor edx, edx
	wrmsr

	TAG64 "sysret"          ; to 64-bit ring 3; R11's RF and reserved bits 3 and 5 are dropped
	RECOVER64 .b
	mov rcx, FLAT(user64)
	mov r11, 0x108FF
	o64 sysret
	NOFAULT64
.b:	TAG64 "sysret32"        ; a 32-bit SYSRET: CS = U_BASE | 3, RIP = ECX
	RECOVER64 .c
	mov rcx, 0xFFFFFFFF00000000 ; the upper half is ignored
	or rcx, FLAT(user32)
	mov r11, 0x002
	sysret
	NOFAULT64
.c:	TAG64 "noncanon-rcx"    ; Intel: #GP(0), still in ring 0
	RECOVER64 .d
	mov rcx, 0x0000800000000000
	mov r11, 0x002
	o64 sysret
	NOFAULT64
.d:	TAG64 "noncanon-rcx-cpl"
	mov rax, [fault_cs64]
	and eax, 3
	SHOW64 rax
	call newline64
	TAG64 "swapgs"
	mov ecx, 0xC0000101     ; GS base
	mov eax, 0x11110000
	mov edx, 0x1
	wrmsr
	mov ecx, 0xC0000102     ; kernel GS base
	mov eax, 0x22220000
	mov edx, 0x2
	wrmsr
	swapgs
	mov ecx, 0xC0000101
	rdmsr
	SHOW64 rdx
	SHOW64 rax
	mov ecx, 0xC0000102
	rdmsr
	SHOW64 rdx
	SHOW64 rax
	call newline64
	TAG64 "gs-base"         ; a GS-relative access uses the base from the MSR
	mov ecx, 0xC0000101
	mov eax, 0x5000
	xor edx, edx
	wrmsr
	mov qword [0x5010], 0x77
	mov rax, [gs:0x10]
	SHOW64 rax
	call newline64
	TAG64 "fsgsbase-off"    ; CR4.FSGSBASE = 0: #UD
	RECOVER64 .e
	rdfsbase rax
	NOFAULT64
.e:	TAG64 "fsgsbase-on"
	mov rax, cr4
	bts rax, 16
	mov cr4, rax
	mov rax, 0xFFFF800012345000
	wrfsbase rax
	mov ecx, 0xC0000100
	rdmsr
	SHOW64 rdx
	SHOW64 rax
	rdgsbase rax
	SHOW64 rax
	call newline64
	TAG64 "wrfsbase-noncanon"   ; #GP(0)
	RECOVER64 .f
	mov rax, 0x0000800000000000
	wrfsbase rax
	NOFAULT64
.f:	TAG64 "mov-fs"          ; a selector load sets the base from the descriptor, zero-extended
	mov ax, DATA_LIM
	mov fs, ax
	mov ecx, 0xC0000100
	rdmsr
	SHOW64 rdx
	SHOW64 rax
	call newline64
	TAG64 "rdtscp"          ; ECX = IA32_TSC_AUX
	mov ecx, 0xC0000103
	mov eax, 0xABCD
	xor edx, edx
	wrmsr
	xor ecx, ecx
	rdtscp
	SHOW64 rcx
	call newline64
	ret

; Ring 3, 64-bit: report the selectors and flags SYSRET gave, then SYSCALL back.
user64:
	mov [0x5100], cs
	mov [0x5108], ss
	pushfq
	pop qword [0x5110]
	lea rax, [rel user64]
	std
	syscall
user64_after:

; Ring 3, 32-bit: report CS and SS, then back through a fault (SYSCALL from
; compatibility mode is #UD on Intel).
BITS 32
user32:
	mov [0x5100], cs
	mov [0x5108], ss
	pushfd
	pop dword [0x5110]
	mov dword [0x5114], 0
	syscall
BITS 64

kernel_entry:
	mov [0x5200], rcx
	mov [0x5208], r11
	pushfq
	pop qword [0x5210]
	mov [0x5218], cs
	mov [0x5220], ss
	mov ax, [0x5100]
	movzx eax, ax
	SHOW64 rax
	mov ax, [0x5108]
	movzx eax, ax
	SHOW64 rax
	mov rax, [0x5110]
	SHOW64 rax
	call newline64
	TAG64 "syscall"
	mov rax, [0x5200]
	mov rbx, FLAT(user64_after)
	sub rax, rbx
	SHOW64 rax
	mov rax, [0x5208]
	SHOW64 rax
	mov rax, [0x5210]
	SHOW64 rax
	mov ax, [0x5218]
	movzx eax, ax
	SHOW64 rax
	mov ax, [0x5220]
	movzx eax, ax
	SHOW64 rax
	call newline64
	mov ax, DATA32
	mov ss, ax
	mov rsp, [recover_rsp64]
	jmp [recover64]
BITS 32

%include "end.inc"
