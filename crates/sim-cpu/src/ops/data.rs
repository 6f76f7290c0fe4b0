//! Data movement: MOV (general, immediate, moffs, segment registers), MOVZX/MOVSX/
//! MOVSXD, LEA, XCHG, XADD, CMPXCHG(8B/16B), conversions, LAHF/SAHF, XLAT, far-pointer
//! loads, SETcc, CMOVcc, the NOPs (SDM vol 2).

use super::{form, read_for_write, read_rm, rmw_begin, rmw_end, write_rm, Form};
use crate::decode::{ea, gpr, seg_index, Cond, Handler, Op};
use crate::exec::{Exec, NONE};
use crate::fault::Stop;
use crate::flags::{mask, sext, AF, CF, PF, SF, ZF};
use crate::segment::load_data_segment;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

fn mov_rr<const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let v = x.reg(op.rm, s);
    x.set_reg(op.r, s, v);
    Ok(())
}

fn mov_rm<const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let at = ea(x, op);
    let v = x.read(op.seg as usize, at, s)?;
    x.set_reg(op.r, s, v);
    Ok(())
}

fn mov_mr<const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let v = x.reg(op.r, s);
    let at = ea(x, op);
    x.write(op.seg as usize, at, s, v)
}

fn mov_ri<const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    x.set_reg(op.r, S, op.imm);
    Ok(())
}

fn mov_mi<const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let at = ea(x, op);
    x.write(op.seg as usize, at, s, op.imm)
}

/// MOV Sreg, r/m16: a segment load with every check of its kind (MOV SS also holds
/// off interrupts for one instruction).
fn mov_to_seg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let sel = read_rm(x, op, 2)? as u16;
    load_data_segment(x, op.segment_register(), sel)?;
    if op.segment_register() == crate::state::SS {
        // Interrupts and debug exceptions wait for the next instruction (SDM vol 3 6.8.3).
        x.cpu.shadow = crate::state::Shadow::MOV_SS;
    }
    Ok(())
}

/// MOV r/m, Sreg: a register destination gets the selector zero-extended to its size,
/// memory always 16 bits (SDM vol 2 MOV, "Operation").
fn mov_from_seg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let sel = x.cpu.seg[op.segment_register()].selector as u64;
    if op.rm != NONE {
        let s = op.size as usize;
        x.set_reg(op.rm, s, sel);
        Ok(())
    } else {
        let at = ea(x, op);
        x.write(op.seg as usize, at, 2, sel)
    }
}

pub fn compile_mov(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    let r0 = if ins.op_kind(0) == OpKind::Register {
        ins.op_register(0)
    } else {
        Register::None
    };
    let r1 = if ins.op_count() > 1 && ins.op_kind(1) == OpKind::Register {
        ins.op_register(1)
    } else {
        Register::None
    };
    if r0.is_cr() || r1.is_cr() || r0.is_dr() || r1.is_dr() || r0.is_tr() || r1.is_tr() {
        return super::system::compile_mov_special(ins, op);
    }
    if r0.is_segment_register() {
        if r0 == Register::CS {
            return Some(crate::decode::invalid);
        }
        op.set_segment_register(seg_index(r0) as usize);
        op.rm = if ins.op_kind(1) == OpKind::Register {
            gpr(r1)
        } else {
            NONE
        };
        op.size = 2;
        return Some(mov_to_seg);
    }
    if r1.is_segment_register() {
        op.set_segment_register(seg_index(r1) as usize);
        op.rm = if ins.op_kind(0) == OpKind::Register {
            gpr(r0)
        } else {
            NONE
        };
        op.size = if ins.op_kind(0) == OpKind::Register {
            r0.size() as u8
        } else {
            2
        };
        return Some(mov_from_seg);
    }
    Some(match form(ins) {
        Form::RegReg => super::by_size!(mov_rr, op.size),
        Form::RegMem => super::by_size!(mov_rm, op.size),
        Form::MemReg => super::by_size!(mov_mr, op.size),
        Form::RegImm => super::by_size!(mov_ri, op.size),
        Form::MemImm => super::by_size!(mov_mi, op.size),
    })
}

