//! What the translator covers: each compiled instruction ([`Op`]) of 64-bit code that
//! it can execute itself, as a [`Kind`] with its operands; everything else ends the
//! compiled prefix of a block and runs in the interpreter.
//!
//! Covered: MOV (register, immediate, memory; not the segment, control and debug
//! register forms), ADD/OR/AND/SUB/XOR/CMP/TEST in every form, INC/DEC, LEA,
//! MOVZX/MOVSX/MOVSXD, NOT, SETcc of a byte register, NOP, PUSH and POP of a 64-bit
//! register, and a near JMP, Jcc or CALL with a canonical target or a near RET (a
//! block's last instruction). Operand
//! sizes 1, 2, 4 and 8 (AH..BH included); memory operands with 64-bit addresses (SDM
//! vol 1 3.3.7.1: DS, ES, SS and CS are flat in 64-bit mode, FS and GS add their base;
//! no limit is checked).
//!
//! Other instructions that only compute on registers, flags and memory, and may fault
//! but change nothing else the run loop looks after (shifts and rotates, CMOVcc,
//! ADC/SBB, NEG, SETcc of memory, multiplies and divides, bit scans and tests, XCHG,
//! the sign extensions of rAX, the flag instructions, LEAVE, the other PUSH and POP
//! forms, RDTSC and RDTSCP, IN and OUT, which only exit, and the covered mnemonics'
//! forms compiled code does not do itself) are [`Kind::Call`]ed:
//! the compiled code calls the interpreter's own handler for them, exactly as the run
//! loop would; so it does for a near CALL or JMP through a register or memory at a
//! block's end ([`Kind::Branch`]), for the string instructions but INS and OUTS (REP
//! or not: the handler's batches end the block as in the interpreter, and its elements
//! count towards the poll), and for every LOCKed form of those (the handler is the
//! plain read-modify-write, or #UD where LOCK is not allowed: the sim's processors run
//! one at a time, so the interpreter's LOCK is no more).

use crate::decode::Op;
use crate::exec::NONE;
use crate::ops::{form, Form};
use crate::paging::canonical;
use iced_x86::{Mnemonic, OpKind};

/// A covered shift (SDM vol 2 SAL/SAR/SHL/SHR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShiftKind {
    Shl,
    Shr,
    Sar,
}

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
    /// SHL/SAL, SHR or SAR of a 32- or 64-bit register by a constant count, masked
    /// and not 0 (the flags are then the interpreter's eager ones: `ops::shift`).
    Shift {
        k: ShiftKind,
        s: u8,
        r: u8,
        n: u8,
    },
    /// NOT of a register or the memory operand (no flags).
    Not {
        s: u8,
        dst: Loc,
    },
    /// SETcc of a byte register (0..15, or 16..19 for AH..BH).
    Setcc {
        cc: u8,
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
    /// PUSH of a 64-bit register.
    Push {
        r: u8,
    },
    /// POP into a 64-bit register.
    Pop {
        r: u8,
    },
    /// CALL rel32 with a 64-bit operand size (a block's last instruction).
    Near {
        target: u64,
    },
    /// RET [imm16] with a 64-bit operand size (a block's last instruction).
    Ret {
        release: u64,
    },
    /// The interpreter's handler, called from compiled code.
    Call,
    /// The interpreter's handler of a near CALL or JMP through a register or memory (a
    /// block's last instruction), which sets RIP.
    Branch,
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

/// The memory operand's address is one the compiled code can form: 64-bit (through any
/// segment: FS and GS add their base).
fn flat_memory(op: &Op) -> bool {
    op.asize == 8
}

/// Whether the interpreter's handler of `op` may be called from compiled code: it reads
/// and writes registers, flags and memory only, through `Exec` as the run loop's plain
/// path calls it (no branch, no change of mode, privilege, interrupt state or the
/// debug registers; a port or a device reached only by an exit), so that after it
/// returns the compiled code may go on, or return to the run loop with the handler's
/// fault, exit or end of block.
fn callable(op: &Op) -> bool {
    use Mnemonic as M;
    let ins = &op.ins;
    if ins.is_jcc_short_or_near() || ins.is_jmp_short_or_near() {
        return false;
    }
    let any = matches!(
        ins.mnemonic(),
        M::Shl
            | M::Sal
            | M::Shr
            | M::Sar
            | M::Rol
            | M::Ror
            | M::Rcl
            | M::Rcr
            | M::Shld
            | M::Shrd
            | M::Not
            | M::Neg
            | M::Adc
            | M::Sbb
            | M::Imul
            | M::Mul
            | M::Div
            | M::Idiv
            | M::Bswap
            | M::Bt
            | M::Bts
            | M::Btr
            | M::Btc
            | M::Bsf
            | M::Bsr
            | M::Xchg
            | M::Xadd
            | M::Cmpxchg
            | M::Cbw
            | M::Cwde
            | M::Cdqe
            | M::Cwd
            | M::Cdq
            | M::Cqo
            | M::Clc
            | M::Stc
            | M::Cmc
            | M::Cld
            | M::Std
            | M::Lahf
            | M::Sahf
            | M::Leave
            | M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg
            | M::Tzcnt
            | M::Lzcnt
            | M::Popcnt
            | M::Cmpxchg8b
            | M::Cmpxchg16b
            | M::Pushfq
            | M::Prefetchw
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchnta
            // The TSC the handler reads is the one the run loop would have set.
            | M::Rdtsc
            | M::Rdtscp
            // IN and OUT touch no port: their handler checks the I/O permission (a
            // #GP) and exits, and the VMM completes them, as for a MOV to a device. A
            // block's compiled prefix no longer stops at them (an entry that a port
            // exit ends at once rests in the interpreter: `jit::idle_entry`).
            | M::In
            | M::Out
    ) || is_setcc(ins.mnemonic());
    // The string instructions but INS and OUTS, which exit (iced's test: MOVSD and
    // CMPSD also name SSE forms).
    let string = ins.is_string_instruction()
        && !matches!(
            ins.mnemonic(),
            M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd
        );
    // The covered mnemonics and PUSH/POP, in forms not compiled (32-bit addresses,
    // 16-bit stack operands, PUSH imm, POP to memory), on general registers only (not
    // MOV to or from a segment, control or debug register, not POP SS or FS).
    let plain = matches!(
        ins.mnemonic(),
        M::Mov
            | M::Add
            | M::Or
            | M::And
            | M::Sub
            | M::Xor
            | M::Cmp
            | M::Test
            | M::Inc
            | M::Dec
            | M::Lea
            | M::Movzx
            | M::Movsx
            | M::Movsxd
            | M::Push
            | M::Pop
    ) && gprs_only(op);
    (any && gprs_only(op)) || plain || string
}

/// The covered form of `op` in 64-bit code, if it is one.
pub fn classify(op: &Op) -> Option<Kind> {
    let ins = &op.ins;
    if ins.is_invalid() {
        return None;
    }
    if op.lock {
        return callable(op).then_some(Kind::Call);
    }
    native(op)
        .or_else(|| callable(op).then_some(Kind::Call))
        .or_else(|| indirect(op).then_some(Kind::Branch))
}

/// Whether `m` is one of the SETcc mnemonics (SDM vol 2 SETcc).
fn is_setcc(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg
    )
}

