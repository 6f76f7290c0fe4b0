//! Integer arithmetic: ADD..CMP and TEST, INC/DEC/NEG/NOT, MUL/IMUL/DIV/IDIV and the
//! BCD adjustments (SDM vol 2 for each; flags per vol 1 appendix A).

use super::{form, read_rm, rmw_begin, rmw_end, Form};
use crate::decode::{ea, Handler, MulDiv, Op};
use crate::exec::Exec;
use crate::fault::{Stop, DE};
use crate::flags::{mask, parity, sext, sign_bit, FlagOp, AF, ARITH, CF, OF, PF, SF, ZF};
use iced_x86::{Instruction, Mnemonic};

pub const ADD: u8 = 0;
pub const OR: u8 = 1;
pub const ADC: u8 = 2;
pub const SBB: u8 = 3;
pub const AND: u8 = 4;
pub const SUB: u8 = 5;
pub const XOR: u8 = 6;
pub const CMP: u8 = 7;
pub const TEST: u8 = 8;

/// Computes `a K b`, records the flags, returns the result (masked).
#[inline(always)]
pub fn alu<const K: u8>(x: &mut Exec, a: u64, b: u64, size: usize) -> u64 {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let f = &mut x.cpu.flags;
    match K {
        ADD => {
            let r = a.wrapping_add(b) & m;
            f.record(FlagOp::Add, size, r, a, b);
            r
        }
        ADC => {
            let c = f.cf();
            let r = a.wrapping_add(b).wrapping_add(c as u64) & m;
            f.record(if c { FlagOp::Adc } else { FlagOp::Add }, size, r, a, b);
            r
        }
        SUB | CMP => {
            let r = a.wrapping_sub(b) & m;
            f.record(FlagOp::Sub, size, r, a, b);
            r
        }
        SBB => {
            let c = f.cf();
            let r = a.wrapping_sub(b).wrapping_sub(c as u64) & m;
            f.record(if c { FlagOp::Sbb } else { FlagOp::Sub }, size, r, a, b);
            r
        }
        AND | TEST => {
            let r = a & b;
            f.record(FlagOp::Logic, size, r, 0, 0);
            r
        }
        OR => {
            let r = a | b;
            f.record(FlagOp::Logic, size, r, 0, 0);
            r
        }
        _ => {
            let r = a ^ b;
            f.record(FlagOp::Logic, size, r, 0, 0);
            r
        }
    }
}

const fn writes(k: u8) -> bool {
    k != CMP && k != TEST
}

fn rr<const K: u8, const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let a = x.reg(op.r, s);
    let b = x.reg(op.rm, s);
    let r = alu::<K>(x, a, b, s);
    if writes(K) {
        x.set_reg(op.r, s, r);
    }
    Ok(())
}

fn rm<const K: u8, const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let a = x.reg(op.r, s);
    let at = ea(x, op);
    let b = x.read(op.seg as usize, at, s)?;
    let r = alu::<K>(x, a, b, s);
    if writes(K) {
        x.set_reg(op.r, s, r);
    }
    Ok(())
}

fn ri<const K: u8, const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let a = x.reg(op.r, s);
    let r = alu::<K>(x, a, op.imm, s);
    if writes(K) {
        x.set_reg(op.r, s, r);
    }
    Ok(())
}

fn mr<const K: u8, const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let b = x.reg(op.r, s);
    if writes(K) {
        let (w, a) = rmw_begin(x, op, s)?;
        let r = alu::<K>(x, a, b, s);
        rmw_end(x, w, s, r)
    } else {
        let at = ea(x, op);
        let a = x.read(op.seg as usize, at, s)?;
        alu::<K>(x, a, b, s);
        Ok(())
    }
}

fn mi<const K: u8, const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    if writes(K) {
        let (w, a) = rmw_begin(x, op, s)?;
        let r = alu::<K>(x, a, op.imm, s);
        rmw_end(x, w, s, r)
    } else {
        let at = ea(x, op);
        let a = x.read(op.seg as usize, at, s)?;
        alu::<K>(x, a, op.imm, s);
        Ok(())
    }
}

