//! Host instructions at a guest operand's size: loads and stores of guest registers
//! and memory, the ALU, INC/DEC and conditional jumps the emitter writes, and the
//! inlined TLB lookup of memory operands.

use super::*;

/// The offset in `Cpu` of guest register `r` accessed at `s` bytes.
pub(super) fn reg_at(r: u8, s: u8) -> i32 {
    if s == 1 && r >= crate::exec::AH {
        GPR + (r - crate::exec::AH) as i32 * 8 + 1
    } else {
        GPR + (r & 15) as i32 * 8
    }
}

/// Host register `h` = `s` bytes at host address `base` + `disp`, zero-extended (a
/// guest register in `Cpu`, or guest memory at rax).
pub(super) fn load(a: &mut Assembler, h: u8, base: u8, disp: i32, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; movzx Rd(h), BYTE [Rq(base) + disp]),
        2 => dynasm!(a ; .arch x64 ; movzx Rd(h), WORD [Rq(base) + disp]),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), DWORD [Rq(base) + disp]),
        _ => dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [Rq(base) + disp]),
    }
}

/// `s` bytes at host address `base` + `disp` = host register `h`.
pub(super) fn store(a: &mut Assembler, h: u8, base: u8, disp: i32, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; mov BYTE [Rq(base) + disp], Rb(h)),
        2 => dynasm!(a ; .arch x64 ; mov WORD [Rq(base) + disp], Rw(h)),
        4 => dynasm!(a ; .arch x64 ; mov DWORD [Rq(base) + disp], Rd(h)),
        _ => dynasm!(a ; .arch x64 ; mov QWORD [Rq(base) + disp], Rq(h)),
    }
}

/// Host register `h` = `s` bytes at rax, written as x86 writes a register of that size
/// (SDM vol 1 3.4.1.1: 8- and 16-bit loads keep the rest, 32-bit ones clear bits
/// 63:32).
pub(super) fn load_into(a: &mut Assembler, h: u8, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; mov Rb(h), BYTE [rax]),
        2 => dynasm!(a ; .arch x64 ; mov Rw(h), WORD [rax]),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), DWORD [rax]),
        _ => dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [rax]),
    }
}

/// Host register `h` = `from` bytes at rax, zero- or sign-extended to `to` (4 or 8)
/// bytes, bits 63:32 clear at 4 (SDM vol 2 MOVZX, MOVSX, MOVSXD).
pub(super) fn extend_into(a: &mut Assembler, h: u8, from: u8, signed: bool, to: u8) {
    match (signed, from, to) {
        (false, 1, _) => dynasm!(a ; .arch x64 ; movzx Rd(h), BYTE [rax]),
        (false, 2, _) => dynasm!(a ; .arch x64 ; movzx Rd(h), WORD [rax]),
        (false, _, 4) | (true, 4, 4) => dynasm!(a ; .arch x64 ; mov Rd(h), DWORD [rax]),
        (false, _, _) => dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [rax]),
        (true, 1, 4) => dynasm!(a ; .arch x64 ; movsx Rd(h), BYTE [rax]),
        (true, 2, 4) => dynasm!(a ; .arch x64 ; movsx Rd(h), WORD [rax]),
        (true, 1, _) => dynasm!(a ; .arch x64 ; movsx Rq(h), BYTE [rax]),
        (true, 2, _) => dynasm!(a ; .arch x64 ; movsx Rq(h), WORD [rax]),
        (true, 4, _) => dynasm!(a ; .arch x64 ; movsxd Rq(h), DWORD [rax]),
        (true, _, 4) => dynasm!(a ; .arch x64 ; mov Rd(h), DWORD [rax]),
        (true, _, _) => dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [rax]),
    }
}

/// Host register `h` masked to `s` bytes.
pub(super) fn mask(a: &mut Assembler, h: u8, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; movzx Rd(h), Rb(h)),
        2 => dynasm!(a ; .arch x64 ; movzx Rd(h), Rw(h)),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), Rd(h)),
        _ => {}
    }
}

