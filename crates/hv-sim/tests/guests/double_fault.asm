; Double faults: a #GP whose delivery meets a not-present #GP gate raises #NP during
; delivery, a contributory pair: #DF with error code 0 (SDM vol 3 6.15 Table 6-5,
; "Interrupt 8"); a #PF during a #PF is #DF too; a benign exception is handled serially.
%include "common.inc"

tests:
	TAG "gp-then-np"
	and byte [IDT_BASE + 13 * 8 + 5], 0x7F      ; #GP gate not present
	RECOVER .a
	mov ax, 0x1F8           ; beyond the GDT: #GP(0x1F8)
	mov ds, ax
	NOFAULT
.a:	or byte [IDT_BASE + 13 * 8 + 5], 0x80
	mov ax, DATA32
	mov ds, ax
	TAG "ud-then-np"        ; #UD (benign) meeting #NP: #NP is handled, no #DF
	and byte [IDT_BASE + 6 * 8 + 5], 0x7F
	RECOVER .b
	ud2
	NOFAULT
.b:	or byte [IDT_BASE + 6 * 8 + 5], 0x80
	ret

%include "end.inc"
