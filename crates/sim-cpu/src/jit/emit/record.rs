//! Lazy-flags records in compiled code: the record an ALU or INC/DEC instruction
//! makes ([`Rec`]), kept in host registers and written into the processor's state
//! ([`put_record`]) where something looks, and the host's flags made the guest's again
//! from a record (kept, or in the processor's state: [`flags_routine`]).

use super::asm::{alu, inc_dec};
use super::*;

/// The arithmetic flags RFLAGS can be loaded with from an eager record: CF, PF, AF,
/// ZF, SF, OF (nothing that changes how host code runs: TF, IF, DF, AC stay clear).
pub(super) const ARITH_MASK: i32 = crate::flags::ARITH as i32;

/// A value: in a host register (`Ok`), or a constant (`Err`).
pub(super) type Operand = Result<u8, u64>;

/// Source `src` of `s` bytes as an [`Operand`] for [`alu`]: an immediate that the
/// host's instruction can hold as it is (at 8 bytes, one that is a 32-bit value
/// sign-extended, as the guest's own are), else loaded into host register `h`.
pub(super) fn operand(e: &mut Emitter<'_>, h: u8, src: Src, s: u8) -> Operand {
    match src {
        Src::Imm(v) if s < 8 || v as i64 == v as i32 as i64 => Err(v),
        _ => {
            e.source(h, src, s);
            Ok(h)
        }
    }
}

/// Writes `v` (a host register, or a constant) at `disp` in the processor's state.
pub(super) fn put_value(a: &mut Assembler, disp: i32, v: Operand) {
    match v {
        Ok(h) => dynasm!(a ; .arch x64 ; mov QWORD [r12 + disp], Rq(h)),
        Err(v) if v as i64 == v as i32 as i64 => {
            dynasm!(a ; .arch x64 ; mov QWORD [r12 + disp], v as i32)
        }
        Err(v) => {
            let (lo, hi) = (v as u32 as i32, (v >> 32) as u32 as i32);
            dynasm!(a ; .arch x64 ; mov DWORD [r12 + disp], lo ; mov DWORD [r12 + disp + 4], hi);
        }
    }
}

/// A lazy-flags record as `Flags::record` makes it: its kind and size, the operands in
/// host registers (`Ok`) or constants (`Err`), a logical operation's result in r9
/// (the others' is made again from the operands: [`put_record`]); `keep_cf`: INC/DEC's,
/// which first moves the CF before it (in r8's low byte) into `bits`, as
/// `Flags::record_keep_cf` does.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rec {
    pub(super) f: FlagOp,
    pub(super) s: u8,
    pub(super) a: Operand,
    pub(super) b: Operand,
    pub(super) keep_cf: bool,
}

/// Writes the record: for INC/DEC's, the CF before it (r8's low byte) into `bits`
/// first; then its kind, size, result and operands. The result of an addition, a
/// subtraction, an increment or a decrement is made again here, into r9, from its
/// operands (zero-extended in r10 and r11: [`Emitter::load_reg`]), so the code that
/// keeps the record need not copy it; a logical operation's is in r9. Uses no other
/// register; the host's flags change.
pub(super) fn put_record(a: &mut Assembler, r: Rec) {
    redo(a, r, R9);
    if r.keep_cf {
        dynasm!(a ; .arch x64
            ; movzx r8d, r8b ; and QWORD [r12 + F_BITS], -2 ; or QWORD [r12 + F_BITS], r8
        );
    }
    // The kind and the size, side by side: one store.
    let (f, s) = (r.f as u8 as u16, r.s as u16);
    let op_size = if F_OP < F_SIZE {
        f | s << 8
    } else {
        s | f << 8
    } as i16;
    dynasm!(a ; .arch x64
        ; mov WORD [r12 + F_OP_SIZE], op_size ; mov QWORD [r12 + F_RES], r9
    );
    put_value(a, F_A, r.a);
    put_value(a, F_B, r.b);
}

