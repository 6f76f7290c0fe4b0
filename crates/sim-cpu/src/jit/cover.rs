//! What the translator covers: each compiled instruction ([`Op`]) of 64-bit code that
//! it can execute itself, as a [`Kind`] with its operands; everything else ends the
//! compiled prefix of a block and runs in the interpreter.
//!
//! Covered: MOV (register, immediate, memory; not the segment, control and debug
//! register forms), ADD/OR/AND/SUB/XOR/CMP/TEST in every form, INC/DEC, LEA,
//! MOVZX/MOVSX/MOVSXD, NOP, and a near JMP or Jcc with a canonical target (a block's
//! last instruction). Operand sizes 1, 2, 4 and 8 (AH..BH included); memory operands
//! with 64-bit addresses through DS, ES, SS or CS (flat in 64-bit mode, SDM vol 1
//! 3.3.7.1: no base, no limit; FS and GS, with a base, stay interpreted). A LOCK prefix
//! leaves an instruction to the interpreter, and so do ADC and SBB (their carry in).

use crate::decode::Op;
use crate::exec::NONE;
use crate::ops::{form, Form};
use crate::paging::canonical;
use crate::state::{FS, GS};
use iced_x86::{Mnemonic, OpKind};

/// A covered binary operation (SDM vol 2, each instruction's "Operation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alu {
    Add,
    Or,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
}

impl Alu {
    /// Whether the result is written back (CMP and TEST only set flags).
    pub fn writes(self) -> bool {
        !matches!(self, Alu::Cmp | Alu::Test)
    }
}

/// Where an operand lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// A register encoding (0..15, or 16..19 for AH..BH at size 1).
    Reg(u8),
    /// The instruction's memory operand.
    Mem,
}

/// A source operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    Loc(Loc),
    /// Already masked or sign-extended to the operand size by the decoder.
    Imm(u64),
}

/// One covered instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nop,
    Mov {
        s: u8,
        dst: Loc,
        src: Src,
    },
    Alu {
        k: Alu,
        s: u8,
        dst: Loc,
        src: Src,
    },
    IncDec {
        dec: bool,
        s: u8,
        dst: Loc,
    },
    Lea {
        s: u8,
        r: u8,
    },
    Extend {
        from: u8,
        signed: bool,
        to: u8,
        r: u8,
        src: Loc,
    },
    Jcc {
        cc: u8,
        target: u64,
    },
    Jmp {
        target: u64,
    },
}

fn sized(s: u8) -> bool {
    matches!(s, 1 | 2 | 4 | 8)
}

/// Every register operand is a general-purpose register.
fn gprs_only(op: &Op) -> bool {
    let ins = &op.ins;
    (0..ins.op_count())
        .filter(|&i| ins.op_kind(i) == OpKind::Register)
        .all(|i| ins.op_register(i).is_gpr())
}

/// The memory operand's address is one the compiled code can form: 64-bit, through a
/// segment with no base in 64-bit mode.
fn flat_memory(op: &Op) -> bool {
    let seg = op.seg as usize;
    op.asize == 8 && seg != FS && seg != GS
}

/// The covered form of `op` in 64-bit code, if it is one.
pub fn classify(op: &Op) -> Option<Kind> {
    use Mnemonic as M;
    let ins = &op.ins;
    if op.lock || ins.is_invalid() {
        return None;
    }
    let m = ins.mnemonic();
    if m == M::Nop {
        return Some(Kind::Nop);
    }
    if ins.is_jcc_short_or_near() {
        return canonical(op.target).then_some(Kind::Jcc {
            cc: op.condition() as u8,
            target: op.target,
        });
    }
    if ins.is_jmp_short_or_near() {
        return canonical(op.target).then_some(Kind::Jmp { target: op.target });
    }
    if !gprs_only(op) {
        return None;
    }
    let has_mem = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
    if has_mem && !flat_memory(op) {
        return None;
    }
    let s = op.size;
    let kind = match m {
        M::Mov | M::Add | M::Or | M::And | M::Sub | M::Xor | M::Cmp | M::Test => {
            if !sized(s) {
                return None;
            }
            let (dst, src) = match form(ins) {
                Form::RegReg => (Loc::Reg(op.r), Src::Loc(Loc::Reg(op.rm))),
                Form::RegMem => (Loc::Reg(op.r), Src::Loc(Loc::Mem)),
                Form::MemReg => (Loc::Mem, Src::Loc(Loc::Reg(op.r))),
                Form::RegImm => (Loc::Reg(op.r), Src::Imm(op.imm)),
                Form::MemImm => (Loc::Mem, Src::Imm(op.imm)),
            };
            if dst == Loc::Reg(NONE) || src == Src::Loc(Loc::Reg(NONE)) {
                return None;
            }
            let k = match m {
                M::Mov => return Some(Kind::Mov { s, dst, src }),
                M::Add => Alu::Add,
                M::Or => Alu::Or,
                M::And => Alu::And,
                M::Sub => Alu::Sub,
                M::Xor => Alu::Xor,
                M::Cmp => Alu::Cmp,
                _ => Alu::Test,
            };
            Kind::Alu { k, s, dst, src }
        }
        M::Inc | M::Dec => {
            let dst = if ins.op_kind(0) == OpKind::Memory {
                Loc::Mem
            } else {
                Loc::Reg(op.r)
            };
            if !sized(s) || dst == Loc::Reg(NONE) {
                return None;
            }
            Kind::IncDec {
                dec: m == M::Dec,
                s,
                dst,
            }
        }
        M::Lea => {
            // The address is formed at the address size (8 here) and truncated to the
            // operand size (SDM vol 2 LEA, table 3-54).
            if !matches!(s, 2 | 4 | 8) || op.r == NONE || op.asize != 8 {
                return None;
            }
            Kind::Lea { s, r: op.r }
        }
        M::Movzx | M::Movsx | M::Movsxd => {
            let from = crate::decode::op_size(ins, 1) as u8;
            let src = if ins.op_kind(1) == OpKind::Memory {
                Loc::Mem
            } else {
                Loc::Reg(op.rm)
            };
            if !sized(from) || !matches!(s, 2 | 4 | 8) || op.r == NONE || src == Loc::Reg(NONE) {
                return None;
            }
            Kind::Extend {
                from,
                signed: m != M::Movzx,
                to: s,
                r: op.r,
                src,
            }
        }
        _ => return None,
    };
    Some(kind)
}