/// A near CALL or JMP through a general register or memory: its handler reads the
/// target, checks it and (CALL) pushes the return address, as the interpreter's does.
fn indirect(op: &Op) -> bool {
    let ins = &op.ins;
    (ins.is_call_near_indirect() || ins.is_jmp_near_indirect()) && gprs_only(op)
}

/// The form of `op` compiled code does itself, if it is one.
fn native(op: &Op) -> Option<Kind> {
    use Mnemonic as M;
    let ins = &op.ins;
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
    if ins.is_call_near() {
        return (op.size == 8 && canonical(op.target)).then_some(Kind::Near { target: op.target });
    }
    if m == M::Ret && ins.op_count() <= 1 {
        return (op.size == 8).then_some(Kind::Ret { release: op.imm });
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
        M::Inc | M::Dec | M::Not => {
            let dst = if ins.op_kind(0) == OpKind::Memory {
                Loc::Mem
            } else {
                Loc::Reg(op.r)
            };
            if !sized(s) || dst == Loc::Reg(NONE) {
                return None;
            }
            if m == M::Not {
                return Some(Kind::Not { s, dst });
            }
            Kind::IncDec {
                dec: m == M::Dec,
                s,
                dst,
            }
        }
        _ if is_setcc(m) => {
            // A register only (the handler writes memory, with its faults).
            if ins.op_kind(0) != OpKind::Register || op.rm == NONE {
                return None;
            }
            Kind::Setcc {
                cc: op.condition() as u8,
                r: op.rm,
            }
        }
        M::Push | M::Pop => {
            if s != 8 || ins.op_count() != 1 || ins.op_kind(0) != OpKind::Register {
                return None;
            }
            let r = crate::decode::gpr(ins.op_register(0));
            if r > 15 {
                return None;
            }
            if m == M::Push {
                Kind::Push { r }
            } else {
                Kind::Pop { r }
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
        M::Shl | M::Sal | M::Shr | M::Sar => {
            // Constant counts on 32- and 64-bit registers, where the host's shift
            // sets CF, SF, ZF and PF as the SDM defines them for every count the
            // processor uses (masked to 5 or 6 bits, below the width).
            let n = match op.count() {
                crate::decode::Count::One => 1,
                crate::decode::Count::Imm => op.imm,
                crate::decode::Count::Cl => return None,
            } & if s == 8 { 0x3f } else { 0x1f };
            if !matches!(s, 4 | 8) || n == 0 || ins.op_kind(0) != OpKind::Register || op.r == NONE {
                return None;
            }
            let k = match m {
                M::Shr => ShiftKind::Shr,
                M::Sar => ShiftKind::Sar,
                _ => ShiftKind::Shl,
            };
            Kind::Shift {
                k,
                s,
                r: op.r,
                n: n as u8,
            }
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