/// rax (a linear address) = its host address for an `s`-byte access needing the grant
/// `need` (`tlb::need`), through the TLB as `Tlb::lookup` does; else to `bail`.
/// Clobbers rcx, rdx and the host's flags only.
///
/// The tag compared is that of the access's last byte's page (plus one, as tags are
/// kept), looked for in the slot of its first byte's page: it matches only when both
/// are the same page, since two pages in a row never share a slot (`tlb::slot`), so
/// one compare checks the page and that the access stays within it, as TCG's lookup
/// does (`tcg_out_tlb_load`). Past the top of the address space the sum wraps to page 0
/// or 1, whose tags are never in the top page's slot, or 0, an empty entry's, which
/// grants nothing: a miss. No canonical check (SDM vol 1 3.3.7.1) is made: the TLB
/// holds canonical pages only (filled after `Exec::linear`'s check), so a
/// non-canonical address misses, and the interpreter raises its #GP or #SS.
pub(super) fn translate(a: &mut Assembler, s: u8, need: u8, bail: DynamicLabel) {
    // The slot's offset: bits 20..29 of the hash (`tlb::slot`) times an entry's size.
    let offset_mask = ((layout::SLOTS - 1) << layout::SHIFT) as i32;
    let offset_shift = (20 - layout::SHIFT) as i8;
    let hash = layout::HASH as i32;
    let last = 0x1000 + s as i32 - 1;
    let (tag, allow, addend) = (layout::TAG, layout::ALLOW, layout::ADDEND);
    if s == 1 {
        // A byte is within its page: the tag is its page's.
        dynasm!(a ; .arch x64
            ; mov rcx, rax ; shr rcx, 12 ; lea rdx, [rcx + 1] ; imul ecx, ecx, hash
            ; shr ecx, offset_shift ; and ecx, offset_mask
        );
    } else {
        dynasm!(a ; .arch x64
            ; mov rcx, rax ; shr rcx, 12 ; imul ecx, ecx, hash ; shr ecx, offset_shift
            ; and ecx, offset_mask
            ; lea rdx, [rax + last] ; shr rdx, 12
        );
    }
    dynasm!(a ; .arch x64
        ; cmp QWORD [r13 + rcx + tag], rdx ; jne =>bail
        // The entry must grant the access.
        ; test BYTE [r13 + rcx + allow], need as i8 ; jz =>bail
        ; add rax, QWORD [r13 + rcx + addend]
    );
}

/// Host register `d` = `d` `k` `x` at `s` bytes (CMP and TEST compute SUB's and AND's
/// result, which their record holds), or only the flags with `compare` (CMP and TEST
/// as themselves), setting the host's flags as the guest's instruction sets its own (SDM
/// vol 2 ADD, SUB, CMP, AND, OR, XOR, TEST: CF, OF, SF, ZF and PF by the result at the
/// operand size; AF, which no condition reads, stays the record's). An 8- or 16-bit
/// result keeps `d`'s other bits and a 32-bit one clears bits 63:32, as x86 writes
/// registers (SDM vol 1 3.4.1.1): the guest's register, or a zero-extended scratch one.
///
/// `x` is a host register (`Ok`) or a constant (`Err`, masked to `s` bytes; at 8 bytes
/// one that fits 32 bits sign-extended: [`operand`]), an immediate of the host's
/// instruction.
pub(super) fn alu(a: &mut Assembler, k: Alu, s: u8, d: u8, x: Operand, compare: bool) {
    macro_rules! sized {
        ($i:ident) => {
            match (s, x) {
                (1, Ok(x)) => dynasm!(a ; .arch x64 ; $i Rb(d), Rb(x)),
                (2, Ok(x)) => dynasm!(a ; .arch x64 ; $i Rw(d), Rw(x)),
                (4, Ok(x)) => dynasm!(a ; .arch x64 ; $i Rd(d), Rd(x)),
                (_, Ok(x)) => dynasm!(a ; .arch x64 ; $i Rq(d), Rq(x)),
                (1, Err(v)) => dynasm!(a ; .arch x64 ; $i Rb(d), BYTE v as i8),
                (2, Err(v)) => dynasm!(a ; .arch x64 ; $i Rw(d), WORD v as i16),
                (4, Err(v)) => dynasm!(a ; .arch x64 ; $i Rd(d), DWORD v as i32),
                (_, Err(v)) => dynasm!(a ; .arch x64 ; $i Rq(d), DWORD v as i32),
            }
        };
    }
    match k {
        Alu::Cmp if compare => sized!(cmp),
        Alu::Test if compare => sized!(test),
        Alu::Add => sized!(add),
        Alu::Sub | Alu::Cmp => sized!(sub),
        Alu::And | Alu::Test => sized!(and),
        Alu::Or => sized!(or),
        Alu::Xor => sized!(xor),
    }
}

