//! x87 arithmetic: FADD, FSUB(R), FMUL, FDIV(R) with their P and I forms, FSQRT,
//! FABS, FCHS, FRNDINT, FSCALE, FXTRACT, FPREM, FPREM1 (SDM vol 2 for each; the
//! exceptions and their priority: vol 1 4.9.2, 8.5).

use super::{enter, has_mem, masked, mode, note, precision, read_operand, set_c1, underflow};
use crate::decode::{Handler, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::float::round::{round, Rounded, Target};
use crate::float::wide::Wide;
use crate::float::{self, Class, Fmt, Parts, DE, IE, PE, ZE};
use crate::fpu::{FSW_C0, FSW_C1, FSW_C2, FSW_C3};
use iced_x86::{Instruction, Mnemonic};
use rustc_apfloat::Float;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    Add,
    Sub,
    SubR,
    Mul,
    Div,
    DivR,
}

/// Operands `a` (the destination's value) and `b` (the source's) of an 80-bit
/// operation: the unsupported-format and NaN rules, then the denormal flag (SDM vol 1
/// 4.9.2: SNaN and unsupported first, QNaN next, denormal after).
pub fn operands(a: u128, b: Option<u128>) -> Result<(u128, Option<u128>, u8), (u128, u8)> {
    let ca = float::classify(Fmt::F80, a);
    let cb = b.map(|b| float::classify(Fmt::F80, b));
    if ca == Class::Unsupported || cb == Some(Class::Unsupported) {
        return Err((Fmt::F80.indefinite(), IE));
    }
    let nan = match b {
        Some(b) => float::x87_nan(a, b),
        None => float::is_nan(ca).then(|| float::quiet(Fmt::F80, a)),
    };
    if let Some(n) = nan {
        let snan = ca == Class::SNan || cb == Some(Class::SNan);
        return Err((n, if snan { IE } else { 0 }));
    }
    let de = ca == Class::Denormal || cb == Some(Class::Denormal);
    Ok((a, b, if de { DE } else { 0 }))
}

/// Computes `a op b` on 80-bit values with the x87's rules: flags and result (None
/// when an unmasked pre-computation exception leaves the destination alone).
pub fn binary(
    x: &mut Exec,
    kind: Bin,
    a: u128,
    b: u128,
    b_denormal: bool,
) -> (Option<u128>, u8, bool) {
    let (a, b, de) = match operands(a, Some(b)) {
        Ok((a, b, de)) => (a, b.unwrap_or(0), if b_denormal { DE } else { de }),
        Err((nan, flags)) => {
            let store = flags & IE == 0 || masked(x, IE);
            return (store.then_some(nan), flags, false);
        }
    };
    let (wa, wb) = (Wide::from_bits(Fmt::F80, a), Wide::from_bits(Fmt::F80, b));
    let m = mode(x);
    let w = match kind {
        Bin::Add => Wide::add(wa, wb, m.rc),
        Bin::Sub => Wide::sub(wa, wb, m.rc),
        Bin::SubR => Wide::sub(wb, wa, m.rc),
        Bin::Mul => Wide::product(wa, wb),
        Bin::Div => Wide::quotient(wa, wb),
        Bin::DivR => Wide::quotient(wb, wa),
    };
    finish(x, w, de, precision(x))
}

/// Rounds a wide result into 80 bits at `bits` of precision with the exception rules:
/// invalid and zero-divide come before the denormal flag; an unmasked one of them
/// stops the instruction.
pub fn finish(x: &mut Exec, w: Wide, de: u8, bits: u32) -> (Option<u128>, u8, bool) {
    let pre = if w.invalid {
        IE
    } else if w.div_by_zero {
        ZE
    } else {
        0
    };
    if pre != 0 && !masked(x, pre) {
        return (None, pre, false);
    }
    // An invalid operation or a zero divide outranks the denormal operand, which is
    // then not flagged (SDM vol 1 4.9.2; as the hardware does).
    let de = if pre != 0 { 0 } else { de };
    if de != 0 && !masked(x, DE) {
        return (None, pre | de, false);
    }
    let r: Rounded = round(w, Target::F80 { precision: bits }, mode(x));
    (Some(r.bits), r.flags | de, r.up)
}

