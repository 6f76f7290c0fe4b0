; Control registers: LMSW (which cannot clear PE), SMSW, CLTS, MOV to DR4 with CR4.DE (SDM vol 2
; MOV (Control Registers), LMSW, vol 3 2.5).
%include "common.inc"

tests:
	; (CR0.PG without PE, NW without CD and reserved CR4 bits are #GP(0) as well:
	; manual/control_checks.asm holds the sim to the SDM there, since QEMU's TCG
	; accepts such writes and the guest is lost.)
	TAG "cr0-high"          ; a 32-bit write cannot set bits 63:32; CD/NW/ET read back
	mov eax, cr0
	and eax, 0xE005003F
	SHOW eax
	call newline
	TAG "lmsw"              ; sets MP and TS, cannot clear PE
	mov eax, cr0
	mov ax, 0x000A
	lmsw ax
	mov eax, cr0
	and eax, 0xF
	SHOW eax
	smsw bx
	movzx ebx, bx
	and ebx, 0xF
	SHOW ebx
	clts
	mov eax, cr0
	and eax, 0xF
	SHOW eax
	call newline
	TAG "dr4-aliases-dr6"   ; CR4.DE = 0: DR4 is DR6
	mov eax, dr6
	mov ebx, dr4
	xor eax, ebx
	SHOW eax
	call newline
	TAG "dr4-with-de"       ; CR4.DE = 1: #UD
	mov eax, cr4
	or eax, 8
	mov cr4, eax
	RECOVER .d
	mov eax, dr4
	NOFAULT
.d:	mov eax, cr4
	and eax, ~8
	mov cr4, eax
	TAG "cr-invalid"        ; CR1 does not exist: #UD
	RECOVER .e
	db 0x0F, 0x20, 0xC8     ; mov eax, cr1
	NOFAULT
.e:
	ret

%include "end.inc"