/// Host register `into` = the result of a kept addition, subtraction, increment or
/// decrement, redone from its operands (the host's flags then the operation's, but an
/// INC/DEC's CF); `false` for other records, which keep no operands to redo.
fn redo(a: &mut Assembler, r: Rec, into: u8) -> bool {
    match (r.f, r.a, r.b) {
        (FlagOp::Add | FlagOp::Sub, Ok(x), y) => {
            let k = if r.f == FlagOp::Add {
                Alu::Add
            } else {
                Alu::Sub
            };
            dynasm!(a ; .arch x64 ; mov Rq(into), Rq(x));
            alu(a, k, r.s, into, y, false);
            true
        }
        (FlagOp::Inc | FlagOp::Dec, Ok(x), _) => {
            dynasm!(a ; .arch x64 ; mov Rq(into), Rq(x));
            inc_dec(a, r.f == FlagOp::Dec, r.s, into);
            true
        }
        _ => false,
    }
}

/// Host RFLAGS' CF, PF, ZF, SF and OF = the guest's, from a lazy record of kind `f` and
/// size `s`: the host redoes the recorded operation at its size, which sets its flags
/// exactly as the guest's instruction did (SDM vol 1 appendix A; the lazy definitions
/// in `crate::flags` are those). Clobbers rax, rcx.
pub(super) fn native_flags(a: &mut Assembler, f: FlagOp, s: u8) {
    macro_rules! sized {
        ($($pre:tt)*) => {
            match s {
                1 => dynasm!(a ; .arch x64 ; $($pre)* al, cl),
                2 => dynasm!(a ; .arch x64 ; $($pre)* ax, cx),
                4 => dynasm!(a ; .arch x64 ; $($pre)* eax, ecx),
                _ => dynasm!(a ; .arch x64 ; $($pre)* rax, rcx),
            }
        };
    }
    match f {
        FlagOp::Eager => dynasm!(a ; .arch x64
            ; mov rax, QWORD [r12 + F_BITS] ; and eax, ARITH_MASK ; push rax ; popfq
        ),
        FlagOp::Logic => {
            dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + F_RES] ; mov rcx, rax);
            sized!(test);
        }
        FlagOp::Inc | FlagOp::Dec => {
            // CF from `bits`, the rest from redoing the increment or decrement.
            dynasm!(a ; .arch x64 ; mov rcx, QWORD [r12 + F_BITS] ; mov rax, QWORD [r12 + F_A] ; bt ecx, 0);
            match (f == FlagOp::Dec, s) {
                (false, 1) => dynasm!(a ; .arch x64 ; inc al),
                (false, 2) => dynasm!(a ; .arch x64 ; inc ax),
                (false, 4) => dynasm!(a ; .arch x64 ; inc eax),
                (false, _) => dynasm!(a ; .arch x64 ; inc rax),
                (true, 1) => dynasm!(a ; .arch x64 ; dec al),
                (true, 2) => dynasm!(a ; .arch x64 ; dec ax),
                (true, 4) => dynasm!(a ; .arch x64 ; dec eax),
                (true, _) => dynasm!(a ; .arch x64 ; dec rax),
            }
        }
        _ => {
            dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + F_A] ; mov rcx, QWORD [r12 + F_B]);
            match f {
                FlagOp::Add => sized!(add),
                FlagOp::Adc => sized!(stc ; adc),
                FlagOp::Sub => sized!(cmp),
                _ => sized!(stc ; sbb),
            }
        }
    }
}

