; SYSENTER and SYSEXIT: the flat segments they load from IA32_SYSENTER_CS, the stack
; and entry point, the flags they clear, and #GP(0) with a null SYSENTER_CS (SDM vol 2).
%include "common.inc"

tests:
	TAG "null-cs"
	RECOVER .a
	xor eax, eax
	xor edx, edx
	mov ecx, 0x174
	wrmsr
	sysenter
	NOFAULT
.a:	; SYSENTER_CS = CODE32-like flat selectors: use 0x08 .. 0x20 from a scratch GDT area
	; The flat ring-0 pair sits at GATE_SLOT + 8 (code) and + 16 (data); ring 3 at +24, +32.
	mov dword [GDT_BASE + 0xA0], 0x0000FFFF
	mov dword [GDT_BASE + 0xA4], 0x00CF9B00
	mov dword [GDT_BASE + 0xA8], 0x0000FFFF
	mov dword [GDT_BASE + 0xAC], 0x00CF9300
	mov dword [GDT_BASE + 0xB0], 0x0000FFFF
	mov dword [GDT_BASE + 0xB4], 0x00CFFB00
	mov dword [GDT_BASE + 0xB8], 0x0000FFFF
	mov dword [GDT_BASE + 0xBC], 0x00CFF300
	mov ecx, 0x174
	mov eax, 0xA0
	xor edx, edx
	wrmsr
	mov ecx, 0x175
	mov eax, 0x6F000
	wrmsr
	mov ecx, 0x176
	mov eax, FLAT(entry)
	wrmsr
	TAG "round-trip"
	RECOVER .b
	; To ring 3 through SYSEXIT: ECX = ESP, EDX = EIP (flat).
	mov ecx, STACK_R3
	mov edx, FLAT(.r3)
	sysexit
.r3:	mov ax, cs
	mov [0x5000], ax
	mov ax, ss
	mov [0x5002], ax
	push dword 0x202        ; IF set in ring 3 (IOPL 0: POPF leaves it); check SYSENTER clears
	popfd
	sysenter
	NOFAULT
.b:	ret

entry:
	mov eax, [0x5000]
	call hex32
	mov ax, cs
	movzx eax, ax
	call hex32
	mov ax, ss
	movzx eax, ax
	call hex32
	mov eax, esp
	call hex32
	pushfd
	pop eax
	and eax, 0x20200
	call hex32
	call newline
	; Back to the ROM-based segments the framework uses.
	mov ax, DATA32
	mov ds, ax
	mov ss, ax
	mov esp, [recover_esp]
	jmp CODE32:tests.b

%include "end.inc"
