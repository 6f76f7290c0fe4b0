; 32-bit paging: present, read/write with CR0.WP, user/supervisor, the accessed and
; dirty bits, 4 MiB pages with CR4.PSE, INVLPG (SDM vol 3 4.3, 4.6, 4.7, 4.8).
%include "common.inc"

%define PD      0x10000
%define PT0     0x11000         ; identity map of 0..4 MiB, user pages
%define PT1     0x12000         ; 4..8 MiB: the test pages

tests:
	; Identity-map 0..4 MiB with 4 KiB user pages.
	mov edi, PT0
	mov eax, 0x7
	mov ecx, 1024
.fill:	mov [edi], eax
	add eax, 0x1000
	add edi, 4
	loop .fill
	mov edi, PT1
	mov ecx, 1024
	xor eax, eax
	rep stosd
	mov edi, PD
	mov ecx, 1024
	rep stosd
	mov dword [PD], PT0 | 7
	mov dword [PD + 4], PT1 | 7
	mov dword [PT1 + 0 * 4], 0x50000 | 0x7      ; 0x400000: user, writable
	mov dword [PT1 + 1 * 4], 0x51000 | 0x5      ; 0x401000: user, read-only
	mov dword [PT1 + 2 * 4], 0x52000 | 0x3      ; 0x402000: supervisor, writable
	mov dword [PT1 + 3 * 4], 0                  ; 0x403000: not present
	mov dword [0x50000], 0x11111111
	mov dword [0x51000], 0x22222222
	mov dword [0x52000], 0x33333333
	mov eax, PD
	mov cr3, eax
	mov eax, cr0
	or eax, 0x80000000
	mov cr0, eax

	TAG "read-user"
	mov eax, [0x400000]
	SHOW eax
	call newline
	TAG "np-read"
	RECOVER .a
	mov eax, [0x403004]
	NOFAULT
.a:	TAG "np-write"
	RECOVER .b
	mov dword [0x403008], 1
	NOFAULT
.b:	TAG "ro-write-wp0"      ; CR0.WP = 0: a supervisor write to a read-only page succeeds
	RECOVER .c
	mov dword [0x401000], 0x44444444
	NOFAULT
.c:	TAG "ro-write-wp1"      ; CR0.WP = 1: #PF, present and write
	mov eax, cr0
	or eax, 0x10000
	mov cr0, eax
	RECOVER .d
	mov dword [0x401004], 5
	NOFAULT
.d:	TAG "ad-bits"           ; the walks set accessed (and, for writes, dirty) bits
	mov eax, [PT1]
	and eax, 0x60
	SHOW eax
	mov eax, [PT1 + 4]
	and eax, 0x60
	SHOW eax
	mov eax, [PD + 4]
	and eax, 0x60
	SHOW eax
	call newline
	TAG "user-sup-read"     ; ring 3 reading a supervisor page: #PF 0x05
	RECOVER .e
	TO_RING3 .r3a
.r3a:	mov eax, [0x402000]
	int 0x80
.e:	TAG "user-ro-write"     ; ring 3 writing a read-only user page: #PF 0x07
	RECOVER .f
	TO_RING3 .r3b
.r3b:	mov dword [0x401008], 1
	int 0x80
.f:	TAG "user-ok"           ; ring 3 writing its own page: no fault
	RECOVER .g
	TO_RING3 .r3c
.r3c:	mov dword [0x40000c], 0x55
	int 0x80
.g:	mov eax, [0x50000 + 0xc]
	SHOW eax
	call newline
	TAG "pse-4m"            ; a 4 MiB page at 8 MiB onto physical 0
	mov eax, cr4
	or eax, 0x10
	mov cr4, eax
	mov dword [PD + 8], 0x00000083
	mov eax, [0x800000 + 0x50000]
	SHOW eax
	call newline
	TAG "invlpg"            ; a changed PTE, then INVLPG: the new mapping is seen
	mov dword [PT1], 0x52000 | 0x7
	invlpg [0x400000]
	mov eax, [0x400000]
	SHOW eax
	call newline
	mov eax, cr0
	and eax, 0x7FFFFFFF
	mov cr0, eax
	ret

%include "end.inc"
