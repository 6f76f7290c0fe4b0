//! What the emitter decides for a whole block before it emits a byte: which guest
//! registers live in host registers while the block runs, where the host's flags are
//! the guest's, and which lazy-flags records must reach the processor's state.
//!
//! The processor's state must be the interpreter's only where something can look at it:
//! when compiled code returns (at a block's end, or a *bail* before an instruction that
//! the interpreter then runs: `super::emit`) and when it calls an interpreter's handler.
//! Between those points a guest register may live in a host register, and a lazy-flags
//! record ([`crate::flags::Flags`]) stays in host registers (the emitter writes it
//! where something looks: [`super::emit`]); one that a later instruction replaces
//! before anything can look at it is not kept at all (QEMU's TCG drops such dead flag
//! computations too: its liveness pass over `cc_op`).

use super::cover::{Kind, Loc, Src};
use crate::decode::Op;
use crate::exec::{AH, NONE};

/// RSP's register number (SDM vol 2 table 3-1).
const RSP: u8 = 4;

/// Host registers that hold guest registers: callee-saved or unused by the emitted
/// code otherwise (rbx, rbp, rsi, rdi). The emitted code saves the callee-saved ones;
/// rsi and rdi are written back before and reloaded after a handler call.
pub const POOL: [u8; 4] = [3, 5, 6, 7];

/// What becomes of the lazy-flags record an instruction makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// The instruction makes none.
    None,
    /// Kept (in host registers) until it is replaced: something may look at it first.
    Kept,
    /// Replaced before anything can look at it: neither kept nor written.
    Dead,
}

/// The plan of a block's covered prefix.
#[derive(Debug)]
pub struct Plan {
    /// Guest register (0..15) → the host register holding it while the block runs.
    pub cached: [Option<u8>; 16],
    /// Cached guest registers the block may write (a bit each): written back when the
    /// compiled code returns or calls a handler.
    pub written: u16,
    /// Per instruction: the host's arithmetic flags are the guest's when it starts.
    pub host_flags: Vec<bool>,
    /// Per instruction: its record.
    pub record: Vec<Record>,
    /// The block branches back to its top, and something there may look at the record
    /// kept at the branch before the block replaces it.
    pub loop_reads: bool,
}

/// The guest registers an instruction's operands name: (register, accessed as AH..BH).
fn registers(op: &Op, kind: Kind, mut each: impl FnMut(u8, bool)) {
    let mut reg = |r: u8, s: u8| {
        if s == 1 && r >= AH && r != NONE {
            each(r - AH, true);
        } else if r < 16 {
            each(r, false);
        }
    };
    let address = |each: &mut dyn FnMut(u8, u8)| {
        if op.base != NONE {
            each(op.base, 8);
        }
        if op.index != NONE {
            each(op.index, 8);
        }
    };
    let rsp = RSP;
    match kind {
        Kind::Mov { s, dst, src } | Kind::Alu { s, dst, src, .. } => {
            if let Loc::Reg(r) = dst {
                reg(r, s);
            }
            if let Src::Loc(Loc::Reg(r)) = src {
                reg(r, s);
            }
            if dst == Loc::Mem || src == Src::Loc(Loc::Mem) {
                address(&mut reg);
            }
        }
        Kind::IncDec { s, dst, .. } | Kind::Not { s, dst } => match dst {
            Loc::Reg(r) => reg(r, s),
            Loc::Mem => address(&mut reg),
        },
        Kind::Setcc { r, .. } => reg(r, 1),
        Kind::Lea { r, .. } => {
            reg(r, 8);
            address(&mut reg);
        }
        Kind::Shift { r, s, .. } => reg(r, s),
        Kind::Extend { from, r, src, .. } => {
            reg(r, 8);
            match src {
                Loc::Reg(x) => reg(x, from),
                Loc::Mem => address(&mut reg),
            }
        }
        Kind::Push { r } | Kind::Pop { r } => {
            reg(r, 8);
            reg(rsp, 8);
        }
        Kind::Near { .. } | Kind::Ret { .. } => reg(rsp, 8),
        Kind::Nop | Kind::Jcc { .. } | Kind::Jmp { .. } | Kind::Call | Kind::Branch => {}
    }
}

/// The guest register an instruction writes, if it writes one the emitter does itself.
fn destination(kind: Kind) -> Option<u8> {
    match kind {
        Kind::Mov {
            s,
            dst: Loc::Reg(r),
            ..
        }
        | Kind::IncDec {
            s,
            dst: Loc::Reg(r),
            ..
        }
        | Kind::Not {
            s,
            dst: Loc::Reg(r),
        } => (!(s == 1 && r >= AH)).then_some(r),
        Kind::Setcc { r, .. } => (r < AH).then_some(r),
        Kind::Alu {
            k,
            s,
            dst: Loc::Reg(r),
            ..
        } if k.writes() => (!(s == 1 && r >= AH)).then_some(r),
        Kind::Lea { r, .. } | Kind::Extend { r, .. } | Kind::Pop { r } | Kind::Shift { r, .. } => {
            Some(r)
        }
        _ => None,
    }
}