/// MOVZX/MOVSX/MOVSXD from `FROM` bytes (sign-extended when `SIGNED`) to `TO`.
fn extend<const FROM: usize, const SIGNED: bool, const TO: usize>(
    x: &mut Exec,
    op: &Op,
) -> Result<(), Stop> {
    let v = read_rm(x, op, FROM)?;
    let v = if SIGNED { sext(v, FROM) } else { v };
    x.set_reg(op.r, TO, v & mask(TO));
    Ok(())
}

pub fn compile_extend(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    let from = crate::decode::op_size(ins, 1) as u8;
    let signed = ins.mnemonic() != Mnemonic::Movzx;
    macro_rules! to {
        ($from:literal, $signed:literal) => {
            match op.size {
                2 => extend::<$from, $signed, 2> as Handler,
                4 => extend::<$from, $signed, 4>,
                _ => extend::<$from, $signed, 8>,
            }
        };
    }
    Some(match (from, signed) {
        (1, false) => to!(1, false),
        (1, true) => to!(1, true),
        (2, false) => to!(2, false),
        (2, true) => to!(2, true),
        // MOVSXD, and MOVSXD without REX.W (a plain 32-bit move).
        (_, false) => to!(4, false),
        _ => to!(4, true),
    })
}

fn lea(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let v = ea(x, op);
    x.set_reg(op.r, op.size as usize, v);
    Ok(())
}

pub fn compile_lea(_ins: &Instruction, _op: &mut Op) -> Option<Handler> {
    Some(lea)
}

fn xchg_rr(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let a = x.reg(op.r, s);
    let b = x.reg(op.rm, s);
    x.set_reg(op.r, s, b);
    x.set_reg(op.rm, s, a);
    Ok(())
}

/// XCHG with memory (implicitly locked): memory is written before the register.
fn xchg_rm(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let (w, m) = rmw_begin(x, op, s)?;
    let r = x.reg(op.r, s);
    rmw_end(x, w, s, r)?;
    x.set_reg(op.r, s, m);
    Ok(())
}

pub fn compile_xchg(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    if ins.op_kind(0) == OpKind::Memory || ins.op_kind(1) == OpKind::Memory {
        // The register is whichever operand is not memory.
        let r = if ins.op_kind(0) == OpKind::Register {
            ins.op_register(0)
        } else {
            ins.op_register(1)
        };
        op.r = gpr(r);
        op.rm = NONE;
        return Some(xchg_rm);
    }
    if op.lock {
        return Some(crate::decode::invalid);
    }
    Some(xchg_rr)
}

fn xadd(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let src = x.reg(op.r, s);
    if op.rm != NONE {
        let dst = x.reg(op.rm, s);
        let sum = super::arith::alu::<{ super::arith::ADD }>(x, dst, src, s);
        x.set_reg(op.r, s, dst);
        x.set_reg(op.rm, s, sum);
        return Ok(());
    }
    let (w, dst) = rmw_begin(x, op, s)?;
    let sum = super::arith::alu::<{ super::arith::ADD }>(x, dst, src, s);
    rmw_end(x, w, s, sum)?;
    x.set_reg(op.r, s, dst);
    Ok(())
}

pub fn compile_xadd(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    // Operands: r/m (dest), reg (src).
    if ins.op_kind(0) == OpKind::Register {
        op.rm = gpr(ins.op_register(0));
        op.r = gpr(ins.op_register(1));
        if op.lock {
            return Some(crate::decode::invalid);
        }
    } else {
        op.rm = NONE;
        op.r = gpr(ins.op_register(1));
    }
    Some(xadd)
}

