//! Bit instructions: BT/BTS/BTR/BTC, BSF/BSR, LZCNT, POPCNT, BSWAP, MOVBE (SDM vol 2).

use super::{read_for_write, read_rm};
use crate::decode::{ea, gpr, BitTest, Handler, Op, Scan};
use crate::exec::{Exec, NONE};
use crate::fault::Stop;
use crate::flags::{mask, sext, ARITH, CF, ZF};
use iced_x86::{Instruction, Mnemonic, OpKind};

fn apply(kind: BitTest, v: u64, bit: u64) -> u64 {
    match kind {
        BitTest::Bts => v | 1 << bit,
        BitTest::Btr => v & !(1 << bit),
        BitTest::Btc => v ^ 1 << bit,
        BitTest::Bt => v,
    }
}

/// BTx with a register (or immediate) bit offset on a register operand, or an
/// immediate offset on memory: the offset is taken modulo the operand width.
fn bt_reg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let bits = (s * 8) as u64;
    let offset = if op.bit_offset_imm() {
        op.imm
    } else {
        x.reg(op.r, s)
    };
    let bit = offset % bits;
    let kind = op.bit_test();
    if op.rm != NONE {
        let v = x.reg(op.rm, s);
        if kind != BitTest::Bt {
            x.set_reg(op.rm, s, apply(kind, v, bit));
        }
        x.cpu.flags.set_arith((v >> bit) & 1, CF);
        return Ok(());
    }
    let at = ea(x, op);
    let v = if kind == BitTest::Bt {
        x.read(op.seg as usize, at, s)?
    } else {
        let lin = x.linear(op.seg as usize, at, s, true)?;
        let v = read_for_write(x, lin, s)?;
        x.write_lin(lin, s, apply(kind, v, bit))?;
        v
    };
    x.cpu.flags.set_arith((v >> bit) & 1, CF);
    Ok(())
}

/// BTx with a register bit offset on memory: the offset is signed and selects any bit
/// of memory relative to the operand's address (SDM vol 2 BT, "bit base").
fn bt_mem_reg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let bits = (s * 8) as i64;
    let offset = sext(x.reg(op.r, s), s) as i64;
    let delta = offset.div_euclid(bits) * s as i64;
    let bit = offset.rem_euclid(bits) as u64;
    let at = ea(x, op).wrapping_add(delta as u64) & mask(op.asize as usize);
    let kind = op.bit_test();
    let v = if kind == BitTest::Bt {
        x.read(op.seg as usize, at, s)?
    } else {
        let lin = x.linear(op.seg as usize, at, s, true)?;
        let v = read_for_write(x, lin, s)?;
        x.write_lin(lin, s, apply(kind, v, bit))?;
        v
    };
    x.cpu.flags.set_arith((v >> bit) & 1, CF);
    Ok(())
}

pub fn compile_bt(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let kind = match ins.mnemonic() {
        M::Bt => BitTest::Bt,
        M::Bts => BitTest::Bts,
        M::Btr => BitTest::Btr,
        _ => BitTest::Btc,
    };
    if op.lock && (kind == BitTest::Bt || ins.op_kind(0) != OpKind::Memory) {
        return Some(crate::decode::invalid);
    }
    let imm = ins.op_kind(1) != OpKind::Register;
    op.set_bit_test(kind, imm);
    let mem = ins.op_kind(0) == OpKind::Memory;
    if !mem {
        op.rm = gpr(ins.op_register(0));
        op.r = if imm { NONE } else { gpr(ins.op_register(1)) };
        return Some(bt_reg);
    }
    op.rm = NONE;
    if imm {
        Some(bt_reg)
    } else {
        op.r = gpr(ins.op_register(1));
        Some(bt_mem_reg)
    }
}

// ---- scans and counts ---------------------------------------------------------------

fn scan(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let v = read_rm(x, op, s)?;
    let bits = (s * 8) as u64;
    match op.scan() {
        Scan::Bsf | Scan::Bsr => {
            if v == 0 {
                // The destination is left as it was; ZF says the source was zero.
                x.cpu.flags.set_arith(ZF, ARITH);
                return Ok(());
            }
            let r = if op.scan() == Scan::Bsf {
                v.trailing_zeros() as u64
            } else {
                63 - v.leading_zeros() as u64
            };
            x.set_reg(op.r, s, r);
            x.cpu.flags.set_arith(0, ARITH);
        }
        Scan::Lzcnt => {
            let r = if v == 0 {
                bits
            } else {
                v.leading_zeros() as u64 - (64 - bits)
            };
            x.set_reg(op.r, s, r);
            let f = if v == 0 { CF } else { 0 } | if r == 0 { ZF } else { 0 };
            x.cpu.flags.set_arith(f, ARITH);
        }
        Scan::Popcnt => {
            let r = v.count_ones() as u64;
            x.set_reg(op.r, s, r);
            x.cpu.flags.set_arith(if v == 0 { ZF } else { 0 }, ARITH);
        }
    }
    Ok(())
}

pub fn compile_scan(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    op.set_scan(match ins.mnemonic() {
        M::Bsf => Scan::Bsf,
        M::Bsr => Scan::Bsr,
        // Without BMI1 (not advertised), F3 0F BC is BSF, as on such processors.
        M::Tzcnt => Scan::Bsf,
        M::Lzcnt => Scan::Lzcnt,
        _ => Scan::Popcnt,
    });
    Some(scan)
}

fn bswap(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let v = x.reg(op.r, s);
    let r = match s {
        8 => v.swap_bytes(),
        4 => (v as u32).swap_bytes() as u64,
        // BSWAP of a 16-bit register is undefined; Intel processors give 0.
        _ => 0,
    };
    x.set_reg(op.r, s, r);
    Ok(())
}

pub fn compile_bswap(_ins: &Instruction, _op: &mut Op) -> Option<Handler> {
    Some(bswap)
}

fn swap(v: u64, s: usize) -> u64 {
    match s {
        2 => (v as u16).swap_bytes() as u64,
        4 => (v as u32).swap_bytes() as u64,
        _ => v.swap_bytes(),
    }
}

fn movbe_load(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let at = ea(x, op);
    let v = x.read(op.seg as usize, at, s)?;
    x.set_reg(op.r, s, swap(v, s));
    Ok(())
}

fn movbe_store(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let v = x.reg(op.r, s);
    let at = ea(x, op);
    x.write(op.seg as usize, at, s, swap(v, s))
}

pub fn compile_movbe(ins: &Instruction, _op: &mut Op) -> Option<Handler> {
    Some(if ins.op_kind(0) == OpKind::Memory {
        movbe_store
    } else {
        movbe_load
    })
}
