//! Shifts and rotates: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR, SHLD, SHRD (SDM vol 2
//! "SAL/SAR/SHL/SHR", "RCL/RCR/ROL/ROR", "SHLD", "SHRD"). Where a flag is undefined
//! (OF for counts above 1, CF past the operand's width) the value is Intel's usual one;
//! the host differential tests compare only defined flags.

use super::{rmw_begin, rmw_end};
use crate::decode::{Count, DoubleShift, Handler, Op, Shift};
use crate::exec::{Exec, NONE};
use crate::fault::Stop;
use crate::flags::{mask, parity, sext, sign_bit, ARITH, CF, OF, PF, SF, ZF};
use iced_x86::{Instruction, Mnemonic, OpKind};

fn szp(res: u64, size: usize) -> u64 {
    (if res & mask(size) == 0 { ZF } else { 0 })
        | (if res & sign_bit(size) != 0 { SF } else { 0 })
        | (if parity(res) { PF } else { 0 })
}

/// The count the processor uses: 5 bits, 6 for 64-bit operands.
#[inline(always)]
fn masked_count(size: usize, count: u64) -> u32 {
    (count & if size == 8 { 0x3f } else { 0x1f }) as u32
}

/// Shifts or rotates `a`; `None` when the masked count is 0 (nothing changes).
/// Returns the result, the flags and the mask of flags it sets.
fn shift(size: usize, kind: Shift, a: u64, count: u64, cf_in: bool) -> Option<(u64, u64, u64)> {
    let bits = (size * 8) as u32;
    let m = mask(size);
    let a = a & m;
    let n = masked_count(size, count);
    if n == 0 {
        return None;
    }
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let flag = |b: u64, f: u64| if b != 0 { f } else { 0 };
    match kind {
        Shift::Rol | Shift::Ror => {
            let r = n % bits;
            let res = if kind == Shift::Rol {
                ((a << r) | if r == 0 { 0 } else { a >> (bits - r) }) & m
            } else {
                ((a >> r) | if r == 0 { 0 } else { a << (bits - r) }) & m
            };
            let cf = if kind == Shift::Rol {
                res & 1
            } else {
                msb(res)
            };
            let of = if kind == Shift::Rol {
                msb(res) ^ cf
            } else {
                msb(res) ^ ((res >> (bits - 2)) & 1)
            };
            Some((res, flag(cf, CF) | flag(of, OF), CF | OF))
        }
        Shift::Rcl | Shift::Rcr => {
            // A (bits + 1)-bit rotation through CF.
            let r = n % (bits + 1);
            if r == 0 {
                // The value comes back whole; OF is still computed (count was not 0).
                let cf = cf_in as u64;
                let of = if kind == Shift::Rcl {
                    msb(a) ^ cf
                } else {
                    msb(a) ^ ((a >> (bits - 2)) & 1)
                };
                return Some((a, flag(cf, CF) | flag(of, OF), CF | OF));
            }
            let wide = (a as u128) | ((cf_in as u128) << bits);
            let total = bits + 1;
            let full = (1u128 << total) - 1;
            let rot = if kind == Shift::Rcl {
                ((wide << r) | (wide >> (total - r))) & full
            } else {
                ((wide >> r) | (wide << (total - r))) & full
            };
            let res = rot as u64 & m;
            let cf = (rot >> bits) as u64 & 1;
            let of = if kind == Shift::Rcl {
                msb(res) ^ cf
            } else {
                msb(res) ^ ((res >> (bits - 2)) & 1)
            };
            Some((res, flag(cf, CF) | flag(of, OF), CF | OF))
        }
        Shift::Shl | Shift::Sal => {
            let res = if n >= bits { 0 } else { (a << n) & m };
            let cf = if n > bits { 0 } else { (a >> (bits - n)) & 1 };
            let f = szp(res, size) | flag(cf, CF) | flag(msb(res) ^ cf, OF);
            Some((res, f, ARITH))
        }
        Shift::Shr => {
            let res = if n >= bits { 0 } else { a >> n };
            let cf = if n > bits { 0 } else { (a >> (n - 1)) & 1 };
            let f = szp(res, size) | flag(cf, CF) | flag(msb(a), OF);
            Some((res, f, ARITH))
        }
        Shift::Sar => {
            let sa = sext(a, size) as i64;
            let res = (sa >> n.min(63)) as u64 & m;
            let cf = ((sa >> (n - 1).min(63)) & 1) as u64;
            Some((res, szp(res, size) | flag(cf, CF), ARITH))
        }
    }
}

fn count_of(x: &Exec, op: &Op) -> u64 {
    match op.count() {
        Count::One => 1,
        Count::Cl => x.cpu.gpr[1] & 0xff,
        Count::Imm => op.imm,
    }
}