/// CMPXCHG r/m, r: compares the accumulator with the destination (flags as CMP); equal:
/// the destination takes the source; otherwise the accumulator takes the destination,
/// and the destination is written with its own value (SDM vol 2 CMPXCHG).
fn cmpxchg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let src = x.reg(op.r, s);
    let acc = x.reg(0, s);
    if op.rm != NONE {
        let dst = x.reg(op.rm, s);
        super::arith::alu::<{ super::arith::CMP }>(x, acc, dst, s);
        if acc == dst {
            x.set_reg(op.rm, s, src);
        } else {
            x.set_reg(op.rm, s, dst);
            x.set_reg(0, s, dst);
        }
        return Ok(());
    }
    let (w, dst) = rmw_begin(x, op, s)?;
    super::arith::alu::<{ super::arith::CMP }>(x, acc, dst, s);
    if acc == dst {
        rmw_end(x, w, s, src)
    } else {
        rmw_end(x, w, s, dst)?;
        x.set_reg(0, s, dst);
        Ok(())
    }
}

pub fn compile_cmpxchg(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    if ins.op_kind(0) == OpKind::Register {
        op.rm = gpr(ins.op_register(0));
        op.r = gpr(ins.op_register(1));
        if op.lock {
            return Some(crate::decode::invalid);
        }
    } else {
        op.rm = NONE;
        op.r = gpr(ins.op_register(1));
    }
    Some(cmpxchg)
}

/// CMPXCHG8B m64 / CMPXCHG16B m128 (16-byte aligned or #GP(0)).
fn cmpxchg_wide(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let half = op.size as usize / 2;
    let at = ea(x, op);
    if half == 8 && at & 15 != 0 {
        return Err(x.gp(0));
    }
    let lin = x.linear(op.seg as usize, at, op.size as usize, true)?;
    // Both halves must be writable before either is read or written.
    let lo = read_for_write(x, lin, half)?;
    let hi = read_for_write(x, lin.wrapping_add(half as u64), half)?;
    let (eax, edx) = (x.reg(0, half), x.reg(2, half));
    let equal = lo == eax && hi == edx;
    let (new_lo, new_hi) = if equal {
        (x.reg(3, half), x.reg(1, half))
    } else {
        (lo, hi)
    };
    x.write_lin(lin, half, new_lo)?;
    x.write_lin(lin.wrapping_add(half as u64), half, new_hi)?;
    if !equal {
        x.set_reg(0, half, lo);
        x.set_reg(2, half, hi);
    }
    let f = if equal { ZF } else { 0 };
    x.cpu.flags.set_arith(f, ZF);
    Ok(())
}

pub fn compile_cmpxchg_wide(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    if ins.op_kind(0) != OpKind::Memory {
        return Some(crate::decode::invalid);
    }
    op.size = if ins.mnemonic() == Mnemonic::Cmpxchg16b {
        16
    } else {
        8
    };
    Some(cmpxchg_wide)
}

fn widen(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    // CBW, CWDE, CDQE: the accumulator's lower half sign-extended into all of it.
    let s = op.size as usize;
    let v = sext(x.reg(0, s / 2), s / 2);
    x.set_reg(0, s, v);
    Ok(())
}

fn split(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    // CWD, CDQ, CQO: the accumulator's sign into (E/R)DX.
    let s = op.size as usize;
    let v = if x.reg(0, s) >> (s * 8 - 1) & 1 != 0 {
        u64::MAX
    } else {
        0
    };
    x.set_reg(2, s, v);
    Ok(())
}

pub fn compile_convert(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    Some(match ins.mnemonic() {
        M::Cbw => {
            op.size = 2;
            widen
        }
        M::Cwde => {
            op.size = 4;
            widen
        }
        M::Cdqe => {
            op.size = 8;
            widen
        }
        M::Cwd => {
            op.size = 2;
            split
        }
        M::Cdq => {
            op.size = 4;
            split
        }
        _ => {
            op.size = 8;
            split
        }
    })
}

fn lahf(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    let f = x.cpu.rflags() & (SF | ZF | AF | PF | CF);
    x.set_reg(crate::exec::AH, 1, f | 2);
    Ok(())
}

fn sahf(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    let ah = x.reg(crate::exec::AH, 1);
    x.cpu.flags.set_arith(ah, SF | ZF | AF | PF | CF);
    Ok(())
}