/// The handler `$f` for operation `$k` at operand size `$s`: one copy per kind and
/// size, so neither is looked at when an instruction executes.
macro_rules! by_kind {
    ($f:ident, $k:expr, $s:expr) => {
        match $s {
            1 => by_kind!(@kind $f, $k, 1),
            2 => by_kind!(@kind $f, $k, 2),
            4 => by_kind!(@kind $f, $k, 4),
            _ => by_kind!(@kind $f, $k, 8),
        }
    };
    (@kind $f:ident, $k:expr, $s:literal) => {
        match $k {
            ADD => $f::<ADD, $s> as Handler,
            OR => $f::<OR, $s>,
            ADC => $f::<ADC, $s>,
            SBB => $f::<SBB, $s>,
            AND => $f::<AND, $s>,
            SUB => $f::<SUB, $s>,
            XOR => $f::<XOR, $s>,
            CMP => $f::<CMP, $s>,
            _ => $f::<TEST, $s>,
        }
    };
}

/// A LOCK prefix is allowed only on a memory destination of the read-modify-write
/// instructions (SDM vol 2 LOCK); elsewhere it is #UD.
pub fn lock_ok(ins: &Instruction, op: &Op) -> bool {
    !op.lock || ins.op_kind(0) == iced_x86::OpKind::Memory
}

pub fn compile_binary(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let k = match ins.mnemonic() {
        M::Add => ADD,
        M::Or => OR,
        M::Adc => ADC,
        M::Sbb => SBB,
        M::And => AND,
        M::Sub => SUB,
        M::Xor => XOR,
        M::Cmp => CMP,
        _ => TEST,
    };
    if !lock_ok(ins, op) || op.lock && !writes(k) {
        return Some(crate::decode::invalid);
    }
    op.imm &= mask(op.size as usize);
    Some(match form(ins) {
        Form::RegReg => by_kind!(rr, k, op.size),
        Form::RegMem => by_kind!(rm, k, op.size),
        Form::MemReg => by_kind!(mr, k, op.size),
        Form::RegImm => by_kind!(ri, k, op.size),
        Form::MemImm => by_kind!(mi, k, op.size),
    })
}

// ---- INC, DEC, NEG, NOT ----------------------------------------------------------------

const INC: u8 = 0;
const DEC: u8 = 1;
const NEG: u8 = 2;
const NOT: u8 = 3;

#[inline(always)]
fn unary<const K: u8>(x: &mut Exec, a: u64, s: usize) -> u64 {
    let m = mask(s);
    let f = &mut x.cpu.flags;
    match K {
        INC => {
            let r = a.wrapping_add(1) & m;
            f.record_keep_cf(FlagOp::Inc, s, r, a);
            r
        }
        DEC => {
            let r = a.wrapping_sub(1) & m;
            f.record_keep_cf(FlagOp::Dec, s, r, a);
            r
        }
        NEG => {
            let r = 0u64.wrapping_sub(a) & m;
            f.record(FlagOp::Sub, s, r, 0, a);
            r
        }
        _ => !a & m,
    }
}

fn unary_r<const K: u8, const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let a = x.reg(op.r, s);
    let r = unary::<K>(x, a, s);
    x.set_reg(op.r, s, r);
    Ok(())
}

fn unary_m<const K: u8, const S: usize>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = S;
    let (w, a) = rmw_begin(x, op, s)?;
    let r = unary::<K>(x, a, s);
    rmw_end(x, w, s, r)
}

pub fn compile_unary(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    if !lock_ok(ins, op) {
        return Some(crate::decode::invalid);
    }
    let mem = ins.op_kind(0) == iced_x86::OpKind::Memory;
    let k = match ins.mnemonic() {
        M::Inc => INC,
        M::Dec => DEC,
        M::Neg => NEG,
        _ => NOT,
    };
    macro_rules! sized {
        ($s:literal) => {
            match (k, mem) {
                (INC, false) => unary_r::<INC, $s> as Handler,
                (INC, true) => unary_m::<INC, $s>,
                (DEC, false) => unary_r::<DEC, $s>,
                (DEC, true) => unary_m::<DEC, $s>,
                (NEG, false) => unary_r::<NEG, $s>,
                (NEG, true) => unary_m::<NEG, $s>,
                (_, false) => unary_r::<NOT, $s>,
                _ => unary_m::<NOT, $s>,
            }
        };
    }
    Some(match op.size {
        1 => sized!(1),
        2 => sized!(2),
        4 => sized!(4),
        _ => sized!(8),
    })
}

