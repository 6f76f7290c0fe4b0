//! Host code for a block's covered prefix, emitted with dynasmrt (x86-64, System V).
//!
//! The block's [`Plan`] decides what lives where: the guest registers it uses most live
//! in host registers ([`super::plan::POOL`]) from the function's entry, written back to
//! [`Cpu`] when it returns and around each handler call; each instruction computes at
//! its own operand size, so the host's flags are the guest's after it and a Jcc or
//! INC/DEC right after tests them directly. Its lazy-flags record ([`Flags`]: the same
//! record the interpreter's handlers make) stays in host registers (r9-r11, INC/DEC's
//! CF in r8) until the next one replaces it, and is written into the processor's state
//! only on the ways out that need it: a bail's own exit path, a handler call, the
//! block's ends (further than QEMU's TCG goes: it tracks `cc_op` while translating and
//! stores it only where it must, but stores `cc_src`/`cc_dst` with each instruction).
//! Whenever the function returns, the
//! processor's state is the interpreter's after the same instructions. Registers: r12
//! the `Cpu`, r13 the TLB's entries, r14 the [`Frame`], r15 its budget (in the frame
//! when the function returns or calls a handler); rax, rcx, rdx scratch; r8-r11 the
//! kept record.
//!
//! Memory operands go through the interpreter's TLB ([`crate::tlb`]) with its lookup
//! written out: the entry's tag (which also checks that the access stays within one
//! page and, the TLB holding canonical pages only, that its address is canonical: SDM
//! vol 1 3.3.7.1) and its grant for the access and privilege. Anything else (a miss, a
//! page crossing, a non-canonical address, a page holding code or a watched byte, MMIO:
//! none of those ever has a grant in the TLB) *bails*: the function returns the index
//! of the instruction before it has changed anything, and the interpreter executes it,
//! with its faults, exits and slow paths.

// dynasm's dynamic registers (`Rq(h)`) expand to `h.into()`, a conversion to the same
// type when `h` is already a `u8`.
#![allow(clippy::useless_conversion)]

use super::chain::layout as chain;
use super::cover::{Alu, Kind, Loc, ShiftKind, Src};
use super::plan::{plan, Plan, Record};
use super::{Frame, TranslateError};
use crate::decode::Op;
use crate::exec::NONE;
use crate::flags::{FlagOp, Flags};
use crate::state::Cpu;
use crate::tlb::layout;
use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};
use std::mem::offset_of;

/// Code is assembled into a vector, then copied into the code area (`super::area`):
/// it is position-independent (branches within it are relative, and the one call out,
/// to the flags routine, goes through a register), so it is assembled at 0.
type Assembler = VecAssembler<X64Relocation>;

fn assembler() -> Assembler {
    VecAssembler::new(0)
}

fn finish(a: Assembler) -> Result<Vec<u8>, TranslateError> {
    a.finalize()
        .map_err(|e| TranslateError::Assemble(e.to_string()))
}

/// The compiled function: returns how many of the block's instructions completed in
/// its last pass (`Frame::loops` counts the passes before it).
pub type Entry = unsafe extern "sysv64" fn(*mut Frame) -> u32;

const GPR: i32 = offset_of!(Cpu, gpr) as i32;
const SEG: i32 = offset_of!(Cpu, seg) as i32;
const SEG_BASE: i32 = offset_of!(crate::state::Segment, base) as i32;
const SEG_SIZE: i32 = std::mem::size_of::<crate::state::Segment>() as i32;
const RIP: i32 = offset_of!(Cpu, rip) as i32;
const FLAGS: i32 = offset_of!(Cpu, flags) as i32;
const F_BITS: i32 = FLAGS + offset_of!(Flags, bits) as i32;
const F_OP: i32 = FLAGS + offset_of!(Flags, op) as i32;
const F_SIZE: i32 = FLAGS + offset_of!(Flags, size) as i32;
const F_RES: i32 = FLAGS + offset_of!(Flags, res) as i32;
/// A record's kind and size are side by side (stored as one word at the lower).
const F_OP_SIZE: i32 = if F_OP < F_SIZE { F_OP } else { F_SIZE };
const _: () = assert!(
    F_OP.abs_diff(F_SIZE) == 1,
    "a record's kind and size are stored as one word"
);
const F_A: i32 = FLAGS + offset_of!(Flags, a) as i32;
const F_B: i32 = FLAGS + offset_of!(Flags, b) as i32;
const FR_CPU: i32 = offset_of!(Frame, cpu) as i32;
const FR_TLB: i32 = offset_of!(Frame, tlb) as i32;
const FR_JUMPS: i32 = offset_of!(Frame, jumps) as i32;
const FR_BUDGET: i32 = offset_of!(Frame, budget) as i32;
const FR_STAMP: i32 = offset_of!(Frame, stamp) as i32;
const FR_BLOCK: i32 = offset_of!(Frame, block) as i32;

// Host register numbers (dynasm's dynamic registers).
const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const R12: u8 = 12;
const R9: u8 = 9;
/// RSP's guest register number (SDM vol 2 table 3-1).
const RSP_REG: u8 = 4;
const R10: u8 = 10;
const R11: u8 = 11;

/// The arithmetic flags RFLAGS can be loaded with from an eager record: CF, PF, AF,
/// ZF, SF, OF (nothing that changes how host code runs: TF, IF, DF, AC stay clear).
const ARITH_MASK: i32 = crate::flags::ARITH as i32;

/// The offset in `Cpu` of guest register `r` accessed at `s` bytes.
fn reg_at(r: u8, s: u8) -> i32 {
    if s == 1 && r >= crate::exec::AH {
        GPR + (r - crate::exec::AH) as i32 * 8 + 1
    } else {
        GPR + (r & 15) as i32 * 8
    }
}

/// Host register `h` = `s` bytes at host address `base` + `disp`, zero-extended (a
/// guest register in `Cpu`, or guest memory at rax).
fn load(a: &mut Assembler, h: u8, base: u8, disp: i32, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; movzx Rd(h), BYTE [Rq(base) + disp]),
        2 => dynasm!(a ; .arch x64 ; movzx Rd(h), WORD [Rq(base) + disp]),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), DWORD [Rq(base) + disp]),
        _ => dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [Rq(base) + disp]),
    }
}