/// Whether the instruction's code may return before it (a *bail*: a memory operand or
/// a stack access through the TLB) or calls a handler: the processor's state must be
/// whole there.
fn looks(kind: Kind) -> bool {
    match kind {
        Kind::Mov { dst, src, .. } | Kind::Alu { dst, src, .. } => {
            dst == Loc::Mem || src == Src::Loc(Loc::Mem)
        }
        Kind::IncDec { dst, .. } | Kind::Not { dst, .. } => dst == Loc::Mem,
        Kind::Extend { src, .. } => src == Loc::Mem,
        Kind::Push { .. } | Kind::Pop { .. } | Kind::Near { .. } | Kind::Ret { .. } => true,
        Kind::Call | Kind::Branch | Kind::Jmp { .. } => true,
        Kind::Nop
        | Kind::Lea { .. }
        | Kind::Jcc { .. }
        | Kind::Shift { .. }
        | Kind::Setcc { .. } => false,
    }
}

/// Whether the instruction's code leaves the host's flags as they were: it computes
/// nothing with them (no memory operand, whose address and TLB lookup do).
fn keeps_host_flags(kind: Kind) -> bool {
    match kind {
        // SETcc leaves them (the guest's, where the record was made host flags first).
        Kind::Nop | Kind::Setcc { .. } => true,
        Kind::Mov { dst, src, .. } => dst != Loc::Mem && src != Src::Loc(Loc::Mem),
        Kind::Not { dst, .. } => dst != Loc::Mem,
        Kind::Extend { src, .. } => src != Loc::Mem,
        _ => false,
    }
}

/// Whether the instruction makes a lazy-flags record the emitter writes (`emit`'s ALU
/// and INC/DEC), after which the host's flags are the guest's.
fn makes_record(kind: Kind) -> bool {
    matches!(kind, Kind::Alu { .. } | Kind::IncDec { .. })
}

/// Whether the instruction replaces the lazy-flags record without reading it: with
/// one it makes (ALU, INC/DEC), or with a shift's flags, written eagerly into the
/// processor's state (`emit`'s `shift`, as `Flags::set_arith` does).
fn replaces_record(kind: Kind) -> bool {
    makes_record(kind) || matches!(kind, Kind::Shift { .. })
}

/// Whether instruction `j` (host flags the guest's at its start when `live`) may look
/// at the record in the processor's state before it makes its own: a bail or a
/// handler call, INC/DEC reading CF, or a Jcc or SETcc reading the flags from it.
fn reads_record(kind: Kind, live: bool) -> bool {
    looks(kind)
        || (!live
            && matches!(
                kind,
                Kind::IncDec { .. } | Kind::Jcc { .. } | Kind::Setcc { .. }
            ))
}

/// Whether the record is replaced, going from instruction `from` on, before anything
/// looks at it; `None` when the block's covered prefix ends first.
fn replaced_from(kinds: &[Kind], live: &[bool], from: usize) -> Option<bool> {
    for (j, &k) in kinds.iter().enumerate().skip(from) {
        if reads_record(k, live[j]) {
            return Some(false);
        }
        if replaces_record(k) {
            return Some(true);
        }
    }
    None
}

/// The plan for `kinds`, the covered prefix of `ops` (a block starting at `block_ip`).
pub fn plan(ops: &[Op], kinds: &[Kind], block_ip: u64) -> Plan {
    let n = kinds.len();
    let whole = n == ops.len();
    let loops = whole
        && matches!(kinds.last(), Some(Kind::Jcc { target, .. } | Kind::Jmp { target }) if *target == block_ip);

    // Host flags: the guest's after an ALU or INC/DEC, as long as nothing computes.
    let mut host_flags = vec![false; n];
    for j in 1..n {
        host_flags[j] =
            makes_record(kinds[j - 1]) || (host_flags[j - 1] && keeps_host_flags(kinds[j - 1]));
    }

    let record = (0..n)
        .map(|i| {
            if !makes_record(kinds[i]) {
                Record::None
            } else if replaced_from(kinds, &host_flags, i + 1) == Some(true) {
                Record::Dead
            } else {
                Record::Kept
            }
        })
        .collect();
    // Back at the top the host's flags are not the guest's (`host_flags[0]`).
    let loop_reads = loops && replaced_from(kinds, &host_flags, 0) != Some(true);

    // Guest registers by uses; those named as AH..BH stay in the processor's state.
    let mut uses = [0u32; 16];
    let mut high = 0u16;
    let mut written = 0u16;
    for (op, &k) in ops.iter().zip(kinds) {
        registers(op, k, |r, h| {
            uses[r as usize] += 1;
            if h {
                high |= 1 << r;
            }
        });
        if let Some(r) = destination(k) {
            written |= 1 << r;
        }
        if matches!(
            k,
            Kind::Push { .. } | Kind::Pop { .. } | Kind::Near { .. } | Kind::Ret { .. }
        ) {
            written |= 1 << RSP;
        }
    }
    let least = if loops { 1 } else { 2 };
    let mut order: Vec<u8> = (0..16u8)
        .filter(|&r| uses[r as usize] >= least && high & (1 << r) == 0)
        .collect();
    order.sort_by_key(|&r| std::cmp::Reverse(uses[r as usize]));
    let mut cached = [None; 16];
    for (&r, &h) in order.iter().zip(POOL.iter()) {
        cached[r as usize] = Some(h);
    }
    let cached_bits = (0..16)
        .filter(|&r| cached[r].is_some())
        .fold(0u16, |b, r| b | 1 << r);
    Plan {
        cached,
        written: written & cached_bits,
        host_flags,
        record,
        loop_reads,
    }
}