// ---- multiply and divide ------------------------------------------------------------

/// ZF, SF and PF of a multiply's low half (undefined by the SDM; what Intel cores
/// compute) with CF = OF = `overflow`.
fn mul_flags(x: &mut Exec, lo: u64, s: usize, overflow: bool) {
    let mut f = 0;
    if overflow {
        f |= CF | OF;
    }
    if lo & mask(s) == 0 {
        f |= ZF;
    }
    if lo & sign_bit(s) != 0 {
        f |= SF;
    }
    if parity(lo) {
        f |= PF;
    }
    x.cpu.flags.set_arith(f, ARITH);
}

/// MUL/IMUL with one operand: RDX:RAX (AX for bytes) = RAX * r/m.
fn mul1(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let b = read_rm(x, op, s)?;
    let a = x.reg(0, s);
    let signed = op.mul_div() == MulDiv::Signed;
    let bits = s * 8;
    let m = mask(s);
    let (lo, hi, overflow) = if signed {
        let w = sext(a, s) as i64 as i128 * sext(b, s) as i64 as i128;
        let lo = w as u64 & m;
        (lo, (w >> bits) as u64 & m, sext(lo, s) as i64 as i128 != w)
    } else {
        let w = a as u128 * b as u128;
        let hi = (w >> bits) as u64 & m;
        (w as u64 & m, hi, hi != 0)
    };
    if s == 1 {
        x.set_reg(0, 2, lo | hi << 8);
    } else {
        x.set_reg(0, s, lo);
        x.set_reg(2, s, hi);
    }
    mul_flags(x, lo, s, overflow);
    Ok(())
}

/// IMUL r, r/m and IMUL r, r/m, imm: the truncated signed product.
fn imul2(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let (a, b) = if op.mul_div() == MulDiv::Imul3 {
        (read_rm(x, op, s)?, op.imm)
    } else {
        (x.reg(op.r, s), read_rm(x, op, s)?)
    };
    let w = sext(a, s) as i64 as i128 * sext(b, s) as i64 as i128;
    let lo = w as u64 & mask(s);
    x.set_reg(op.r, s, lo);
    mul_flags(x, lo, s, sext(lo, s) as i64 as i128 != w);
    Ok(())
}

/// DIV/IDIV: RDX:RAX / r/m, #DE on a zero divisor or a quotient that does not fit.
fn div(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let d = read_rm(x, op, s)?;
    let m = mask(s);
    let bits = s * 8;
    let (hi, lo) = if s == 1 {
        (x.reg(crate::exec::AH, 1), x.reg(0, 1))
    } else {
        (x.reg(2, s), x.reg(0, s))
    };
    let n = ((hi as u128) << bits) | lo as u128;
    let (q, r) = if op.mul_div() == MulDiv::Signed {
        let d = sext(d, s) as i64 as i128;
        // The dividend as a signed 2*size-bit number.
        let n = ((n << (128 - 2 * bits)) as i128) >> (128 - 2 * bits);
        if d == 0 {
            return Err(x.raise(DE, None));
        }
        let q = match n.checked_div(d) {
            Some(q) => q,
            None => return Err(x.raise(DE, None)),
        };
        let min = -(1i128 << (bits - 1));
        let max = (1i128 << (bits - 1)) - 1;
        if q < min || q > max {
            return Err(x.raise(DE, None));
        }
        (q as u64 & m, (n % d) as u64 & m)
    } else {
        let d = d as u128;
        if d == 0 || n / d > m as u128 {
            return Err(x.raise(DE, None));
        }
        ((n / d) as u64, (n % d) as u64)
    };
    if s == 1 {
        x.set_reg(0, 2, q | r << 8);
    } else {
        x.set_reg(0, s, q);
        x.set_reg(2, s, r);
    }
    Ok(())
}

