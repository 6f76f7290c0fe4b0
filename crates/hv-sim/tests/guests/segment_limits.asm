; Segment limits and types in protected mode (SDM vol 3 5.3 "Limit Checking", 5.4
; "Type Checking"; vol 2 MOV "Protected Mode Exceptions"). QEMU's TCG checks none of
; these for data accesses; the harness holds the sim to the manual there.
%include "common.inc"

%macro WITH_ES 1
	mov ax, %1
	mov es, ax
%endmacro

tests:
	TAG "at-limit"          ; base 0x20000, limit 0xFFF: the last byte is inside
	WITH_ES DATA_LIM
	mov al, [es:0xFFF]
	SHOW 1
	call newline
	TAG "dword-past"        ; a dword whose last byte passes the limit: #GP(0)
	RECOVER .a
	WITH_ES DATA_LIM
	mov eax, [es:0xFFE]
	NOFAULT
.a:	TAG "offset-past"
	RECOVER .b
	WITH_ES DATA_LIM
	mov byte [es:0x1000], 1
	NOFAULT
.b:	TAG "xdown-low"         ; expand-down, limit 0xFFF, B = 0: offsets 0x1000..0xFFFF
	RECOVER .c
	WITH_ES DATA_XDOWN
	mov al, [es:0x0FFF]
	NOFAULT
.c:	TAG "xdown-ok"
	WITH_ES DATA_XDOWN
	mov al, [es:0x1000]
	mov al, [es:0xFFFF]
	SHOW 2
	call newline
	TAG "xdown-top"         ; a word at 0xFFFF passes the 16-bit upper bound
	RECOVER .d
	WITH_ES DATA_XDOWN
	mov ax, [es:0xFFFF]
	NOFAULT
.d:	TAG "ro-write"          ; writing read-only data: #GP(0)
	RECOVER .e
	WITH_ES DATA_RO
	mov byte [es:0x5000], 1
	NOFAULT
.e:	TAG "cs-write"          ; writing through CS: #GP(0)
	RECOVER .f
	mov byte [cs:0x100], 1
	NOFAULT
.f:	TAG "cs-read"           ; CS is readable: no fault
	mov eax, [cs:0]
	SHOW eax
	call newline
	TAG "ss-limit"          ; an SS-relative read past SS's limit: #SS(0)
	RECOVER .g
	mov ax, DATA_LIM
	mov ss, ax
	mov esp, 0xF00
	mov eax, [ss:0x1000]
	NOFAULT
	mov ax, DATA32
	mov ss, ax
	mov esp, [recover_esp]
.g:	TAG "null-es"           ; using a null segment: #GP(0)
	RECOVER .i
	WITH_ES 0
	mov eax, [es:0]
	NOFAULT
.i:	WITH_ES DATA32
	ret

%include "end.inc"
