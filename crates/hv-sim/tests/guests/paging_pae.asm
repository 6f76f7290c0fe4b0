; PAE paging in 32-bit protected mode: 4 KiB and 2 MiB pages, execute-disable with
; EFER.NXE (and bit 63 reserved without it), CR0.WP, SMEP and SMAP, the accessed and
; dirty bits, INVLPG, and the PDPTEs MOV CR3 loads and checks (SDM vol 3 4.4, 4.6,
; 4.7, 4.10.4).
%include "common.inc"

%define PDPT    0x10000
%define PD0     0x11000         ; 0..1 GiB
%define PT0     0x12000         ; 0..2 MiB: supervisor identity map
%define PT2     0x13000         ; 4..6 MiB: the test pages

tests:
	mov edi, PDPT
	mov ecx, 0x4000 / 4
	xor eax, eax
	rep stosd
	mov edi, PT0
	mov eax, 0x3
	mov ecx, 512
.fill:	mov [edi], eax
	add eax, 0x1000
	add edi, 8
	loop .fill
	mov dword [PDPT], PD0 | 1
	mov dword [PD0], PT0 | 3
	mov dword [PD0 + 8], 0x200000 | 0x83        ; 2..4 MiB: a 2 MiB supervisor page
	mov dword [PD0 + 16], PT2 | 7
	mov dword [PT2 + 0 * 8], 0x50000 | 0x7      ; 0x400000: user, writable
	mov dword [PT2 + 1 * 8], 0x51000 | 0x1      ; 0x401000: supervisor, read-only
	mov dword [PT2 + 2 * 8], 0x52000 | 0x3      ; 0x402000: supervisor, XD (below)
	mov dword [PT2 + 2 * 8 + 4], 0x80000000
	mov dword [PT2 + 3 * 8], 0x53000 | 0x7      ; 0x403000: user code
	mov dword [0x50000], 0x11111111
	mov dword [0x51000], 0x22222222
	mov byte [0x52000], 0xCB    ; RETF
	mov byte [0x53000], 0xCB
	mov dword [0x200010], 0x33333333
	; 0xA0: flat 32-bit ring-0 code, to reach the test pages' code.
	mov dword [GDT_BASE + 0xA0], 0x0000FFFF
	mov dword [GDT_BASE + 0xA4], 0x00CF9B00
	mov dword [0x54000], 0x44444444
	mov eax, cr4
	or eax, 0x20            ; PAE
	mov cr4, eax
	mov eax, PDPT
	mov cr3, eax
	mov eax, cr0
	or eax, 0x80000000
	mov cr0, eax

	TAG "read"
	mov eax, [0x400000]
	SHOW eax
	mov eax, [0x200010]     ; through the 2 MiB page
	SHOW eax
	call newline
	TAG "xd-reserved"       ; EFER.NXE = 0: bit 63 is reserved, #PF with RSVD
	RECOVER .a
	call 0xA0:0x402000
	NOFAULT
.a:	mov ecx, 0xC0000080
	rdmsr
	or eax, 0x800
	wrmsr
	TAG "xd-fetch"          ; EFER.NXE = 1: a fetch from an XD page, #PF 0x11
	RECOVER .b
	call 0xA0:0x402000
	NOFAULT
.b:	TAG "xd-read"           ; reading it is fine
	movzx eax, byte [0x402000]
	SHOW eax
	call newline
	TAG "wp"                ; CR0.WP = 1: supervisor write to a read-only page, #PF 0x03
	mov eax, cr0
	or eax, 0x10000
	mov cr0, eax
	RECOVER .c
	mov dword [0x401000], 0
	NOFAULT
.c:	TAG "ad-4k"             ; the accessed and dirty bits, in the PTE and the PDE
	mov dword [0x400004], 5
	mov eax, [PT2]
	and eax, 0x60
	SHOW eax
	mov eax, [PD0 + 16]
	and eax, 0x60
	SHOW eax
	call newline
	TAG "ad-2m"
	mov dword [0x200020], 1
	mov eax, [PD0 + 8]
	and eax, 0x60
	SHOW eax
	call newline
	TAG "smep"              ; CR4.SMEP: a supervisor fetch from a user page, #PF 0x11
	mov eax, cr4
	or eax, 0x100000
	mov cr4, eax
	RECOVER .d
	call 0xA0:0x403000
	NOFAULT
.d:	mov eax, cr4
	and eax, ~0x100000
	mov cr4, eax
	TAG "smap"              ; CR4.SMAP: a supervisor read of a user page with AC = 0
	mov eax, cr4
	or eax, 0x200000
	mov cr4, eax
	RECOVER .e
	mov eax, [0x400000]
	NOFAULT
.e:	TAG "smap-stac"         ; AC = 1 allows it
	stac
	mov eax, [0x400000]
	clac
	SHOW eax
	call newline
	mov eax, cr4
	and eax, ~0x200000
	mov cr4, eax
	TAG "invlpg"            ; a remapped page reads the new frame after INVLPG
	mov eax, [0x400000]
	mov dword [PT2], 0x54000 | 0x7
	invlpg [0x400000]
	mov eax, [0x400000]
	SHOW eax
	call newline
	TAG "pdpte-rsvd"        ; MOV CR3 loads the four PDPTEs: a reserved bit is #GP(0)
	mov dword [PDPT + 3 * 8], PD0 | 0x3     ; bit 1 is reserved in a PAE PDPTE
	RECOVER .f
	mov eax, PDPT
	mov cr3, eax
	NOFAULT
.f:	mov dword [PDPT + 3 * 8], 0
	mov eax, PDPT
	mov cr3, eax
	TAG "pd-rsvd"           ; a reserved bit in a PDE: #PF with P and RSVD
	mov dword [PD0 + 24], 0x600000 | 0x83
	mov dword [PD0 + 28], 0x100     ; bit 40: above MAXPHYADDR
	RECOVER .g
	mov eax, [0x600000]
	NOFAULT
.g:	ret

%include "end.inc"