fn shift_r(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let a = x.reg(op.r, s);
    let count = count_of(x, op);
    match shift(s, op.shift(), a, count, x.cpu.flags.cf()) {
        Some((r, f, which)) => {
            x.set_reg(op.r, s, r);
            x.cpu.flags.set_arith(f, which);
        }
        None => {
            // A zero count changes nothing, but a 32-bit register is still written,
            // which clears its upper half.
            if s == 4 {
                x.set_reg(op.r, 4, a);
            }
        }
    }
    Ok(())
}

fn shift_m(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let (w, a) = rmw_begin(x, op, s)?;
    let count = count_of(x, op);
    if let Some((r, f, which)) = shift(s, op.shift(), a, count, x.cpu.flags.cf()) {
        rmw_end(x, w, s, r)?;
        x.cpu.flags.set_arith(f, which);
    }
    Ok(())
}

pub fn compile_shift(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let kind = match ins.mnemonic() {
        M::Rol => Shift::Rol,
        M::Ror => Shift::Ror,
        M::Rcl => Shift::Rcl,
        M::Rcr => Shift::Rcr,
        M::Shl | M::Sal => Shift::Shl,
        M::Shr => Shift::Shr,
        _ => Shift::Sar,
    };
    let count = if ins.op_count() < 2 {
        Count::One
    } else if ins.op_kind(1) == OpKind::Register {
        Count::Cl
    } else {
        Count::Imm
    };
    op.set_shift(kind, count);
    if ins.op_kind(0) == OpKind::Memory {
        op.rm = NONE;
        Some(shift_m)
    } else {
        Some(shift_r)
    }
}

// ---- SHLD, SHRD ---------------------------------------------------------------------

fn double(size: usize, left: bool, dst: u64, src: u64, count: u64) -> Option<(u64, u64)> {
    let bits = (size * 8) as u32;
    let n = masked_count(size, count);
    if n == 0 {
        return None;
    }
    let m = mask(size);
    let (dst, src) = (dst & m, src & m);
    // The window dst:src:dst; counts past the width (16-bit operands only) shift the
    // destination in again, as Intel processors do (the SDM leaves the result undefined).
    let (res, cf) = if bits == 64 {
        // Counts stay below the width: the two-operand window suffices (and fits).
        if left {
            let w = ((dst as u128) << 64) | src as u128;
            (((w << n) >> 64) as u64, (dst >> (64 - n)) & 1)
        } else {
            let w = ((src as u128) << 64) | dst as u128;
            ((w >> n) as u64, (dst >> (n - 1)) & 1)
        }
    } else {
        let w = ((dst as u128) << (2 * bits)) | ((src as u128) << bits) | dst as u128;
        if left {
            (
                ((w << n) >> (2 * bits)) as u64 & m,
                (w >> (3 * bits - n)) as u64 & 1,
            )
        } else {
            ((w >> n) as u64 & m, (w >> (n - 1)) as u64 & 1)
        }
    };
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let of = msb(res) ^ msb(dst);
    let f = szp(res, size) | if cf != 0 { CF } else { 0 } | if of != 0 { OF } else { 0 };
    Some((res, f))
}

fn shld_shrd(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let left = op.double_shift() == DoubleShift::Shld;
    let count = if op.count() == Count::Cl {
        x.cpu.gpr[1] & 0xff
    } else {
        op.imm2
    };
    let src = x.reg(op.r, s);
    if op.base == NONE && op.index == NONE && op.rm != NONE {
        let dst = x.reg(op.rm, s);
        match double(s, left, dst, src, count) {
            Some((r, f)) => {
                x.set_reg(op.rm, s, r);
                x.cpu.flags.set_arith(f, ARITH);
            }
            None if s == 4 => x.set_reg(op.rm, 4, dst),
            None => {}
        }
        return Ok(());
    }
    let (w, dst) = rmw_begin(x, op, s)?;
    if let Some((r, f)) = double(s, left, dst, src, count) {
        rmw_end(x, w, s, r)?;
        x.cpu.flags.set_arith(f, ARITH);
    }
    Ok(())
}

pub fn compile_double(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    // Operands: r/m (dest), reg (src), imm8 or CL.
    let cl = ins.op_kind(2) == OpKind::Register;
    if ins.op_kind(0) == OpKind::Register {
        op.rm = crate::decode::gpr(ins.op_register(0));
        op.r = crate::decode::gpr(ins.op_register(1));
    } else {
        op.rm = NONE;
        op.r = crate::decode::gpr(ins.op_register(1));
    }
    op.imm2 = if cl { 0 } else { ins.immediate8() as u64 };
    let which = if ins.mnemonic() == Mnemonic::Shrd {
        DoubleShift::Shrd
    } else {
        DoubleShift::Shld
    };
    op.set_double_shift(which, if cl { Count::Cl } else { Count::Imm });
    Some(shld_shrd)
}
