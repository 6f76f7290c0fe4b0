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

mod asm;
mod exit;
mod record;

use asm::*;
pub use exit::check_routine;
pub use exit::Exits;
use exit::*;
pub use record::flags_routine;
use record::*;

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

/// The compiled function: returns how many instructions of the block it ended in
/// completed in that block's last pass (`Frame::retired` counts the whole blocks and
/// passes before it).
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
const FR_EPOCH: i32 = offset_of!(Frame, epoch) as i32;

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
    /// The address of [`check_routine`]'s code.
    pub check_routine: usize,
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
            Kind::Not { s, dst } => {
                // Read-modify-write: translated for writing first (`ops::rmw_begin`).
                if dst == Loc::Mem {
                    self.memory(i, s, true);
                }
                let held = match dst {
                    Loc::Reg(r) => self.cached(r, s),
                    Loc::Mem => None,
                };
                match held {
                    Some(c) => not(&mut self.a, s, c),
                    None => {
                        self.source(RDX, Src::Loc(dst), s);
                        not(&mut self.a, s, RDX);
                        self.store(RDX, dst, s);
                    }
                }
            }
            Kind::Setcc { cc, r } => {
                if !self.plan.host_flags[i] {
                    self.flags();
                }
                set_if(&mut self.a, cc, RDX);
                self.store_reg(RDX, r, 1);
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
                self.stack(i, false);
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
                let bail = self.stack(i, false);
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
        self.stack(i, true);
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

    /// rax = the host address of the stack's 8 bytes instruction `i` pops (at RSP), or
    /// pushes (`push`: 8 bytes below); else to its bail, which is returned.
    fn stack(&mut self, i: usize, push: bool) -> DynamicLabel {
        self.load_reg(RAX, RSP_REG, 8);
        let need = if push {
            dynasm!(self.a ; .arch x64 ; sub rax, 8);
            self.cx.need_write
        } else {
            self.cx.need_read
        };
        let bail = self.bail(i);
        translate(&mut self.a, 8, need, bail);
        bail
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