/// Applies an instruction's outcome: flags raised; the result written to ST(`dst`)
/// and the stack popped `pops` times unless an unmasked pre-computation exception
/// stopped it (`result` None).
pub fn apply(x: &mut Exec, result: Option<u128>, flags: u8, up: bool, dst: usize, pops: u8) {
    set_c1(x, up);
    x.cpu.fpu.raise(flags);
    if let Some(v) = result {
        x.cpu.fpu.set_st(dst, v);
        for _ in 0..pops {
            x.cpu.fpu.pop();
        }
    }
}

fn bin_kind(op: &Op) -> Bin {
    match op.imm & 7 {
        0 => Bin::Add,
        1 => Bin::Sub,
        2 => Bin::SubR,
        3 => Bin::Mul,
        4 => Bin::Div,
        _ => Bin::DivR,
    }
}

/// FADD/FSUB/FSUBR/FMUL/FDIV/FDIVR with a memory source: ST(0) = ST(0) op m.
fn binary_mem(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    let (b, b_denormal) = read_operand(x, op, op.x87_format())?;
    if x.cpu.fpu.is_empty(0) {
        underflow(x, Some(0));
        return Ok(());
    }
    let a = x.cpu.fpu.st(0);
    let (r, flags, up) = binary(x, bin_kind(op), a, b, b_denormal);
    apply(x, r, flags, up, 0, 0);
    Ok(())
}

/// The register forms: ST(r) = ST(r) op ST(rm), popping once for the P forms.
fn binary_reg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let (d, s) = (op.r as usize, op.rm as usize);
    let pops = (op.imm >> 3) as u8;
    if x.cpu.fpu.is_empty(d) || x.cpu.fpu.is_empty(s) {
        if underflow(x, Some(d)) {
            for _ in 0..pops {
                x.cpu.fpu.pop();
            }
        }
        return Ok(());
    }
    let (a, b) = (x.cpu.fpu.st(d), x.cpu.fpu.st(s));
    let (r, flags, up) = binary(x, bin_kind(op), a, b, false);
    apply(x, r, flags, up, d, pops);
    Ok(())
}

pub fn compile_binary(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let (kind, pop) = match ins.mnemonic() {
        M::Fadd | M::Fiadd => (Bin::Add, false),
        M::Faddp => (Bin::Add, true),
        M::Fsub | M::Fisub => (Bin::Sub, false),
        M::Fsubp => (Bin::Sub, true),
        M::Fsubr | M::Fisubr => (Bin::SubR, false),
        M::Fsubrp => (Bin::SubR, true),
        M::Fmul | M::Fimul => (Bin::Mul, false),
        M::Fmulp => (Bin::Mul, true),
        M::Fdiv | M::Fidiv => (Bin::Div, false),
        M::Fdivp => (Bin::Div, true),
        M::Fdivr | M::Fidivr => (Bin::DivR, false),
        _ => (Bin::DivR, true),
    };
    op.imm = kind as u64 | (pop as u64) << 3;
    if has_mem(op) {
        Some(binary_mem)
    } else {
        if ins.op_count() == 0 {
            // FADDP with no operands: FADDP ST(1), ST(0).
            op.r = 1;
            op.rm = 0;
        }
        Some(binary_reg)
    }
}

// ---- one-operand instructions on ST(0) -----------------------------------------------

const FABS: u64 = 0;
const FCHS: u64 = 1;
const FSQRT: u64 = 2;
const FRNDINT: u64 = 3;
const FSCALE: u64 = 4;
const FXTRACT: u64 = 5;
const FPREM: u64 = 6;
const FPREM1: u64 = 7;