pub fn compile_ahf(ins: &Instruction, _op: &mut Op) -> Option<Handler> {
    Some(if ins.mnemonic() == Mnemonic::Lahf {
        lahf
    } else {
        sahf
    })
}

/// XLAT: AL = [seg:(rBX + AL)], the address size's rBX.
fn xlat(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let at = x.cpu.gpr[3].wrapping_add(x.reg(0, 1)) & mask(op.asize as usize);
    let v = x.read(op.seg as usize, at, 1)?;
    x.set_reg(0, 1, v);
    Ok(())
}

pub fn compile_xlat(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    op.seg = seg_index(ins.memory_segment());
    op.asize = match ins.memory_base() {
        Register::BX => 2,
        Register::EBX => 4,
        _ => 8,
    };
    Some(xlat)
}

/// LDS/LES/LFS/LGS/LSS r, m16:16/32/64: offset, then selector; the segment load's
/// checks come before the register is written.
fn load_far(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let at = ea(x, op);
    let off = x.read(op.seg as usize, at, s)?;
    let sel = x.read(
        op.seg as usize,
        at.wrapping_add(s as u64) & mask(op.asize as usize),
        2,
    )? as u16;
    load_data_segment(x, op.segment_register(), sel)?;
    x.set_reg(op.r, s, off);
    if op.segment_register() == crate::state::SS {
        // Only MOV SS and POP SS hold off debug exceptions (SDM vol 3 6.8.3).
        x.cpu.shadow = crate::state::Shadow {
            interrupts: true,
            ..crate::state::Shadow::default()
        };
    }
    Ok(())
}

pub fn compile_load_far(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    if ins.op_kind(1) != OpKind::Memory {
        return Some(crate::decode::invalid);
    }
    op.set_segment_register(match ins.mnemonic() {
        M::Lds => crate::state::DS,
        M::Les => crate::state::ES,
        M::Lfs => crate::state::FS,
        M::Lgs => crate::state::GS,
        _ => crate::state::SS,
    });
    Some(load_far)
}

fn nop(_x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    Ok(())
}

/// A multi-byte NOP with a memory operand still computes nothing and accesses nothing.
pub fn compile_nop(_ins: &Instruction, _op: &mut Op) -> Option<Handler> {
    Some(nop)
}

/// PAUSE: a NOP to the architecture (SDM vol 2 PAUSE), a hint that the processor spins
/// waiting for another. The environment hears of it (a hypervisor hands the processor
/// to another vCPU then, as VMX's pause-loop exiting lets it), and the run looks at
/// its poll soon after.
pub fn pause(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    let extra = x.env.pause(x.cpu.tsc);
    if extra > 0 {
        // The block ends here, so the next instruction counts on from this TSC (a
        // block's instructions take theirs from its first).
        x.cpu.tsc = x.cpu.tsc.wrapping_add(extra);
        x.end_block = true;
    }
    x.work += crate::run::POLL_INTERVAL / 8;
    Ok(())
}

fn setcc<const CC: u8>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let v = x.cpu.flags.holds::<CC>() as u64;
    write_rm(x, op, 1, v)
}

pub fn compile_setcc(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    op.set_condition(Cond::of(ins.condition_code()));
    if ins.op_kind(0) == OpKind::Register {
        op.rm = gpr(ins.op_register(0));
    }
    Some(super::by_condition!(setcc, op.condition()))
}

/// CMOVcc: the source is read whatever the condition (its faults happen), and a 32-bit
/// destination is written (upper half cleared) even when the move does not happen.
fn cmov<const CC: u8>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let v = read_rm(x, op, s)?;
    if x.cpu.flags.holds::<CC>() {
        x.set_reg(op.r, s, v);
    } else if s == 4 {
        let d = x.reg(op.r, 4);
        x.set_reg(op.r, 4, d);
    }
    Ok(())
}

pub fn compile_cmov(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    op.set_condition(Cond::of(ins.condition_code()));
    Some(super::by_condition!(cmov, op.condition()))
}