pub fn compile_muldiv(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let one = ins.op_count() == 1;
    // The r/m operand of the one-operand forms is operand 0: `r` took it if a register.
    if one && op.rm == crate::exec::NONE && ins.op_kind(0) == iced_x86::OpKind::Register {
        op.rm = op.r;
    }
    Some(match ins.mnemonic() {
        M::Mul => {
            op.set_mul_div(MulDiv::Unsigned);
            mul1
        }
        M::Imul if one => {
            op.set_mul_div(MulDiv::Signed);
            mul1
        }
        M::Imul if ins.op_count() == 3 => {
            op.set_mul_div(MulDiv::Imul3);
            op.imm &= mask(op.size as usize);
            imul2
        }
        M::Imul => {
            op.set_mul_div(MulDiv::Imul2);
            imul2
        }
        M::Div => {
            op.set_mul_div(MulDiv::Unsigned);
            div
        }
        _ => {
            op.set_mul_div(MulDiv::Signed);
            div
        }
    })
}

// ---- BCD ------------------------------------------------------------------------------

fn szp_flags(v: u64) -> u64 {
    let v = v & 0xff;
    (if v == 0 { ZF } else { 0 })
        | (if v & 0x80 != 0 { SF } else { 0 })
        | (if parity(v) { PF } else { 0 })
}

/// DAA, DAS (SDM vol 2 pseudo-code, including the old-AL carry rule).
fn daa_das(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let old_al = x.reg(0, 1);
    let old_cf = x.cpu.flags.cf();
    let af_in = x.cpu.flags.af();
    let sub = op.subtracts();
    let mut al = old_al;
    let mut cf = false;
    let mut af = false;
    if al & 0xf > 9 || af_in {
        al = if sub { al.wrapping_sub(6) } else { al + 6 } & 0xff;
        cf = old_cf || if sub { old_al < 6 } else { old_al + 6 > 0xff };
        af = true;
    }
    if old_al > 0x99 || old_cf {
        al = if sub {
            al.wrapping_sub(0x60)
        } else {
            al + 0x60
        } & 0xff;
        cf = true;
    } else if !sub {
        // DAA clears CF here; DAS keeps the borrow of its first step.
        cf = false;
    }
    x.set_reg(0, 1, al);
    let f = szp_flags(al) | if cf { CF } else { 0 } | if af { AF } else { 0 };
    x.cpu.flags.set_arith(f, ARITH & !OF);
    Ok(())
}

/// AAA, AAS.
fn aaa_aas(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let sub = op.subtracts();
    let ax = x.reg(0, 2);
    let adjust = ax & 0xf > 9 || x.cpu.flags.af();
    let ax = if adjust {
        if sub {
            // AX - 6 (borrowing from AH), then AH - 1.
            ax.wrapping_sub(6).wrapping_sub(0x100) & 0xffff
        } else {
            ax.wrapping_add(0x106) & 0xffff
        }
    } else {
        ax
    };
    x.set_reg(0, 2, ax & 0xff0f);
    let f = if adjust { AF | CF } else { 0 };
    x.cpu.flags.set_arith(f, AF | CF);
    Ok(())
}

/// AAM imm8: AH = AL / imm8, AL = AL % imm8; #DE for 0.
fn aam(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let base = op.imm & 0xff;
    if base == 0 {
        return Err(x.raise(DE, None));
    }
    let al = x.reg(0, 1);
    let r = al % base;
    x.set_reg(0, 2, (al / base) << 8 | r);
    x.cpu
        .flags
        .set_arith(szp_flags(r), ZF | SF | PF | CF | OF | AF);
    Ok(())
}

/// AAD imm8: AL = AH * imm8 + AL, AH = 0.
fn aad(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let ax = x.reg(0, 2);
    let al = ((ax >> 8).wrapping_mul(op.imm & 0xff) + (ax & 0xff)) & 0xff;
    x.set_reg(0, 2, al);
    x.cpu
        .flags
        .set_arith(szp_flags(al), ZF | SF | PF | CF | OF | AF);
    Ok(())
}

pub fn compile_bcd(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    op.set_subtracts(matches!(m, M::Das | M::Aas));
    Some(match m {
        M::Daa | M::Das => daa_das,
        M::Aaa | M::Aas => aaa_aas,
        M::Aam => aam,
        _ => aad,
    })
}
