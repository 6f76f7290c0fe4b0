//! Control transfers: Jcc, near and far JMP/CALL/RET, LOOPcc/JrCXZ, and the software
//! interrupts, IRET and BOUND (SDM vol 2; far and interrupt semantics in
//! `crate::segment` and `crate::interrupt`).

use super::read_rm;
use crate::decode::{ea, gpr, Cond, Handler, LoopKind, Op};
use crate::dr::Gate;
use crate::exec::{Exec, NONE};
use crate::fault::{Stop, BP, BR, DB, OF as OF_VECTOR};
use crate::flags::{mask, sext};
use crate::interrupt::{self, Source};
use crate::segment;
use iced_x86::{Code, Instruction, Mnemonic, OpKind};

fn jcc<const CC: u8>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.flags.holds::<CC>() {
        x.branch(op.target)
    } else {
        Ok(())
    }
}

pub fn compile_jcc(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    op.set_condition(Cond::of(ins.condition_code()));
    Some(super::by_condition!(jcc, op.condition()))
}

fn jmp_rel(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    x.branch(op.target)
}

fn jmp_rm(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let t = read_rm(x, op, s)?;
    x.branch(t & mask(s))
}

fn call_rel(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    check_target(x, op.target)?;
    x.push(op.next, s)?;
    x.cpu.rip = op.target;
    Ok(())
}

/// CALL rel32 in 64-bit code to a canonical target (checked when compiled: the
/// target of a block's instruction is fixed).
fn call_rel64(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    x.push64(op.next, 8)?;
    x.cpu.rip = op.target;
    Ok(())
}

/// RET in 64-bit code: a non-canonical return address is #GP(0) with the stack as
/// it was (SDM vol 2 RET, 64-bit mode).
fn ret64<const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let saved = x.cpu.gpr[4];
    let t = x.pop64(S)? & mask(S);
    if !crate::paging::canonical(t) {
        x.cpu.gpr[4] = saved;
        return Err(x.gp(0));
    }
    x.cpu.rip = t;
    if op.imm != 0 {
        x.cpu.gpr[4] = x.cpu.gpr[4].wrapping_add(op.imm);
    }
    Ok(())
}

fn call_rm(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let t = read_rm(x, op, s)? & mask(s);
    check_target(x, t)?;
    x.push(op.next, s)?;
    x.cpu.rip = t;
    Ok(())
}

/// #GP(0) for a branch target outside CS (legacy modes) or non-canonical (64-bit).
fn check_target(x: &mut Exec, t: u64) -> Result<(), Stop> {
    let rip = x.cpu.rip;
    x.branch(t)?;
    x.cpu.rip = rip;
    Ok(())
}

/// RET [imm16]: pops the return address, then releases imm16 bytes; a target outside
/// CS faults with the stack as it was.
fn ret(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let saved = x.cpu.gpr[4];
    let t = x.pop(s)? & mask(s);
    if let Err(e) = x.branch(t) {
        x.cpu.gpr[4] = saved;
        return Err(e);
    }
    if op.imm != 0 {
        let m = x.stack_mask();
        x.set_sp(x.cpu.gpr[4].wrapping_add(op.imm) & m);
    }
    Ok(())
}

fn jmp_far_direct(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    segment::far_jump(x, op.imm2 as u16, op.imm, op.size as usize)
}

fn jmp_far_mem(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let (sel, off) = far_pointer(x, op)?;
    segment::far_jump(x, sel, off, op.size as usize)
}

fn call_far_direct(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    segment::far_call(x, op.imm2 as u16, op.imm, op.size as usize, op.next)
}

fn call_far_mem(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let (sel, off) = far_pointer(x, op)?;
    segment::far_call(x, sel, off, op.size as usize, op.next)
}

fn retf(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    segment::far_return(x, op.size as usize, op.imm)
}

/// An m16:16, m16:32 or m16:64 operand: the offset, then the selector.
fn far_pointer(x: &mut Exec, op: &Op) -> Result<(u16, u64), Stop> {
    let s = op.size as usize;
    let at = ea(x, op);
    let off = x.read(op.seg as usize, at, s)?;
    let sel = x.read(
        op.seg as usize,
        at.wrapping_add(s as u64) & mask(op.asize as usize),
        2,
    )?;
    Ok((sel as u16, off))
}

pub fn compile_transfer(ins: &Instruction, op: &mut Op, bits: u32) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    let k = if ins.op_count() > 0 {
        ins.op_kind(0)
    } else {
        OpKind::Register
    };
    match m {
        M::Ret => {
            op.size = match ins.code() {
                Code::Retnw | Code::Retnw_imm16 => 2,
                Code::Retnd | Code::Retnd_imm16 => 4,
                _ => 8,
            };
            op.imm = if ins.op_count() > 0 {
                ins.immediate16() as u64
            } else {
                0
            };
            Some(match (bits, op.size) {
                (64, 8) => ret64::<8>,
                (64, 2) => ret64::<2>,
                _ => ret,
            })
        }
        M::Retf => {
            op.size = match ins.code() {
                Code::Retfw | Code::Retfw_imm16 => 2,
                Code::Retfd | Code::Retfd_imm16 => 4,
                _ => 8,
            };
            op.imm = if ins.op_count() > 0 {
                ins.immediate16() as u64
            } else {
                0
            };
            Some(retf)
        }
        M::Jmp | M::Call => {
            let call = m == M::Call;
            match k {
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                    op.size = match k {
                        OpKind::NearBranch16 => 2,
                        OpKind::NearBranch32 => 4,
                        _ => 8,
                    };
                    let flat = bits == 64 && op.size == 8 && crate::paging::canonical(op.target);
                    Some(match (call, flat) {
                        (true, true) => call_rel64,
                        (true, false) => call_rel,
                        _ => jmp_rel,
                    })
                }
                OpKind::FarBranch16 | OpKind::FarBranch32 => {
                    op.size = if k == OpKind::FarBranch16 { 2 } else { 4 };
                    op.imm = if k == OpKind::FarBranch16 {
                        ins.far_branch16() as u64
                    } else {
                        ins.far_branch32() as u64
                    };
                    op.imm2 = ins.far_branch_selector() as u64;
                    Some(if call {
                        call_far_direct
                    } else {
                        jmp_far_direct
                    })
                }
                OpKind::Memory if is_far(ins) => {
                    op.size = (ins.memory_size().size() - 2) as u8;
                    op.rm = NONE;
                    Some(if call { call_far_mem } else { jmp_far_mem })
                }
                _ => {
                    op.size = crate::decode::op_size(ins, 0) as u8;
                    if k == OpKind::Register {
                        op.rm = gpr(ins.op_register(0));
                    } else {
                        op.rm = NONE;
                    }
                    Some(if call { call_rm } else { jmp_rm })
                }
            }
        }
        _ => None,
    }
}