fn unary(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let needs_st1 = matches!(op.imm, FSCALE | FPREM | FPREM1);
    if x.cpu.fpu.is_empty(0) || needs_st1 && x.cpu.fpu.is_empty(1) {
        underflow(x, Some(0));
        return Ok(());
    }
    let a = x.cpu.fpu.st(0);
    // C1 is 0 unless the instruction says otherwise (rounded up, a quotient bit).
    set_c1(x, false);
    match op.imm {
        FABS | FCHS => {
            let v = if op.imm == FABS {
                a & !(1 << 79)
            } else {
                a ^ 1 << 79
            };
            set_c1(x, false);
            x.cpu.fpu.set_st(0, v);
        }
        FSQRT => {
            let (r, flags, up) = match operands(a, None) {
                Err((nan, flags)) => (
                    (flags & IE == 0 || masked(x, IE)).then_some(nan),
                    flags,
                    false,
                ),
                Ok((a, _, de)) => {
                    let w = Wide::sqrt(Wide::from_bits(Fmt::F80, a));
                    finish(x, w, de, precision(x))
                }
            };
            apply(x, r, flags, up, 0, 0);
        }
        FRNDINT => {
            let (r, flags, up) = match operands(a, None) {
                Err((nan, flags)) => (
                    (flags & IE == 0 || masked(x, IE)).then_some(nan),
                    flags,
                    false,
                ),
                Ok((a, _, de)) => round_to_integer(x, a, de),
            };
            apply(x, r, flags, up, 0, 0);
        }
        FSCALE => fscale(x, a, x.cpu.fpu.st(1)),
        FXTRACT => fxtract(x, a),
        _ => fprem(x, a, x.cpu.fpu.st(1), op.imm == FPREM1),
    }
    Ok(())
}

/// FRNDINT: round ST(0) to an integer with the rounding control; PE when inexact.
fn round_to_integer(x: &mut Exec, a: u128, de: u8) -> (Option<u128>, u8, bool) {
    if de != 0 && !masked(x, DE) {
        return (None, de, false);
    }
    let w = Wide::from_bits(Fmt::F80, a);
    let r = w.v.round_to_integral(mode(x).rc.apfloat());
    let inexact = r.status.intersects(rustc_apfloat::Status::INEXACT);
    let out = round(Wide::exact(r.value), Target::F80 { precision: 64 }, mode(x)).bits;
    let up = inexact && r.value.abs() > w.v.abs();
    (Some(out), de | if inexact { PE } else { 0 }, up)
}

/// FSCALE: ST(0) * 2^trunc(ST(1)) (SDM vol 2 FSCALE, Table 3-46 for the specials).
fn fscale(x: &mut Exec, a: u128, b: u128) {
    let (r, flags, up) = match operands(a, Some(b)) {
        Err((nan, flags)) => (
            (flags & IE == 0 || masked(x, IE)).then_some(nan),
            flags,
            false,
        ),
        Ok((a, _, de)) => {
            let (ca, cb) = (float::classify(Fmt::F80, a), float::classify(Fmt::F80, b));
            let sb = float::sign(Fmt::F80, b);
            let invalid = cb == Class::Inf && (ca == Class::Zero && !sb || ca == Class::Inf && sb);
            if invalid {
                let ok = masked(x, IE);
                (ok.then(|| Fmt::F80.indefinite()), IE, false)
            } else if de != 0 && !masked(x, DE) {
                (None, de, false)
            } else if cb == Class::Inf {
                // ±∞ scale: the operand's sign, infinity or zero.
                let sa = float::sign(Fmt::F80, a);
                let v = if ca == Class::Zero || ca == Class::Inf {
                    a
                } else if sb {
                    float::zero(Fmt::F80, sa)
                } else {
                    float::infinity(Fmt::F80, sa)
                };
                (Some(v), de, false)
            } else {
                let n = Wide::from_bits(Fmt::F80, b)
                    .v
                    .round_to_integral(rustc_apfloat::Round::TowardZero)
                    .value;
                let mut exact = false;
                let n = n
                    .to_i128_r(32, rustc_apfloat::Round::TowardZero, &mut exact)
                    .value;
                let n = n.clamp(-70000, 70000) as i32;
                if cb == Class::Zero || ca == Class::Zero {
                    // A zero scale or a zero operand: ST(0) itself (SDM vol 2 FSCALE,
                    // Table 3-46), re-encoded (a pseudo-denormal becomes normal) but not
                    // rounded, so a denormal does not underflow.
                    let v = if ca == Class::Zero {
                        a
                    } else {
                        super::from_parts(float::parts(Fmt::F80, a))
                    };
                    return apply(x, Some(v), de, false, 0, 0);
                }
                let w = Wide::from_bits(Fmt::F80, a);
                let scaled = w.v.scalbn(n);
                finish(x, Wide::exact(scaled), de, 64)
            }
        }
    };
    apply(x, r, flags, up, 0, 0);
}

