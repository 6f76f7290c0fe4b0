; Hardware task switches with 32-bit TSSs: CALL to a TSS (NT, back link, busy bits),
; IRET back, JMP, the state saved and loaded, CR0.TS (SDM vol 3 7.3, 7.4).
%include "common.inc"

tests:
	; The second task starts at task2 with its own stack and registers.
	mov edi, TSS2_BASE
	mov ecx, 0x68 / 4
	xor eax, eax
	rep stosd
	mov dword [TSS2_BASE + 0x20], task2          ; EIP
	mov dword [TSS2_BASE + 0x24], 0x2            ; EFLAGS
	mov dword [TSS2_BASE + 0x28], 0x11111111     ; EAX
	mov dword [TSS2_BASE + 0x38], 0x6E000        ; ESP
	mov dword [TSS2_BASE + 0x40], 0x55555555     ; ESI
	mov dword [TSS2_BASE + 0x48], DATA32         ; ES
	mov dword [TSS2_BASE + 0x4C], CODE32         ; CS
	mov dword [TSS2_BASE + 0x50], DATA32         ; SS
	mov dword [TSS2_BASE + 0x54], DATA32         ; DS
	mov dword [TSS2_BASE + 0x58], DATA32         ; FS
	mov dword [TSS2_BASE + 0x5C], DATA32         ; GS
	mov word [TSS2_BASE + 0x66], 0x68
	mov eax, cr3
	mov [TSS2_BASE + 0x1C], eax
	TAG "call-task"
	RECOVER .a
	mov ebx, 0x77777777
	clts
	call TSS2_SEL:0
	; back from the task's IRET
	SHOW ebx                ; the task's change, saved in our TSS? no: ours is reloaded
	mov eax, cr0
	and eax, 8
	SHOW eax                ; CR0.TS set by the switch back
	movzx eax, byte [GDT_BASE + TSS2_SEL + 5]
	SHOW eax                ; task 2 no longer busy
	movzx eax, byte [GDT_BASE + TSS_SEL + 5]
	SHOW eax                ; this task busy again
	pushfd
	pop eax
	and eax, 0x4000
	SHOW eax                ; NT clear here
	call newline
.a:	TAG "saved-eip"         ; task 2's TSS holds where it stopped (after its IRET)
	mov eax, [TSS2_BASE + 0x20]
	sub eax, task2.after
	SHOW eax
	mov eax, [TSS2_BASE + 0x28]
	SHOW eax
	call newline
	TAG "busy-call"         ; CALL to a busy TSS (ourselves): #GP(selector)
	RECOVER .b
	call TSS_SEL:0
	NOFAULT
.b:	TAG "jmp-task"          ; JMP: no back link, no NT, the old task not busy
	mov dword [TSS2_BASE + 0x20], task2jmp
	mov dword [TSS2_BASE + 0x38], 0x6E000
	RECOVER .c
	jmp TSS2_SEL:0
.c:	ret

task2:
	; In task 2: report NT, the back link and registers loaded from the TSS.
	pushfd
	pop eax
	and eax, 0x4000
	call hex32
	movzx eax, word [TSS2_BASE]
	call hex32
	mov eax, esi
	call hex32
	str ax
	movzx eax, ax
	call hex32
	mov eax, 0x22222222
	mov ebx, 0x33333333
	iretd
.after:
	jmp task2

task2jmp:
	pushfd
	pop eax
	and eax, 0x4000
	call hex32
	movzx eax, byte [GDT_BASE + TSS_SEL + 5]
	call hex32              ; the task we left is available again (type 9)
	movzx eax, byte [GDT_BASE + TSS2_SEL + 5]
	call hex32
	call newline
	; Return to the first task by JMP; it resumes after its JMP.
	jmp TSS_SEL:0

%include "end.inc"