fn is_far(ins: &Instruction) -> bool {
    matches!(
        ins.code(),
        Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664
    )
}

// ---- LOOPcc, JrCXZ -----------------------------------------------------------------

fn loop_op(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let m = mask(op.asize as usize);
    let rcx = x.cpu.gpr[1];
    let taken = if op.loop_kind() == LoopKind::Jcxz {
        rcx & m == 0
    } else {
        let c = rcx.wrapping_sub(1) & m;
        let zf = x.cpu.flags.zf();
        let taken = c != 0
            && match op.loop_kind() {
                LoopKind::Loope => zf,
                LoopKind::Loopne => !zf,
                LoopKind::Loop | LoopKind::Jcxz => true,
            };
        if taken {
            // Check the target before the counter changes: a fault leaves it as it was.
            check_target(x, op.target)?;
        }
        x.cpu.gpr[1] = (rcx & !m) | c;
        taken
    };
    if taken {
        x.branch(op.target)
    } else {
        Ok(())
    }
}

pub fn compile_loop(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Code::*;
    op.set_loop_kind(match ins.mnemonic() {
        Mnemonic::Loop => LoopKind::Loop,
        Mnemonic::Loope => LoopKind::Loope,
        Mnemonic::Loopne => LoopKind::Loopne,
        _ => LoopKind::Jcxz,
    });
    op.asize = match ins.code() {
        Loopne_rel8_16_CX | Loopne_rel8_32_CX | Loope_rel8_16_CX | Loope_rel8_32_CX
        | Loop_rel8_16_CX | Loop_rel8_32_CX | Jcxz_rel8_16 | Jcxz_rel8_32 => 2,
        Loopne_rel8_16_ECX | Loopne_rel8_32_ECX | Loopne_rel8_64_ECX | Loope_rel8_16_ECX
        | Loope_rel8_32_ECX | Loope_rel8_64_ECX | Loop_rel8_16_ECX | Loop_rel8_32_ECX
        | Loop_rel8_64_ECX | Jecxz_rel8_16 | Jecxz_rel8_32 | Jecxz_rel8_64 => 4,
        _ => 8,
    };
    Some(loop_op)
}

// ---- interrupts ---------------------------------------------------------------------

/// INT n: a software interrupt (in V86 mode with IOPL < 3, #GP(0)).
fn int_n(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.v86() && x.cpu.iopl() < 3 {
        return Err(x.gp(0));
    }
    interrupt::deliver(x, op.imm as u8, None, Source::Software, op.next)?;
    x.gate = Gate::Software;
    Ok(())
}

/// INT3: #BP as a trap, RIP after it; no IOPL check in V86 mode.
fn int3(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    interrupt::deliver(x, BP, None, Source::Int3, op.next)?;
    x.gate = Gate::Software;
    Ok(())
}

/// INTO: #OF when OF is set.
fn into(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.flags.of() {
        interrupt::deliver(x, OF_VECTOR, None, Source::Int3, op.next)?;
        x.gate = Gate::Software;
        Ok(())
    } else {
        Ok(())
    }
}

/// INT1 (ICEBP): a #DB delivered as a hardware event would be (privileged software
/// exception: no DPL check).
fn int1(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    interrupt::deliver(x, DB, None, Source::Icebp, op.next)?;
    x.gate = Gate::Icebp;
    Ok(())
}

fn iret(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    interrupt::iret(x, op.size as usize)
}

/// BOUND r, m16&16 / m32&32: #BR unless lower <= r <= upper (signed).
fn bound(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let at = ea(x, op);
    let lower = x.read(op.seg as usize, at, s)?;
    let upper = x.read(
        op.seg as usize,
        at.wrapping_add(s as u64) & mask(op.asize as usize),
        s,
    )?;
    let v = sext(x.reg(op.r, s), s) as i64;
    if v < sext(lower, s) as i64 || v > sext(upper, s) as i64 {
        return Err(x.raise(BR, None));
    }
    Ok(())
}

pub fn compile_interrupt(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    Some(match ins.mnemonic() {
        M::Int => {
            op.imm = ins.immediate8() as u64;
            int_n
        }
        M::Int3 => int3,
        M::Into => into,
        M::Int1 => int1,
        M::Iret | M::Iretd | M::Iretq => {
            op.size = match ins.mnemonic() {
                M::Iret => 2,
                M::Iretd => 4,
                _ => 8,
            };
            iret
        }
        _ => {
            if ins.op_kind(1) != OpKind::Memory {
                return Some(crate::decode::invalid);
            }
            bound
        }
    })
}
