; Call gates: a CALL from ring 3 through a DPL 3 gate into ring-0 code copies the
; parameters to the new stack; RETF with an immediate goes back (SDM vol 3 5.8.3-5.8.6).
%include "common.inc"

tests:
	; Gate at GATE_SLOT: 32-bit call gate, DPL 3, to CODE32:gate_target, 2 parameters.
	mov eax, gate_target
	mov [GDT_BASE + GATE_SLOT], ax
	mov word [GDT_BASE + GATE_SLOT + 2], CODE32
	mov byte [GDT_BASE + GATE_SLOT + 4], 2
	mov byte [GDT_BASE + GATE_SLOT + 5], 0xEC
	shr eax, 16
	mov [GDT_BASE + GATE_SLOT + 6], ax
	TAG "call-gate"
	RECOVER .a
	TO_RING3 .r3a
.r3a:	push dword 0xAAAA
	push dword 0xBBBB
	call GATE_SLOT | 3:0
	; back in ring 3: the parameters were released by RETF 8
	mov [0x5000], esp
	mov ax, cs
	mov [0x5004], ax
	int 0x80
.a:	mov eax, [0x5000]
	SHOW eax
	mov eax, [0x5004]
	and eax, 0xFFFF
	SHOW eax
	call newline
	TAG "gate-dpl"          ; a DPL 0 gate from ring 3: #GP(gate selector)
	mov byte [GDT_BASE + GATE_SLOT + 5], 0x8C
	RECOVER .b
	TO_RING3 .r3b
.r3b:	call GATE_SLOT | 3:0
	int 0x80
.b:	TAG "gate-np"           ; a gate not present: #NP(gate selector)
	mov byte [GDT_BASE + GATE_SLOT + 5], 0x6C
	RECOVER .c
	TO_RING3 .r3c
.r3c:	call GATE_SLOT | 3:0
	int 0x80
.c:	TAG "jmp-gate-r0"       ; JMP through a gate at the same privilege
	mov byte [GDT_BASE + GATE_SLOT + 5], 0x8C
	RECOVER .d
	jmp GATE_SLOT:0
.d:	call newline
	ret

gate_target:
	; ring 0, new stack: [esp] EIP, +4 CS, +8 param 2 (0xBBBB), +12 param 1, +16 ESP, +20 SS
	mov ax, cs
	and eax, 3
	call hex32
	mov eax, [esp + 8]
	call hex32
	mov eax, [esp + 12]
	call hex32
	mov eax, [esp + 20]
	call hex32
	mov ax, cs
	cmp word [esp + 4], CODE32R3
	jne .jumped
	retf 8
.jumped:
	jmp [recover]

%include "end.inc"