/// FXTRACT: ST(0) becomes its exponent, and its significand (exponent 0) is pushed.
fn fxtract(x: &mut Exec, a: u128) {
    if !x.cpu.fpu.is_empty(7) {
        super::overflow(x);
        return;
    }
    let (exp, sig, flags) = match operands(a, None) {
        Err((nan, flags)) => {
            if flags & IE != 0 && !masked(x, IE) {
                x.cpu.fpu.raise(flags);
                return;
            }
            (nan, nan, flags)
        }
        Ok((a, _, de)) => {
            if de != 0 && !masked(x, DE) {
                set_c1(x, false);
                x.cpu.fpu.raise(de);
                return;
            }
            match float::classify(Fmt::F80, a) {
                Class::Zero => {
                    // -∞ exponent and the zero, with ZE (SDM vol 2 FXTRACT).
                    if !masked(x, ZE) {
                        x.cpu.fpu.raise(ZE | de);
                        return;
                    }
                    (float::infinity(Fmt::F80, true), a, ZE | de)
                }
                Class::Inf => (float::infinity(Fmt::F80, false), a, de),
                _ => {
                    let p = float::parts(Fmt::F80, a);
                    let e = super::int_to_f80(p.exp as i64);
                    let s = super::from_parts(Parts {
                        sign: p.sign,
                        exp: 0,
                        sig: p.sig,
                    });
                    (e, s, de)
                }
            }
        }
    };
    set_c1(x, false);
    x.cpu.fpu.raise(flags);
    x.cpu.fpu.set_st(0, exp);
    x.cpu.fpu.push(sig);
}