/// Host register `d` = `d` ± 1 at `s` bytes, the host's CF left as it was (SDM vol 2
/// INC, DEC).
pub(super) fn inc_dec(a: &mut Assembler, dec: bool, s: u8, d: u8) {
    match (dec, s) {
        (false, 1) => dynasm!(a ; .arch x64 ; inc Rb(d)),
        (false, 2) => dynasm!(a ; .arch x64 ; inc Rw(d)),
        (false, 4) => dynasm!(a ; .arch x64 ; inc Rd(d)),
        (false, _) => dynasm!(a ; .arch x64 ; inc Rq(d)),
        (true, 1) => dynasm!(a ; .arch x64 ; dec Rb(d)),
        (true, 2) => dynasm!(a ; .arch x64 ; dec Rw(d)),
        (true, 4) => dynasm!(a ; .arch x64 ; dec Rd(d)),
        (true, _) => dynasm!(a ; .arch x64 ; dec Rq(d)),
    }
}

/// A jump to `l` when host condition `cc` (the Jcc encoding's low nibble, which the
/// guest's shares: SDM vol 2 appendix B) holds.
pub(super) fn jump_if(a: &mut Assembler, cc: u8, l: DynamicLabel) {
    match cc & 15 {
        0 => dynasm!(a ; .arch x64 ; jo =>l),
        1 => dynasm!(a ; .arch x64 ; jno =>l),
        2 => dynasm!(a ; .arch x64 ; jb =>l),
        3 => dynasm!(a ; .arch x64 ; jae =>l),
        4 => dynasm!(a ; .arch x64 ; je =>l),
        5 => dynasm!(a ; .arch x64 ; jne =>l),
        6 => dynasm!(a ; .arch x64 ; jbe =>l),
        7 => dynasm!(a ; .arch x64 ; ja =>l),
        8 => dynasm!(a ; .arch x64 ; js =>l),
        9 => dynasm!(a ; .arch x64 ; jns =>l),
        10 => dynasm!(a ; .arch x64 ; jp =>l),
        11 => dynasm!(a ; .arch x64 ; jnp =>l),
        12 => dynasm!(a ; .arch x64 ; jl =>l),
        13 => dynasm!(a ; .arch x64 ; jge =>l),
        14 => dynasm!(a ; .arch x64 ; jle =>l),
        _ => dynasm!(a ; .arch x64 ; jg =>l),
    }
}

/// Host register `h`'s low byte = 1 if condition `cc` (the Jcc/SETcc encoding, SDM vol
/// 2 appendix B.1.4.7) holds on the host's flags, else 0.
pub(super) fn set_if(a: &mut Assembler, cc: u8, h: u8) {
    match cc & 15 {
        0 => dynasm!(a ; .arch x64 ; seto Rb(h)),
        1 => dynasm!(a ; .arch x64 ; setno Rb(h)),
        2 => dynasm!(a ; .arch x64 ; setb Rb(h)),
        3 => dynasm!(a ; .arch x64 ; setae Rb(h)),
        4 => dynasm!(a ; .arch x64 ; sete Rb(h)),
        5 => dynasm!(a ; .arch x64 ; setne Rb(h)),
        6 => dynasm!(a ; .arch x64 ; setbe Rb(h)),
        7 => dynasm!(a ; .arch x64 ; seta Rb(h)),
        8 => dynasm!(a ; .arch x64 ; sets Rb(h)),
        9 => dynasm!(a ; .arch x64 ; setns Rb(h)),
        10 => dynasm!(a ; .arch x64 ; setp Rb(h)),
        11 => dynasm!(a ; .arch x64 ; setnp Rb(h)),
        12 => dynasm!(a ; .arch x64 ; setl Rb(h)),
        13 => dynasm!(a ; .arch x64 ; setge Rb(h)),
        14 => dynasm!(a ; .arch x64 ; setle Rb(h)),
        _ => dynasm!(a ; .arch x64 ; setg Rb(h)),
    }
}

/// NOT of host register `h` at size `s` (no flag changes, SDM vol 2 NOT); a 32-bit
/// one clears bits 63:32, as the guest's does.
pub(super) fn not(a: &mut Assembler, s: u8, h: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; not Rb(h)),
        2 => dynasm!(a ; .arch x64 ; not Rw(h)),
        4 => dynasm!(a ; .arch x64 ; not Rd(h)),
        _ => dynasm!(a ; .arch x64 ; not Rq(h)),
    }
}