/// `s` bytes at host address `base` + `disp` = host register `h`.
fn store(a: &mut Assembler, h: u8, base: u8, disp: i32, s: u8) {
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
fn load_into(a: &mut Assembler, h: u8, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; mov Rb(h), BYTE [rax]),
        2 => dynasm!(a ; .arch x64 ; mov Rw(h), WORD [rax]),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), DWORD [rax]),
        _ => dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [rax]),
    }
}

/// Host register `h` = `from` bytes at rax, zero- or sign-extended to `to` (4 or 8)
/// bytes, bits 63:32 clear at 4 (SDM vol 2 MOVZX, MOVSX, MOVSXD).
fn extend_into(a: &mut Assembler, h: u8, from: u8, signed: bool, to: u8) {
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
fn mask(a: &mut Assembler, h: u8, s: u8) {
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
fn translate(a: &mut Assembler, s: u8, need: u8, bail: DynamicLabel) {
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

/// A value: in a host register (`Ok`), or a constant (`Err`).
type Operand = Result<u8, u64>;

/// Source `src` of `s` bytes as an [`Operand`] for [`alu`]: an immediate that the
/// host's instruction can hold as it is (at 8 bytes, one that is a 32-bit value
/// sign-extended, as the guest's own are), else loaded into host register `h`.
fn operand(e: &mut Emitter<'_>, h: u8, src: Src, s: u8) -> Operand {
    match src {
        Src::Imm(v) if s < 8 || v as i64 == v as i32 as i64 => Err(v),
        _ => {
            e.source(h, src, s);
            Ok(h)
        }
    }
}

/// Writes `v` (a host register, or a constant) at `disp` in the processor's state.
fn put_value(a: &mut Assembler, disp: i32, v: Operand) {
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
struct Rec {
    f: FlagOp,
    s: u8,
    a: Operand,
    b: Operand,
    keep_cf: bool,
}

/// Writes the record: for INC/DEC's, the CF before it (r8's low byte) into `bits`
/// first; then its kind, size, result and operands. The result of an addition, a
/// subtraction, an increment or a decrement is made again here, into r9, from its
/// operands (zero-extended in r10 and r11: [`Emitter::load_reg`]), so the code that
/// keeps the record need not copy it; a logical operation's is in r9. Uses no other
/// register; the host's flags change.
fn put_record(a: &mut Assembler, r: Rec) {
    match (r.f, r.a, r.b) {
        (FlagOp::Add, Ok(x), y) => {
            dynasm!(a ; .arch x64 ; mov r9, Rq(x));
            alu(a, Alu::Add, r.s, R9, y, false);
        }
        (FlagOp::Sub, Ok(x), y) => {
            dynasm!(a ; .arch x64 ; mov r9, Rq(x));
            alu(a, Alu::Sub, r.s, R9, y, false);
        }
        (FlagOp::Inc | FlagOp::Dec, Ok(x), _) => {
            dynasm!(a ; .arch x64 ; mov r9, Rq(x));
            inc_dec(a, r.f == FlagOp::Dec, r.s, R9);
        }
        _ => {}
    }
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
fn alu(a: &mut Assembler, k: Alu, s: u8, d: u8, x: Operand, compare: bool) {
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
fn inc_dec(a: &mut Assembler, dec: bool, s: u8, d: u8) {
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

/// Host RFLAGS' CF, PF, ZF, SF and OF = the guest's, from a lazy record of kind `f` and
/// size `s`: the host redoes the recorded operation at its size, which sets its flags
/// exactly as the guest's instruction did (SDM vol 1 appendix A; the lazy definitions
/// in `crate::flags` are those). Clobbers rax, rcx.
fn native_flags(a: &mut Assembler, f: FlagOp, s: u8) {
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
fn flags_of_kept(a: &mut Assembler, r: Rec) {
    let s = r.s;
    match (r.f, r.a, r.b) {
        (FlagOp::Add, Ok(x), y) => {
            dynasm!(a ; .arch x64 ; mov rcx, Rq(x));
            alu(a, Alu::Add, s, RCX, y, false);
        }
        (FlagOp::Sub, Ok(x), y) => alu(a, Alu::Cmp, s, x, y, true),
        (FlagOp::Logic, ..) => alu(a, Alu::Test, s, R9, Ok(R9), true),
        (FlagOp::Inc | FlagOp::Dec, Ok(x), _) => {
            dynasm!(a ; .arch x64 ; bt r8d, 0 ; mov rcx, Rq(x));
            inc_dec(a, r.f == FlagOp::Dec, s, RCX);
        }
        // The emitter keeps no other records: written, then read back.
        _ => {
            put_record(a, r);
            dynasm!(a ; .arch x64 ; push rax);
            native_flags(a, r.f, s);
            dynasm!(a ; .arch x64 ; pop rax);
        }
    }
}

const KINDS: [FlagOp; 8] = [
    FlagOp::Eager,
    FlagOp::Add,
    FlagOp::Adc,
    FlagOp::Sub,
    FlagOp::Sbb,
    FlagOp::Logic,
    FlagOp::Inc,
    FlagOp::Dec,
];

/// The routine compiled code calls for [`native_flags`] when the record's kind is not
/// known when compiling (made by an earlier block): dispatches on the record's kind and
/// size. Clobbers rax, rcx, rdx. Its entry is its first byte.
pub fn flags_routine() -> Result<Vec<u8>, TranslateError> {
    let mut a = assembler();
    dynasm!(a ; .arch x64 ; movzx edx, BYTE [r12 + F_OP] ; shl edx, 8 ; mov dl, BYTE [r12 + F_SIZE]);
    for f in KINDS {
        for s in [1u8, 2, 4, 8] {
            let next = a.new_dynamic_label();
            let key = ((f as i32) << 8) | s as i32;
            dynasm!(a ; .arch x64 ; cmp edx, key ; jne =>next);
            native_flags(&mut a, f, s);
            dynasm!(a ; .arch x64 ; ret ; =>next);
        }
    }
    // Not reached: every record has one of the kinds and sizes above.
    dynasm!(a ; .arch x64 ; ud2);
    finish(a)
}

/// Host flags = guest flags, `known` the record's kind and size when an earlier
/// instruction of this block made it, else through the routine at `routine`.
fn guest_flags(a: &mut Assembler, known: Option<(FlagOp, u8)>, routine: usize) {
    match known {
        Some((f, s)) => native_flags(a, f, s),
        None => {
            let at = routine as i64;
            dynasm!(a ; .arch x64 ; mov rax, QWORD at ; call rax);
        }
    }
}

/// A jump to `l` when host condition `cc` (the Jcc encoding's low nibble, which the
/// guest's shares: SDM vol 2 appendix B) holds.
fn jump_if(a: &mut Assembler, cc: u8, l: DynamicLabel) {
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

/// How compiled code leaves a block at its end.
#[derive(Clone, Copy)]
enum Leave {
    /// At a RIP known when compiling.
    At(u64),
    /// At the RIP in rax, computed as the block ran: looked up in the block's chains,
    /// then in the jump cache ([`super::chain::JumpCache`]). `ret`: popped by a RET
    /// that moved RSP by the amount given, the RIP is checked on the way back to the
    /// run loop alone (no chain names a non-canonical RIP), where a non-canonical one
    /// is #GP(0) with the stack as it was (`ret64`), so RSP moves back and the RET
    /// bails to the interpreter, which raises it.
    Computed { ret: Option<(i32, DynamicLabel)> },
}

/// The RIPs a block's code may leave at: known when compiling (at most two, a Jcc's),
/// each given a chain of its own that holds that RIP for the block's life
/// ([`super::chain`]'s fixed chains); or not all known (a RET's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exits {
    Fixed([Option<u64>; 2]),
    Computed,
}

impl Exits {
    /// The block's exits from its covered prefix `kinds` of `ops`.
    fn of(ops: &[Op], kinds: &[Kind]) -> Exits {
        let last = ops[kinds.len() - 1].next;
        match kinds.last() {
            Some(Kind::Jcc { target, .. }) if *target == last => Exits::Fixed([Some(last), None]),
            Some(Kind::Jcc { target, .. }) => Exits::Fixed([Some(last), Some(*target)]),
            Some(Kind::Jmp { target } | Kind::Near { target }) => {
                Exits::Fixed([Some(*target), None])
            }
            Some(Kind::Ret { .. } | Kind::Branch) => Exits::Computed,
            _ if kinds.len() == ops.len() => Exits::Fixed([Some(last), None]),
            // The interpreter goes on at the first instruction not covered.
            _ => Exits::Computed,
        }
    }

    /// The chain fixed for `rip`, if any.
    fn chain_of(&self, rip: u64) -> Option<usize> {
        match self {
            Exits::Fixed(t) => t.iter().position(|&x| x == Some(rip)),
            Exits::Computed => None,
        }
    }
}

/// A bail's way out: its label, the instruction it returns the index of, and the
/// record kept in host registers there, which it writes first.
struct Bail {
    label: DynamicLabel,
    i: usize,
    kept: Option<Rec>,
}

/// The second pass of a block that branches back to its top: its label, the record
/// kept in host registers on entering it, and the one kept at the branch back (which
/// its way out writes).
#[derive(Clone, Copy)]
struct Again {
    label: DynamicLabel,
    kept: Option<Rec>,
    leaving: Option<Rec>,
}

/// State the emitter carries from one instruction to the next.
struct Emitter<'a> {
    a: Assembler,
    /// Per instruction of the pass being emitted: its bail's label, once made.
    bail_of: Vec<Option<DynamicLabel>>,
    bails: Vec<Bail>,
    exit: DynamicLabel,
    /// The block's second pass ([`Emitter::back`]), once a branch back needs it.
    again: Option<Again>,
    /// The lazy record's kind and size, once an instruction of the block made it.
    known: Option<(FlagOp, u8)>,
    /// The record the last instruction that made one keeps in host registers
    /// ([`Record::Kept`]), not yet in the processor's state: written by the ways out
    /// (bails, the block's ends, handler calls) and read from the registers.
    kept: Option<Rec>,
    cx: Context,
    ops: &'a [Op],
    plan: Plan,
    exits: Exits,
}

/// What compiled code is made for besides its instructions.
pub struct Context {
    /// The block's RIP.
    pub block_ip: u64,
    /// The address of [`flags_routine`]'s code.
    pub routine: usize,
    /// The address of `super::call_handler`.
    pub handler: usize,
    /// The TLB grants (`tlb::need`) a read and a write need at the privilege the code
    /// is compiled for.
    pub need_read: u8,
    pub need_write: u8,
    /// The address of the block's two chains (`super::chain::Chain`), when its code may
    /// go on into another block's.
    pub chains: Option<usize>,
}

impl Emitter<'_> {
    /// Host register `h` = guest register `r`, `s` bytes zero-extended (as `Exec::reg`).
    fn load_reg(&mut self, h: u8, r: u8, s: u8) {
        let cached = self.cached(r, s);
        let a = &mut self.a;
        match cached {
            Some(c) => match s {
                1 => dynasm!(a ; .arch x64 ; movzx Rd(h), Rb(c)),
                2 => dynasm!(a ; .arch x64 ; movzx Rd(h), Rw(c)),
                4 => dynasm!(a ; .arch x64 ; mov Rd(h), Rd(c)),
                _ => dynasm!(a ; .arch x64 ; mov Rq(h), Rq(c)),
            },
            None => load(a, h, R12, reg_at(r, s), s),
        }
    }

    /// Guest register `r` = host register `h` at `s` bytes, as x86 writes registers (SDM
    /// vol 1 3.4.1.1: 8- and 16-bit writes keep the rest, 32-bit writes clear bits
    /// 63:32).
    fn store_reg(&mut self, h: u8, r: u8, s: u8) {
        let cached = self.cached(r, s);
        let a = &mut self.a;
        match cached {
            Some(c) => match s {
                1 => dynasm!(a ; .arch x64 ; mov Rb(c), Rb(h)),
                2 => dynasm!(a ; .arch x64 ; mov Rw(c), Rw(h)),
                4 => dynasm!(a ; .arch x64 ; mov Rd(c), Rd(h)),
                _ => dynasm!(a ; .arch x64 ; mov Rq(c), Rq(h)),
            },
            // A 32-bit write clears bits 63:32: the whole register is stored.
            None if s == 4 => {
                dynasm!(a ; .arch x64 ; mov Rd(h), Rd(h));
                store(a, h, R12, reg_at(r, s), 8);
            }
            None => store(a, h, R12, reg_at(r, s), s),
        }
    }

    /// The host register holding guest register `r` accessed at `s` bytes (never one of
    /// AH..BH: the plan caches no register named so).
    fn cached(&self, r: u8, s: u8) -> Option<u8> {
        if s == 1 && r >= crate::exec::AH {
            return None;
        }
        self.plan.cached.get(r as usize).copied().flatten()
    }

    /// Loads every cached guest register (`reload`) or writes back those the block may
    /// have changed.
    fn sync(&mut self, reload: bool) {
        for r in 0..16u8 {
            let Some(c) = self.plan.cached[r as usize] else {
                continue;
            };
            let at = GPR + r as i32 * 8;
            if reload {
                dynasm!(self.a ; .arch x64 ; mov Rq(c), QWORD [r12 + at]);
            } else if self.plan.written & (1 << r) != 0 {
                dynasm!(self.a ; .arch x64 ; mov QWORD [r12 + at], Rq(c));
            }
        }
    }

    /// rax = the effective address of `op`'s memory operand (64-bit: `decode::ea` with
    /// an address size of 8, which masks nothing): one LEA where the base is held in a
    /// host register and the displacement fits 32 bits signed, as most are.
    fn effective_address(&mut self, i: usize) {
        let op = &self.ops[i];
        let (disp, base, index, scale) = (op.disp as i64, op.base, op.index, op.scale);
        let small = i32::try_from(disp).ok();
        let held = (base != NONE).then(|| self.cached(base, 8));
        let a = &mut self.a;
        match (held, small) {
            (Some(Some(c)), Some(d)) => dynasm!(a ; .arch x64 ; lea rax, [Rq(c) + d]),
            (Some(None), Some(d)) => {
                let at = GPR + base as i32 * 8;
                dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + at]);
                if d != 0 {
                    dynasm!(a ; .arch x64 ; add rax, d);
                }
            }
            (None, _) | (_, None) => {
                dynasm!(a ; .arch x64 ; mov rax, QWORD disp);
                match held {
                    Some(Some(c)) => dynasm!(a ; .arch x64 ; add rax, Rq(c)),
                    Some(None) => {
                        let at = GPR + base as i32 * 8;
                        dynasm!(a ; .arch x64 ; add rax, QWORD [r12 + at]);
                    }
                    None => {}
                }
            }
        }
        if index != NONE {
            let x = match self.cached(index, 8) {
                Some(c) => c,
                None => {
                    self.load_reg(1, index, 8);
                    1
                }
            };
            let a = &mut self.a;
            match scale {
                0 => dynasm!(a ; .arch x64 ; lea rax, [rax + Rq(x)]),
                1 => dynasm!(a ; .arch x64 ; lea rax, [rax + Rq(x) * 2]),
                2 => dynasm!(a ; .arch x64 ; lea rax, [rax + Rq(x) * 4]),
                _ => dynasm!(a ; .arch x64 ; lea rax, [rax + Rq(x) * 8]),
            }
        }
    }

    /// Instruction `i`'s bail in the pass being emitted: it writes the record kept when
    /// it is first asked for (before the instruction changes anything).
    fn bail(&mut self, i: usize) -> DynamicLabel {
        if let Some(l) = self.bail_of[i] {
            return l;
        }
        let label = self.a.new_dynamic_label();
        self.bail_of[i] = Some(label);
        self.bails.push(Bail {
            label,
            i,
            kept: self.kept,
        });
        label
    }

    /// rax = the host address of `op`'s memory operand for an `s`-byte access.
    fn memory(&mut self, i: usize, s: u8, write: bool) {
        self.effective_address(i);
        let seg = self.ops[i].seg as usize;
        if seg == crate::state::FS || seg == crate::state::GS {
            // The linear address is the base plus the offset (SDM vol 1 3.3.7.1);
            // `Exec::linear`'s canonical check is the one `translate` makes.
            let at = SEG + seg as i32 * SEG_SIZE + SEG_BASE;
            dynasm!(self.a ; .arch x64 ; add rax, QWORD [r12 + at]);
        }
        let need = if write {
            self.cx.need_write
        } else {
            self.cx.need_read
        };
        let bail = self.bail(i);
        translate(&mut self.a, s, need, bail);
    }

    /// Host register `h` = source `src` (memory already at rax).
    fn source(&mut self, h: u8, src: Src, s: u8) {
        match src {
            Src::Loc(Loc::Reg(r)) => self.load_reg(h, r, s),
            Src::Loc(Loc::Mem) => load(&mut self.a, h, RAX, 0, s),
            Src::Imm(v) => {
                let v = v as i64;
                dynasm!(self.a ; .arch x64 ; mov Rq(h), QWORD v);
            }
        }
    }

    /// Host register `h` = `s` bytes at `dst` (memory already at rax).
    fn store(&mut self, h: u8, dst: Loc, s: u8) {
        match dst {
            Loc::Reg(r) => self.store_reg(h, r, s),
            Loc::Mem => store(&mut self.a, h, RAX, 0, s),
        }
    }

    /// Instruction `i`'s record: kept in host registers or dropped (its plan); its kind
    /// and size are known to the instructions after it.
    fn record(&mut self, i: usize, r: Rec) {
        match self.plan.record[i] {
            Record::Kept => self.kept = Some(r),
            Record::Dead => self.kept = None,
            Record::None => {}
        }
        self.known = Some((r.f, r.s));
    }

    /// Writes the record kept in host registers into the processor's state, on a way
    /// out (the registers still hold it for the code after).
    fn put_kept(&mut self) {
        if let Some(r) = self.kept {
            put_record(&mut self.a, r);
        }
    }

    /// Host flags = guest flags where they are not: from the record kept in host
    /// registers, or the processor's state's.
    fn flags(&mut self) {
        match self.kept {
            Some(r) => flags_of_kept(&mut self.a, r),
            None => guest_flags(&mut self.a, self.known, self.cx.routine),
        }
    }

    /// The block's end at RIP `rip`.
    fn finish(&mut self, rip: u64) {
        self.put_kept();
        self.leave(Leave::At(rip));
    }

    /// The block's end at the RIP in rax, all its instructions done: into the compiled
    /// code of the block a chain names for that RIP ([`super::chain`]), if its stamp is
    /// the frame's and the frame's budget covers that block's instructions (the frame
    /// then describes that block, the cached registers written back); else back to the
    /// run loop with RIP set.
    ///
    /// A RIP known when compiling has its chain fixed ([`Exits`]): no RIP is compared.
    fn leave(&mut self, to: Leave) {
        let n = self.ops.len() as i32;
        let exit = self.exit;
        let (ret, rip) = match to {
            Leave::At(rip) => (None, Some(rip)),
            Leave::Computed { ret } => (ret, None),
        };
        let mut cold = None;
        if let Some(chains) = self.cx.chains {
            let (found, jump, go, undo, out) = (
                self.a.new_dynamic_label(),
                self.a.new_dynamic_label(),
                self.a.new_dynamic_label(),
                self.a.new_dynamic_label(),
                self.a.new_dynamic_label(),
            );
            match rip.and_then(|r| self.exits.chain_of(r)) {
                Some(k) => {
                    let at = chains as i64 + k as i64 * chain::SIZE as i64;
                    dynasm!(self.a ; .arch x64 ; mov rcx, QWORD at);
                }
                None => {
                    if let Some(r) = rip {
                        let r = r as i64;
                        dynasm!(self.a ; .arch x64 ; mov rax, QWORD r);
                    }
                    let chains = chains as i64;
                    dynasm!(self.a ; .arch x64
                        ; mov rcx, QWORD chains
                        ; cmp QWORD [rcx + chain::IP], rax ; je =>found
                        ; add rcx, chain::SIZE
                        ; cmp QWORD [rcx + chain::IP], rax ; jne =>jump
                    );
                }
            }
            // The chain, if its stamp is the frame's and its block still has its serial;
            // else the jump cache's chain for the RIP (emitted after the way out), under
            // the same checks: a chain made under an older stamp or not made yet (the
            // run loop fills the jump cache with each block it enters, and links blocks
            // more slowly).
            dynasm!(self.a ; .arch x64
                ; =>found
                ; mov rdx, QWORD [r14 + FR_STAMP] ; cmp QWORD [rcx + chain::STAMP], rdx ; jne =>jump
                ; mov rdx, QWORD [rcx + chain::BLOCK] ; mov r8, QWORD [rcx + chain::SERIAL]
                ; cmp QWORD [rdx + chain::BLOCK_SERIAL], r8 ; jne =>jump
                ; =>go
                ; sub r15, QWORD [rcx + chain::LEN] ; jb =>undo
                ; mov QWORD [r14 + FR_BLOCK], rdx
            );
            self.sync(false);
            dynasm!(self.a ; .arch x64
                ; jmp QWORD [rcx + chain::ENTRY]
                ; =>undo
                ; add r15, QWORD [rcx + chain::LEN]
                ; =>out
            );
            cold = Some((jump, go, out));
        }
        if let Some(r) = rip {
            let r = r as i64;
            dynasm!(self.a ; .arch x64 ; mov rax, QWORD r);
        }
        if let Some((by, bail)) = ret {
            let bits = (64 - crate::paging::LINEAR_BITS) as i8;
            let canonical = self.a.new_dynamic_label();
            dynasm!(self.a ; .arch x64
                ; mov rdx, rax ; shl rdx, bits ; sar rdx, bits ; cmp rdx, rax ; je =>canonical
            );
            self.move_rsp(-by);
            dynasm!(self.a ; .arch x64 ; jmp =>bail ; =>canonical);
        }
        dynasm!(self.a ; .arch x64 ; mov QWORD [r12 + RIP], rax ; mov eax, n ; jmp =>exit);
        if let Some((jump, go, out)) = cold {
            if let Some(r) = rip {
                let r = r as i64;
                dynasm!(self.a ; .arch x64 ; =>jump ; mov rax, QWORD r);
            } else {
                dynasm!(self.a ; .arch x64 ; =>jump);
            }
            // The jump cache's slot (`chain::jump_slot`).
            let mask = (chain::JUMP_ENTRIES - 1) as i32;
            dynasm!(self.a ; .arch x64
                ; mov ecx, eax ; mov edx, eax ; shr edx, 12 ; add ecx, edx
                ; and ecx, mask ; imul ecx, ecx, chain::SIZE
                ; add rcx, QWORD [r14 + FR_JUMPS]
                ; cmp QWORD [rcx + chain::IP], rax ; jne =>out
                ; mov rdx, QWORD [r14 + FR_STAMP] ; cmp QWORD [rcx + chain::STAMP], rdx ; jne =>out
                ; mov rdx, QWORD [rcx + chain::BLOCK] ; mov r8, QWORD [rcx + chain::SERIAL]
                ; cmp QWORD [rdx + chain::BLOCK_SERIAL], r8 ; jne =>out
                ; jmp =>go
            );
        }
    }

    /// A branch taken to `target`: [`Emitter::back`] when it is this block, else the
    /// block's end.
    fn taken(&mut self, target: u64) {
        if target == self.cx.block_ip {
            let back = self.back();
            dynasm!(self.a ; .arch x64 ; jmp =>back);
        } else {
            self.finish(target);
        }
    }

    /// Where a branch back to the block's top goes: the second pass of the block's code,
    /// emitted after the first, which begins with the run loop's check between linked
    /// blocks (`run::Processor::run`: the frame's budget allows another pass), its way
    /// out the block's end. Where the top may look at the record
    /// kept at the branch before the block replaces it ([`Plan::loop_reads`]), the
    /// second pass knows it is in host registers on entering it (its bails write it);
    /// the first pass is entered with it in the processor's state.
    fn back(&mut self) -> DynamicLabel {
        if let Some(again) = &self.again {
            return again.label;
        }
        let label = self.a.new_dynamic_label();
        self.again = Some(Again {
            label,
            kept: self.kept.filter(|_| self.plan.loop_reads),
            leaving: self.kept,
        });
        label
    }

    fn emit(&mut self, i: usize, kind: Kind) {
        let op = &self.ops[i];
        match kind {
            Kind::Nop => {}
            Kind::Mov { s, dst, src } => {
                if dst == Loc::Mem {
                    self.memory(i, s, true);
                } else if src == Src::Loc(Loc::Mem) {
                    self.memory(i, s, false);
                }
                // Between memory and a held register: one host move.
                let held = |r: Loc| match r {
                    Loc::Reg(r) => self.cached(r, s),
                    Loc::Mem => None,
                };
                let from = match src {
                    Src::Loc(r) => held(r),
                    Src::Imm(_) => None,
                };
                match (held(dst), from) {
                    (Some(c), None) if src == Src::Loc(Loc::Mem) => load_into(&mut self.a, c, s),
                    (None, Some(c)) if dst == Loc::Mem => store(&mut self.a, c, RAX, 0, s),
                    _ => {
                        self.source(RDX, src, s);
                        self.store(RDX, dst, s);
                    }
                }
            }
            Kind::Alu { k, s, dst, src } => {
                if dst == Loc::Mem {
                    // Read-modify-write: translated for writing before anything is read
                    // (`ops::rmw_begin`); CMP and TEST only read.
                    self.memory(i, s, k.writes());
                } else if src == Src::Loc(Loc::Mem) {
                    self.memory(i, s, false);
                }
                // The record, when it is written, needs the operands (r10, r11) and the
                // result (r9); a guest register held in a host register is computed in
                // place.
                let keep = self.plan.record[i] != Record::Dead;
                let place = match dst {
                    Loc::Reg(r) => self.cached(r, s).map(|c| (r, c)),
                    Loc::Mem => None,
                };
                let y = operand(self, R11, src, s);
                match place {
                    Some((r, c)) if k.writes() => {
                        if keep {
                            self.load_reg(R10, r, s);
                        }
                        alu(&mut self.a, k, s, c, y, false);
                        if keep && !matches!(k, Alu::Add | Alu::Sub) {
                            // Logic's result (`put_record` makes the others again).
                            self.load_reg(R9, r, s);
                        }
                    }
                    Some((_, c)) if !keep => alu(&mut self.a, k, s, c, y, true),
                    _ => {
                        self.source(R10, Src::Loc(dst), s);
                        dynasm!(self.a ; .arch x64 ; mov r9, r10);
                        alu(&mut self.a, k, s, R9, y, false);
                        if k.writes() {
                            self.store(R9, dst, s);
                        }
                    }
                }
                // Logic records no operands (`ops::arith::alu`).
                let (f, a, b) = match k {
                    Alu::Add => (FlagOp::Add, Ok(R10), y),
                    Alu::Sub | Alu::Cmp => (FlagOp::Sub, Ok(R10), y),
                    _ => (FlagOp::Logic, Err(0), Err(0)),
                };
                let keep_cf = false;
                self.record(
                    i,
                    Rec {
                        f,
                        s,
                        a,
                        b,
                        keep_cf,
                    },
                );
            }
            Kind::IncDec { dec, s, dst } => {
                // CF stays (SDM vol 2 INC, DEC): the guest's CF goes into r8 (the host's
                // CF too) before the memory operand is looked up, is kept there for the
                // record (`Flags::record_keep_cf` moves it into `bits` when it is
                // written: `put_record`), and given back to the host before it
                // increments if the lookup changed the host's flags. An INC/DEC whose
                // record is dead needs only the host's CF right for what follows.
                let keep = self.plan.record[i] != Record::Dead;
                let in_r8 = keep || dst == Loc::Mem;
                if self.plan.host_flags[i] {
                    if in_r8 {
                        dynasm!(self.a ; .arch x64 ; setc r8b);
                    }
                } else if self.kept.is_some_and(|r| r.keep_cf) {
                    dynasm!(self.a ; .arch x64 ; bt r8d, 0);
                } else {
                    self.flags();
                    if in_r8 {
                        dynasm!(self.a ; .arch x64 ; setc r8b);
                    }
                }
                if dst == Loc::Mem {
                    self.memory(i, s, true);
                    dynasm!(self.a ; .arch x64 ; bt r8d, 0);
                }
                let place = match dst {
                    Loc::Reg(r) => self.cached(r, s).map(|c| (r, c)),
                    Loc::Mem => None,
                };
                match place {
                    Some((r, c)) => {
                        if keep {
                            self.load_reg(R10, r, s);
                        }
                        inc_dec(&mut self.a, dec, s, c);
                    }
                    None => {
                        self.source(R10, Src::Loc(dst), s);
                        dynasm!(self.a ; .arch x64 ; mov r9, r10);
                        inc_dec(&mut self.a, dec, s, R9);
                        self.store(R9, dst, s);
                    }
                }
                let f = if dec { FlagOp::Dec } else { FlagOp::Inc };
                let (a, b, keep_cf) = (Ok(R10), Err(1), true);
                self.record(
                    i,
                    Rec {
                        f,
                        s,
                        a,
                        b,
                        keep_cf,
                    },
                );
            }
            Kind::Lea { s, r } => {
                self.effective_address(i);
                self.store_reg(RAX, r, s);
            }
            Kind::Shift { k, s, r, n } => self.shift(k, s, r, n),
            Kind::Extend {
                from,
                signed,
                to,
                r,
                src,
            } => {
                if src == Loc::Mem {
                    self.memory(i, from, false);
                    // Into a held register, as wide as x86 writes it: one host move.
                    if let (Some(c), 4 | 8) = (self.cached(r, to), to) {
                        extend_into(&mut self.a, c, from, signed, to);
                        return;
                    }
                }
                self.source(RDX, Src::Loc(src), from);
                let a = &mut self.a;
                if signed {
                    match from {
                        1 => dynasm!(a ; .arch x64 ; movsx rdx, dl),
                        2 => dynasm!(a ; .arch x64 ; movsx rdx, dx),
                        4 => dynasm!(a ; .arch x64 ; movsxd rdx, edx),
                        _ => {}
                    }
                }
                mask(a, RDX, to);
                self.store_reg(RDX, r, to);
            }
            Kind::Jcc { cc, target } => {
                if !self.plan.host_flags[i] {
                    self.flags();
                }
                if target == self.cx.block_ip {
                    let back = self.back();
                    jump_if(&mut self.a, cc, back);
                    self.finish(op.next);
                } else {
                    let yes = self.a.new_dynamic_label();
                    jump_if(&mut self.a, cc, yes);
                    self.finish(op.next);
                    dynasm!(self.a ; .arch x64 ; =>yes);
                    self.finish(target);
                }
            }
            Kind::Jmp { target } => self.taken(target),
            Kind::Push { r } => self.push(i, Ok(r)),
            Kind::Pop { r } => {
                self.load_reg(RAX, RSP_REG, 8);
                let bail = self.bail(i);
                translate(&mut self.a, 8, self.cx.need_read, bail);
                // RSP moves first, then the register is written: POP RSP loads the value
                // popped (SDM vol 2 POP), as `pop64` and the handler do.
                dynasm!(self.a ; .arch x64 ; mov rcx, QWORD [rax]);
                self.move_rsp(8);
                self.store_reg(RCX, r, 8);
            }
            Kind::Near { target } => {
                self.push(i, Err(op.next));
                self.taken(target);
            }
            Kind::Ret { release } => {
                self.load_reg(RAX, RSP_REG, 8);
                let bail = self.bail(i);
                translate(&mut self.a, 8, self.cx.need_read, bail);
                dynasm!(self.a ; .arch x64 ; mov rcx, QWORD [rax]);
                let by = 8 + release as i32;
                self.move_rsp(by);
                self.put_kept();
                dynasm!(self.a ; .arch x64 ; mov rax, rcx);
                self.leave(Leave::Computed {
                    ret: Some((by, bail)),
                });
            }
            Kind::Call => self.call(i),
            Kind::Branch => {
                // The handler set RIP (a canonical one, or it faulted): the block ends
                // there (the record it made is in the processor's state).
                self.call(i);
                dynasm!(self.a ; .arch x64 ; mov rax, QWORD [r12 + RIP]);
                self.leave(Leave::Computed { ret: None });
            }
        }
    }

    /// Calls the interpreter's handler for instruction `i` (`super::call_handler`), the
    /// cached registers and the kept record written back before it and the registers
    /// loaded after it; back to the run loop if it faulted, exited or ended the block.
    fn call(&mut self, i: usize) {
        let (handler, ii) = (self.cx.handler as i64, i as i32);
        self.put_kept();
        self.kept = None;
        self.sync(false);
        dynasm!(self.a ; .arch x64
            ; mov QWORD [r14 + FR_BUDGET], r15
            ; mov rdi, r14 ; mov esi, ii ; mov rax, QWORD handler ; call rax
            ; mov r15, QWORD [r14 + FR_BUDGET]
        );
        self.sync(true);
        let bail = self.bail(i);
        dynasm!(self.a ; .arch x64 ; test eax, eax ; jnz =>bail);
        // The handler may have made any lazy record.
        self.known = None;
    }

    /// Pushes guest register `Ok(r)` or the value `Err(v)` (8 bytes): memory is written
    /// before RSP changes, as `push64` does, and PUSH RSP pushes RSP as it was (SDM vol
    /// 2 PUSH).
    fn push(&mut self, i: usize, value: Result<u8, u64>) {
        self.load_reg(RAX, RSP_REG, 8);
        dynasm!(self.a ; .arch x64 ; sub rax, 8);
        let bail = self.bail(i);
        translate(&mut self.a, 8, self.cx.need_write, bail);
        match value {
            Ok(r) => self.load_reg(RCX, r, 8),
            Err(v) => {
                let v = v as i64;
                dynasm!(self.a ; .arch x64 ; mov rcx, QWORD v);
            }
        }
        dynasm!(self.a ; .arch x64 ; mov QWORD [rax], rcx);
        self.move_rsp(-8);
    }

    /// SHL, SHR or SAR of guest register `r` (`s` bytes: 4 or 8) by `n` (1 to the width
    /// less 1), and the flags `ops::shift` makes, eagerly as it does (`Flags::set_arith`
    /// replaces every arithmetic flag, so the record before is dead): CF, SF, ZF and PF
    /// the host's (the SDM's for such counts), OF as the interpreter defines it for
    /// every count (SHL: the result's top bit XOR CF; SHR: the operand's top bit; SAR:
    /// 0), AF 0.
    fn shift(&mut self, k: ShiftKind, s: u8, r: u8, n: u8) {
        let (v, held) = match self.cached(r, s) {
            Some(c) => (c, true),
            None => {
                self.load_reg(R9, r, s);
                (R9, false)
            }
        };
        let top = (s * 8 - 1) as i8;
        let n = n as i8;
        let szpc =
            (crate::flags::CF | crate::flags::PF | crate::flags::ZF | crate::flags::SF) as i32;
        let of_at = crate::flags::OF.trailing_zeros() as i8;
        let not_arith = !(crate::flags::ARITH as i32);
        let a = &mut self.a;
        match (k, s) {
            // The operand's top bit, before the shift (bits 63:32 of a held register
            // are not a 32-bit operand's).
            (ShiftKind::Shr, 4) => dynasm!(a ; .arch x64 ; mov r10d, Rd(v) ; shr r10d, top),
            (ShiftKind::Shr, _) => dynasm!(a ; .arch x64 ; mov r10, Rq(v) ; shr r10, top),
            _ => {}
        }
        match (k, s) {
            (ShiftKind::Shl, 4) => dynasm!(a ; .arch x64 ; shl Rd(v), n),
            (ShiftKind::Shl, _) => dynasm!(a ; .arch x64 ; shl Rq(v), n),
            (ShiftKind::Shr, 4) => dynasm!(a ; .arch x64 ; shr Rd(v), n),
            (ShiftKind::Shr, _) => dynasm!(a ; .arch x64 ; shr Rq(v), n),
            (ShiftKind::Sar, 4) => dynasm!(a ; .arch x64 ; sar Rd(v), n),
            (ShiftKind::Sar, _) => dynasm!(a ; .arch x64 ; sar Rq(v), n),
        }
        dynasm!(a ; .arch x64 ; pushfq ; pop r11 ; and r11d, szpc);
        match k {
            ShiftKind::Shl => dynasm!(a ; .arch x64
                ; mov r10, Rq(v) ; shr r10, top ; xor r10d, r11d ; and r10d, 1
                ; shl r10d, of_at ; or r11d, r10d
            ),
            ShiftKind::Shr => dynasm!(a ; .arch x64 ; shl r10d, of_at ; or r11d, r10d),
            ShiftKind::Sar => {}
        }
        let eager = FlagOp::Eager as u8 as i8;
        dynasm!(a ; .arch x64
            ; mov r10, QWORD [r12 + F_BITS] ; and r10, not_arith ; or r10, r11
            ; mov QWORD [r12 + F_BITS], r10 ; mov BYTE [r12 + F_OP], eager
        );
        if !held {
            self.store_reg(R9, r, s);
        }
        // The record is in the processor's state, whole.
        self.kept = None;
        self.known = Some((FlagOp::Eager, s));
    }

    /// RSP += `by` (the host's flags change).
    fn move_rsp(&mut self, by: i32) {
        match self.cached(RSP_REG, 8) {
            Some(c) => dynasm!(self.a ; .arch x64 ; add Rq(c), by),
            None => {
                let at = GPR + RSP_REG as i32 * 8;
                dynasm!(self.a ; .arch x64 ; add QWORD [r12 + at], by);
            }
        }
    }
}

/// Compiles `kinds` (the covered prefix of `ops`, a block made for `cx`): its code,
/// entered at its first byte, the offset of its chain entry (where another block's
/// code goes on into it, its frame and stack made), and its exits (whose fixed chains
/// the caller must make so).
pub fn compile(
    ops: &[Op],
    kinds: &[Kind],
    cx: Context,
) -> Result<(Vec<u8>, u16, Exits), TranslateError> {
    let mut a = assembler();
    let exit = a.new_dynamic_label();
    // Six registers saved and eight bytes more: the stack is 16-byte aligned at the
    // handler calls (System V).
    dynasm!(a ; .arch x64
        ; push rbx ; push rbp ; push r12 ; push r13 ; push r14 ; push r15 ; sub rsp, 8
        ; mov r14, rdi ; mov r12, QWORD [rdi + FR_CPU] ; mov r13, QWORD [rdi + FR_TLB]
        ; mov r15, QWORD [rdi + FR_BUDGET]
    );
    let plan = plan(ops, kinds, cx.block_ip);
    let mut e = Emitter {
        a,
        bail_of: vec![None; kinds.len()],
        bails: Vec::new(),
        exit,
        again: None,
        known: None,
        kept: None,
        cx,
        ops,
        plan,
        exits: Exits::of(ops, kinds),
    };
    let chain_entry = e.a.offset().0 as u16;
    let cx_block_ip = e.cx.block_ip;
    e.sync(true);
    e.pass(kinds);
    if let Some(again) = e.again {
        // The second pass, entered from the branch back: the run loop's checks, then
        // the block with the record kept there, if its top may look at it.
        let n = kinds.len() as i32;
        let out = e.a.new_dynamic_label();
        // Only jumps reach it: the padding is never run, and the loop starts on a
        // 32-byte line (the host fetches and caches decoded instructions by those).
        dynasm!(e.a ; .arch x64
            ; .align 32
            ; =>again.label
            ; sub r15, n ; jb =>out
        );
        e.bail_of = vec![None; kinds.len()];
        e.kept = again.kept;
        e.known = again.kept.map(|r| (r.f, r.s));
        e.pass(kinds);
        // Not this pass: the block's end, at its top, with the record of the branch back.
        dynasm!(e.a ; .arch x64 ; =>out ; add r15, n);
        e.kept = again.leaving;
        e.finish(cx_block_ip);
    }
    for b in std::mem::take(&mut e.bails) {
        dynasm!(e.a ; .arch x64 ; =>b.label);
        if let Some(r) = b.kept {
            put_record(&mut e.a, r);
        }
        let i = b.i as i32;
        dynasm!(e.a ; .arch x64 ; mov eax, i ; jmp =>exit);
    }
    dynasm!(e.a ; .arch x64 ; =>exit);
    e.sync(false);
    dynasm!(e.a ; .arch x64
        ; mov QWORD [r14 + FR_BUDGET], r15
        ; add rsp, 8 ; pop r15 ; pop r14 ; pop r13 ; pop r12 ; pop rbp ; pop rbx ; ret
    );
    let exits = e.exits;
    Ok((finish(e.a)?, chain_entry, exits))
}

impl Emitter<'_> {
    /// One pass of the covered prefix `kinds`, and its end.
    fn pass(&mut self, kinds: &[Kind]) {
        for (i, &k) in kinds.iter().enumerate() {
            self.emit(i, k);
        }
        let covered = kinds.len();
        let ends = matches!(
            kinds.last(),
            Some(
                Kind::Jcc { .. }
                    | Kind::Jmp { .. }
                    | Kind::Near { .. }
                    | Kind::Ret { .. }
                    | Kind::Branch
            )
        );
        if !ends {
            // The prefix stops before an instruction the interpreter runs (or at the end
            // of a block without a branch): RIP is set by the interpreter for the next
            // one.
            if covered == self.ops.len() {
                self.finish(self.ops[covered - 1].next);
            } else {
                self.put_kept();
                let (n, exit) = (covered as i32, self.exit);
                dynasm!(self.a ; .arch x64 ; mov eax, n ; jmp =>exit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Register};

    /// A byte access to a pool register names its low byte (BPL, SIL, DIL need a REX
    /// prefix; without one the same numbers are CH, DH, BH: SDM vol 2 table 3-1).
    #[test]
    fn byte_moves_to_pool_registers_name_their_low_bytes() {
        let want = [Register::BL, Register::BPL, Register::SIL, Register::DIL];
        for (&c, want) in super::super::plan::POOL.iter().zip(want) {
            let mut a = assembler();
            dynasm!(a ; .arch x64 ; mov Rb(c), Rb(R9) ; movzx Rd(R9), Rb(c));
            let code = finish(a).unwrap();
            let mut d = Decoder::new(64, &code, DecoderOptions::NONE);
            let first = d.decode();
            let second = d.decode();
            assert_eq!(first.op0_register(), want, "mov to pool register {c}");
            assert_eq!(second.op1_register(), want, "movzx from pool register {c}");
        }
    }
}