/// FPREM (truncating quotient) and FPREM1 (IEEE, nearest quotient): the partial
/// remainder of ST(0) / ST(1), exact. When the exponents differ by 64 or more only a
/// partial reduction is done and C2 is set; otherwise C0, C3, C1 get the quotient's
/// low three bits (SDM vol 2 FPREM, FPREM1).
fn fprem(x: &mut Exec, a: u128, b: u128, ieee: bool) {
    let (a, b, de) = match operands(a, Some(b)) {
        Err((nan, flags)) => {
            let store = flags & IE == 0 || masked(x, IE);
            x.cpu.fpu.fsw &= !(FSW_C2);
            apply(x, store.then_some(nan), flags, false, 0, 0);
            return;
        }
        Ok((a, b, de)) => (a, b.unwrap_or(0), de),
    };
    let (ca, cb) = (float::classify(Fmt::F80, a), float::classify(Fmt::F80, b));
    if ca == Class::Inf || cb == Class::Zero {
        let ok = masked(x, IE);
        x.cpu.fpu.fsw &= !FSW_C2;
        apply(x, ok.then(|| Fmt::F80.indefinite()), IE, false, 0, 0);
        return;
    }
    if de != 0 && !masked(x, DE) {
        // Stopped: C2 (incomplete) and C1 read 0; C0 and C3 are left.
        x.cpu.fpu.fsw &= !(FSW_C1 | FSW_C2);
        x.cpu.fpu.raise(de);
        return;
    }
    let cc = FSW_C0 | FSW_C1 | FSW_C2 | FSW_C3;
    if ca == Class::Zero || cb == Class::Inf {
        // The dividend (re-encoded, as FSCALE does), quotient 0.
        x.cpu.fpu.fsw &= !cc;
        x.cpu.fpu.raise(de);
        if ca != Class::Zero {
            x.cpu
                .fpu
                .set_st(0, super::from_parts(float::parts(Fmt::F80, a)));
        }
        return;
    }
    let pa = float::parts(Fmt::F80, a);
    let pb = float::parts(Fmt::F80, b);
    let d = pa.exp - pb.exp;
    if d >= 64 {
        // Partial: reduce by ST(1) * 2^(d - n), n in 32..63 (Intel: n = 32 + d mod 32),
        // with a truncated quotient for both instructions.
        let n = 32 + d % 32;
        let shift = d - n;
        let scaled = Parts {
            sign: pb.sign,
            exp: pb.exp + shift,
            sig: pb.sig,
        };
        let (r, _) = remainder(pa, scaled, false);
        x.cpu.fpu.fsw = (x.cpu.fpu.fsw & !cc) | FSW_C2;
        x.cpu.fpu.raise(de);
        x.cpu.fpu.set_st(0, r);
        return;
    }
    let (r, q) = remainder(pa, pb, ieee);
    let mut fsw = x.cpu.fpu.fsw & !cc;
    if q & 4 != 0 {
        fsw |= FSW_C0;
    }
    if q & 2 != 0 {
        fsw |= FSW_C3;
    }
    if q & 1 != 0 {
        fsw |= FSW_C1;
    }
    x.cpu.fpu.fsw = fsw;
    // The remainder is exact; a denormal one underflows, which only matters unmasked
    // (the result is then delivered scaled by 2^24576, as for any x87 underflow).
    let out = round(
        Wide::from_bits(Fmt::F80, r),
        Target::F80 { precision: 64 },
        mode(x),
    );
    x.cpu.fpu.raise(de | out.flags);
    x.cpu.fpu.set_st(0, out.bits);
}

/// The exact remainder of a / b (|a| ≥ 2^-1 |b| scale handled) with its quotient's low
/// bits: truncated, or to nearest-even when `ieee`.
fn remainder(a: Parts, b: Parts, ieee: bool) -> (u128, u64) {
    let d = a.exp - b.exp;
    if d < -1 {
        return (super::from_parts(a), 0);
    }
    // num / den = |a| / |b| scaled so both are integers: num = ma << (d + 1), den = mb << 1.
    let num = (a.sig as u128) << (d + 1);
    let den = (b.sig as u128) << 1;
    let mut q = num / den;
    let mut r = num % den;
    let mut sign = a.sign;
    if ieee && (2 * r > den || (2 * r == den && q & 1 == 1)) {
        q += 1;
        r = den - r;
        sign = !sign;
    }
    // r * 2^(b.exp - 63 - 1) with r < 2^65.
    let value = if r == 0 {
        (a.sign as u128) << 79
    } else {
        let lead = 127 - r.leading_zeros() as i32;
        let sig = if lead >= 63 {
            (r >> (lead - 63)) as u64
        } else {
            (r << (63 - lead)) as u64
        };
        super::from_parts(Parts {
            sign,
            exp: b.exp - 64 + lead,
            sig,
        })
    };
    (value, q as u64)
}

pub fn compile_unary(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    op.imm = match ins.mnemonic() {
        M::Fabs => FABS,
        M::Fchs => FCHS,
        M::Fsqrt => FSQRT,
        M::Frndint => FRNDINT,
        M::Fscale => FSCALE,
        M::Fxtract => FXTRACT,
        M::Fprem => FPREM,
        _ => FPREM1,
    };
    Some(unary)
}