/// Host RFLAGS' CF, PF, ZF, SF and OF = the guest's, from a record kept in host
/// registers ([`Rec`]): the host redoes its operation on them, as [`native_flags`] does
/// from one in the processor's state. Clobbers rcx.
pub(super) fn flags_of_kept(a: &mut Assembler, r: Rec) {
    if r.keep_cf {
        // INC/DEC leave CF as it was: the host's first.
        dynasm!(a ; .arch x64 ; bt r8d, 0);
    }
    if r.f == FlagOp::Logic {
        alu(a, Alu::Test, r.s, R9, Ok(R9), true);
    } else if !redo(a, r, RCX) {
        // The emitter keeps no other records: written, then read back.
        put_record(a, r);
        dynasm!(a ; .arch x64 ; push rax);
        native_flags(a, r.f, r.s);
        dynasm!(a ; .arch x64 ; pop rax);
    }
}

/// Every record kind, in the order of their discriminants (the flags routine's table
/// is indexed by them).
pub(super) const KINDS: [FlagOp; 8] = [
    FlagOp::Eager,
    FlagOp::Add,
    FlagOp::Adc,
    FlagOp::Sub,
    FlagOp::Sbb,
    FlagOp::Logic,
    FlagOp::Inc,
    FlagOp::Dec,
];
const _: () = {
    let mut i = 0;
    while i < KINDS.len() {
        assert!(KINDS[i] as usize == i, "KINDS is in discriminant order");
        i += 1;
    }
};

/// The routine compiled code calls for [`native_flags`] when the record's kind is not
/// known when compiling (made by an earlier block): one case per kind and size, reached
/// through a table of their offsets indexed by kind * 4 + log2(size) (a chain of
/// compares took ~60 host instructions to reach a DEC's record: each port exit from a
/// `dec ecx; jnz` loop paid them). Clobbers rax, rcx, rdx. Its entry is its first byte.
pub fn flags_routine() -> Result<Vec<u8>, TranslateError> {
    const SIZES: [u8; 4] = [1, 2, 4, 8];
    let mut a = assembler();
    // The masks keep the index in the table whatever the bytes hold (every record has
    // one of the kinds and sizes, so they change nothing).
    dynasm!(a ; .arch x64
        ; movzx edx, BYTE [r12 + F_OP] ; and edx, KINDS.len() as i32 - 1
        ; movzx ecx, BYTE [r12 + F_SIZE] ; bsf ecx, ecx ; and ecx, SIZES.len() as i32 - 1
        ; lea edx, [rcx + rdx * 4]
        ; lea rcx, [->table]
        ; movsxd rdx, DWORD [rcx + rdx * 4]
        ; add rcx, rdx
        ; jmp rcx
    );
    let mut cases = Vec::with_capacity(KINDS.len() * SIZES.len());
    for f in KINDS {
        for s in SIZES {
            cases.push(a.offset().0);
            native_flags(&mut a, f, s);
            dynasm!(a ; .arch x64 ; ret);
        }
    }
    dynasm!(a ; .arch x64 ; .align 4 ; ->table:);
    let table = a.offset().0;
    for _ in &cases {
        dynasm!(a ; .arch x64 ; .i32 0);
    }
    let mut code = finish(a)?;
    // Each entry: its case's offset from the table (the code moves when copied into the
    // code area; offsets between its parts do not).
    let entries = code
        .get_mut(table..)
        .ok_or_else(|| TranslateError::Assemble("the flags routine has no table".into()))?;
    for (&case, entry) in cases.iter().zip(entries.chunks_exact_mut(4)) {
        let from_table = i32::try_from(case as i64 - table as i64)
            .map_err(|_| TranslateError::Assemble("the flags routine is too long".into()))?;
        entry.copy_from_slice(&from_table.to_le_bytes());
    }
    Ok(code)
}

/// Host flags = guest flags, `known` the record's kind and size when an earlier
/// instruction of this block made it, else through the routine at `routine`.
pub(super) fn guest_flags(a: &mut Assembler, known: Option<(FlagOp, u8)>, routine: usize) {
    match known {
        Some((f, s)) => native_flags(a, f, s),
        None => {
            let at = routine as i64;
            dynasm!(a ; .arch x64 ; mov rax, QWORD at ; call rax);
        }
    }
}
