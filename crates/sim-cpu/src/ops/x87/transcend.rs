//! x87 transcendental instructions: FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X,
//! FYL2XP1 (SDM vol 2 for each, with their tables of special operands; accuracy: vol 1
//! 8.3.10). Results come from `astro-float` at 192 bits, then one correct rounding to
//! the 64-bit significand, which is within the manual's one-ulp bound.
//!
//! FSIN, FCOS, FSINCOS and FPTAN reduce their argument with the processor's 66-bit
//! approximation of π (vol 1 8.3.10: "π with a 66-bit mantissa"), so for large
//! arguments the result is that of x·π/π₆₆, as on Intel processors. Arguments of
//! magnitude 2^63 or more are out of range: C2 is set and ST(0) is unchanged.

use super::arith::{apply, finish, operands};
use super::{enter, masked, note, set_c1};
use crate::decode::{Handler, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::float::wide::Wide;
use crate::float::{self, Class, Fmt, Parts, IE, ZE};
use crate::fpu::FSW_C2;
use astro_float::{BigFloat, Consts, RoundingMode, Sign};
use iced_x86::{Instruction, Mnemonic};
use std::cell::RefCell;

/// Working precision, bits.
const P: usize = 192;
const RM: RoundingMode = RoundingMode::ToEven;

thread_local! {
    /// astro-float's cache of π, ln 2 and friends.
    static CONSTS: RefCell<Option<Consts>> = const { RefCell::new(None) };
}

fn with_consts<R>(f: impl FnOnce(&mut Consts) -> R) -> Option<R> {
    CONSTS.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Consts::new().ok();
        }
        c.as_mut().map(f)
    })
}

/// An 80-bit finite value as a big float.
fn big(v: u128) -> BigFloat {
    let p = float::parts(Fmt::F80, v);
    if p.sig == 0 {
        return BigFloat::from_word(0, P);
    }
    let s = if p.sign { Sign::Neg } else { Sign::Pos };
    // astro-float's value is 0.m × 2^e.
    BigFloat::from_words(&[p.sig], s, p.exp + 1)
}

/// A big float as a wide value made odd by what lies below (see `float`).
fn wide(b: &BigFloat) -> Option<Wide> {
    if b.is_zero() {
        let neg = b.is_negative();
        return Some(Wide::from_parts(Parts {
            sign: neg,
            exp: 0,
            sig: 0,
        }));
    }
    let (words, _n, sign, e, inexact) = b.as_raw_parts()?;
    // The top 128 bits (words are little-endian, the mantissa normalized at the top).
    let k = words.len();
    let hi = *words.get(k.wrapping_sub(1))? as u128;
    let lo = if k >= 2 { words[k - 2] as u128 } else { 0 };
    let rest = k > 2 && words[..k - 2].iter().any(|&w| w != 0);
    let sig = hi << 64 | lo;
    let z = sig.leading_zeros();
    let sig = sig << z;
    Some(Wide::from_sig128(
        sign == Sign::Neg,
        e - 1 - z as i32,
        sig,
        rest || inexact,
    ))
}

/// π₆₆ / π's reciprocal factor: x is reduced as x·π/π₆₆.
fn pi66() -> BigFloat {
    // 0xC90FDAA22168C234C with the leading bit worth 2^1: 66 bits.
    let m = [0xc90f_daa2_2168_c234u64, 0xc000_0000_0000_0000];
    // from_words takes little-endian words: the high word last.
    BigFloat::from_words(&[m[1], m[0]], Sign::Pos, 2)
}

const FSIN: u64 = 0;
const FCOS: u64 = 1;
const FSINCOS: u64 = 2;
const FPTAN: u64 = 3;
const FPATAN: u64 = 4;
const F2XM1: u64 = 5;
const FYL2X: u64 = 6;
const FYL2XP1: u64 = 7;

fn transcend(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let two = matches!(op.imm, FPATAN | FYL2X | FYL2XP1);
    if x.cpu.fpu.is_empty(0) || two && x.cpu.fpu.is_empty(1) {
        let dst = if two { 1 } else { 0 };
        if super::underflow(x, Some(dst)) && two {
            x.cpu.fpu.pop();
        }
        return Ok(());
    }
    set_c1(x, false);
    match op.imm {
        FSIN | FCOS | FSINCOS | FPTAN => trig(x, op.imm),
        FPATAN | FYL2X | FYL2XP1 => binary(x, op.imm),
        _ => f2xm1(x),
    }
    Ok(())
}

/// The rounding of a big result into ST(`dst`). A computed (not special-case) result
/// always reports PE: the hardware's algorithms do, even where the exact value is
/// representable (y·log2(2^k), say).
fn result(x: &mut Exec, b: Option<BigFloat>, de: u8) -> (Option<u128>, u8, bool) {
    match b.as_ref().and_then(wide) {
        Some(w) => {
            let (r, flags, up) = finish(x, w, de, 64);
            let pe = if r.is_some() { float::PE } else { 0 };
            (r, flags | pe, up)
        }
        None => (Some(Fmt::F80.indefinite()), IE, false),
    }
}

fn trig(x: &mut Exec, kind: u64) {
    let a = x.cpu.fpu.st(0);
    x.cpu.fpu.fsw &= !FSW_C2;
    let (a, de) = match operands(a, None) {
        Err((nan, flags)) => {
            let store = flags & IE == 0 || masked(x, IE);
            if store && matches!(kind, FSINCOS | FPTAN) && !x.cpu.fpu.is_empty(7) {
                super::overflow(x);
                return;
            }
            apply(x, store.then_some(nan), flags, false, 0, 0);
            if store && matches!(kind, FSINCOS | FPTAN) {
                x.cpu.fpu.push(nan);
            }
            return;
        }
        Ok((a, _, de)) => (a, de),
    };
    let class = float::classify(Fmt::F80, a);
    if class == Class::Inf {
        let ok = masked(x, IE);
        apply(x, ok.then(|| Fmt::F80.indefinite()), IE, false, 0, 0);
        if ok && matches!(kind, FSINCOS | FPTAN) {
            x.cpu.fpu.push(Fmt::F80.indefinite());
        }
        return;
    }
    let p = float::parts(Fmt::F80, a);
    if class != Class::Zero && p.exp >= 63 {
        // Out of range: C2 set, nothing else (SDM vol 2 FSIN).
        x.cpu.fpu.fsw |= FSW_C2;
        return;
    }
    if matches!(kind, FSINCOS | FPTAN) && !x.cpu.fpu.is_empty(7) {
        super::overflow(x);
        return;
    }
    if de != 0 && !masked(x, float::DE) {
        x.cpu.fpu.raise(de);
        return;
    }
    let computed = with_consts(|cc| {
        let pi = cc.pi(P, RM);
        let arg = big(a).mul(&pi, P, RM).div(&pi66(), P, RM);
        let sin = arg.sin(P, RM, cc);
        let cos = arg.cos(P, RM, cc);
        (sin, cos)
    });
    let Some((sin, cos)) = computed else {
        apply(x, Some(Fmt::F80.indefinite()), IE, false, 0, 0);
        return;
    };
    let zero = class == Class::Zero;
    match kind {
        FSIN => {
            let (r, f, up) = if zero {
                (Some(a), 0, false)
            } else {
                result(x, Some(sin), de)
            };
            apply(x, r, f, up, 0, 0);
        }
        FCOS => {
            let (r, f, up) = result(x, Some(cos), de);
            apply(x, r, f, up, 0, 0);
        }
        FSINCOS => {
            let (rs, fs, _) = if zero {
                (Some(a), 0, false)
            } else {
                result(x, Some(sin), de)
            };
            let (rc, fc, upc) = result(x, Some(cos), de);
            let flags = fs | fc;
            if flags & !(x.cpu.fpu.fcw as u8) & (IE | ZE | float::DE) != 0 {
                x.cpu.fpu.raise(flags);
                return;
            }
            apply(x, rs, flags, false, 0, 0);
            if let Some(c) = rc {
                x.cpu.fpu.push(c);
            }
            set_c1(x, upc);
        }
        _ => {
            let tan = if zero {
                None
            } else {
                Some(sin.div(&cos, P, RM))
            };
            let (r, f, up) = match tan {
                None => (Some(a), 0, false),
                t => result(x, t, de),
            };
            if r.is_none() {
                x.cpu.fpu.raise(f);
                return;
            }
            apply(x, r, f, up, 0, 0);
            x.cpu.fpu.push(0x3fff_8000_0000_0000_0000);
        }
    }
}

/// FPATAN, FYL2X, FYL2XP1: ST(1) = f(ST(1), ST(0)), then pop.
fn binary(x: &mut Exec, kind: u64) {
    let (a, b) = (x.cpu.fpu.st(0), x.cpu.fpu.st(1));
    let (a, b, de) = match operands(b, Some(a)) {
        Err((nan, flags)) => {
            let store = flags & IE == 0 || masked(x, IE);
            apply(x, store.then_some(nan), flags, false, 1, store as u8);
            return;
        }
        // `operands` took (ST1, ST0): swap back to (ST0, ST1).
        Ok((st1, st0, de)) => (st0.unwrap_or(0), st1, de),
    };
    let (ca, cb) = (float::classify(Fmt::F80, a), float::classify(Fmt::F80, b));
    let (sa, sb) = (float::sign(Fmt::F80, a), float::sign(Fmt::F80, b));
    // Special operands with exact or invalid results (SDM vol 2 FPATAN Table 3-30,
    // FYL2X Table 3-51, FYL2XP1 Table 3-52).
    let special: Option<(Option<u128>, u8)> = match kind {
        FYL2X => {
            if sa && ca != Class::Zero
                || cb == Class::Zero && (ca == Class::Zero || ca == Class::Inf)
            {
                Some((None, IE))
            } else if ca == Class::Zero {
                // log2(0) = -∞: y·(-∞), zero-divide for a finite y.
                let flag = if cb == Class::Inf { 0 } else { ZE };
                Some((Some(float::infinity(Fmt::F80, !sb)), flag))
            } else if a == 0x3fff_8000_0000_0000_0000 && cb == Class::Inf {
                Some((None, IE))
            } else if a == 0x3fff_8000_0000_0000_0000 {
                // log2(1) = +0 exactly: y · +0.
                Some((Some(float::zero(Fmt::F80, sb)), 0))
            } else if cb == Class::Zero && ca != Class::Inf {
                // A zero times log2(x): a zero, negative when the signs differ (x < 1
                // makes the logarithm negative; log2(1) is +0).
                let below_one = Wide::from_bits(Fmt::F80, a).v
                    < Wide::from_bits(Fmt::F80, 0x3fff_8000_0000_0000_0000).v;
                Some((Some(float::zero(Fmt::F80, sb != below_one)), 0))
            } else {
                None
            }
        }
        FPATAN if !sa && (cb == Class::Zero || ca == Class::Inf && cb != Class::Inf) => {
            // atan2(±0 or finite, +x or +∞) = ±0.
            Some((Some(float::zero(Fmt::F80, sb)), 0))
        }
        FYL2XP1 => {
            if ca == Class::Zero && cb == Class::Inf || ca == Class::Inf && cb == Class::Zero {
                Some((None, IE))
            } else if ca == Class::Zero || cb == Class::Zero {
                Some((Some(float::zero(Fmt::F80, sa != sb)), 0))
            } else {
                None
            }
        }
        _ => None,
    };
    if let Some((v, flags)) = special {
        let v = match v {
            Some(v) => Some(v),
            None if masked(x, IE) => Some(Fmt::F80.indefinite()),
            None => None,
        };
        // Invalid and zero-divide outrank the denormal operand (SDM vol 1 4.9.2).
        let flags = if flags & (IE | ZE) != 0 {
            flags
        } else {
            flags | de
        };
        let stop = flags & !(x.cpu.fpu.fcw as u8) & (IE | ZE | float::DE) != 0;
        apply(x, if stop { None } else { v }, flags, false, 1, 1);
        return;
    }
    if de != 0 && !masked(x, float::DE) {
        x.cpu.fpu.raise(de);
        return;
    }
    let v = with_consts(|cc| {
        let (bx, by) = (big(a), big(b));
        match kind {
            FPATAN => atan2(by, bx, ca, cb, sa, sb, cc),
            FYL2X => {
                if ca == Class::Inf {
                    return if cb == Class::Zero {
                        BigFloat::nan(None)
                    } else {
                        inf(sb)
                    };
                }
                let l = bx.log2(P, RM, cc);
                if cb == Class::Inf {
                    return if l.is_zero() {
                        BigFloat::nan(None)
                    } else {
                        inf(sb != l.is_negative())
                    };
                }
                by.mul(&l, P, RM)
            }
            _ => {
                let l = log2_1p(&bx, a, cc);
                if cb == Class::Inf {
                    return inf(sb != l.is_negative());
                }
                by.mul(&l, P, RM)
            }
        }
    });
    let v = v.filter(|b| !b.is_nan());
    let (r, f, up) = match v {
        Some(b) if b.is_inf() => (Some(float::infinity(Fmt::F80, b.is_inf_neg())), de, false),
        Some(b) => result(x, Some(b), de),
        None => (masked(x, IE).then(|| Fmt::F80.indefinite()), IE, false),
    };
    let pop = r.is_some() as u8;
    apply(x, r, f, up, 1, pop);
}

fn inf(neg: bool) -> BigFloat {
    let one = BigFloat::from_word(1, P);
    let zero = BigFloat::from_word(0, P);
    let i = one.div(&zero, P, RM);
    if neg {
        i.neg()
    } else {
        i
    }
}

/// atan2(y, x) with the quadrant rules of FPATAN's table.
#[allow(clippy::too_many_arguments)]
fn atan2(
    y: BigFloat,
    xv: BigFloat,
    cx: Class,
    cy: Class,
    sx: bool,
    sy: bool,
    cc: &mut Consts,
) -> BigFloat {
    let pi = cc.pi(P, RM);
    let half_pi = pi.div(&BigFloat::from_word(2, P), P, RM);
    let signed = |v: BigFloat| if sy { v.neg() } else { v };
    match (cx, cy) {
        (Class::Zero, Class::Zero) => signed(if sx { pi } else { BigFloat::from_word(0, P) }),
        (_, Class::Zero) => signed(if sx { pi } else { BigFloat::from_word(0, P) }),
        (Class::Zero, _) => signed(half_pi),
        (Class::Inf, Class::Inf) => {
            let q = pi.div(&BigFloat::from_word(4, P), P, RM);
            let v = if sx {
                q.mul(&BigFloat::from_word(3, P), P, RM)
            } else {
                q
            };
            signed(v)
        }
        (Class::Inf, _) => signed(if sx { pi } else { BigFloat::from_word(0, P) }),
        (_, Class::Inf) => signed(half_pi),
        _ => {
            let t = y.div(&xv, P + 64, RM).atan(P, RM, cc);
            if !sx {
                t
            } else if sy {
                t.sub(&pi, P, RM)
            } else {
                t.add(&pi, P, RM)
            }
        }
    }
}

/// log2(1 + x) without cancellation for small x.
fn log2_1p(bx: &BigFloat, a: u128, cc: &mut Consts) -> BigFloat {
    let p = float::parts(Fmt::F80, a);
    let ln2 = cc.ln_2(P, RM);
    if p.exp < -100 {
        // x - x²/2 + x³/3, over ln 2: the next term is below 2^-400 relative.
        let x2 = bx.mul(bx, P, RM);
        let x3 = x2.mul(bx, P, RM);
        let s = bx
            .sub(&x2.div(&BigFloat::from_word(2, P), P, RM), P, RM)
            .add(&x3.div(&BigFloat::from_word(3, P), P, RM), P, RM);
        return s.div(&ln2, P, RM);
    }
    // 1 + x is exact at P + 128 bits for exponents ≥ -100 and a 64-bit significand.
    let one_plus = bx.add(&BigFloat::from_word(1, P + 128), P + 128, RM);
    one_plus.log2(P, RM, cc)
}

/// F2XM1: 2^x - 1 (defined for -1 ≤ x ≤ 1).
fn f2xm1(x: &mut Exec) {
    let a = x.cpu.fpu.st(0);
    let (a, de) = match operands(a, None) {
        Err((nan, flags)) => {
            let store = flags & IE == 0 || masked(x, IE);
            apply(x, store.then_some(nan), flags, false, 0, 0);
            return;
        }
        Ok((a, _, de)) => (a, de),
    };
    match float::classify(Fmt::F80, a) {
        Class::Zero => {
            apply(x, Some(a), 0, false, 0, 0);
            return;
        }
        Class::Inf => {
            // -∞ gives -1, +∞ itself.
            let v = if float::sign(Fmt::F80, a) {
                0xbfff_8000_0000_0000_0000
            } else {
                a
            };
            apply(x, Some(v), 0, false, 0, 0);
            return;
        }
        _ => {}
    }
    if de != 0 && !masked(x, float::DE) {
        x.cpu.fpu.raise(de);
        return;
    }
    let v = with_consts(|cc| {
        let bx = big(a);
        let ln2 = cc.ln_2(P, RM);
        let t = bx.mul(&ln2, P, RM);
        let p = float::parts(Fmt::F80, a);
        if p.exp < -60 {
            // t + t²/2 + t³/6 (+ t⁴/24): exact to far below one ulp.
            let t2 = t.mul(&t, P, RM);
            let t3 = t2.mul(&t, P, RM);
            let t4 = t3.mul(&t, P, RM);
            t.add(&t2.div(&BigFloat::from_word(2, P), P, RM), P, RM)
                .add(&t3.div(&BigFloat::from_word(6, P), P, RM), P, RM)
                .add(&t4.div(&BigFloat::from_word(24, P), P, RM), P, RM)
        } else {
            t.exp(P + 64, RM, cc)
                .sub(&BigFloat::from_word(1, P + 64), P, RM)
        }
    });
    let (r, f, up) = result(x, v, de);
    apply(x, r, f, up, 0, 0);
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    op.imm = match ins.mnemonic() {
        M::Fsin => FSIN,
        M::Fcos => FCOS,
        M::Fsincos => FSINCOS,
        M::Fptan => FPTAN,
        M::Fpatan => FPATAN,
        M::F2xm1 => F2XM1,
        M::Fyl2x => FYL2X,
        _ => FYL2XP1,
    };
    Some(transcend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_floats_round_trip_through_80_bits() {
        for v in [
            0x3fff_8000_0000_0000_0000u128,
            0xc000_c90f_daa2_2168_c235,
            0x3ffd_9a20_9a84_fbcf_f799,
        ] {
            let w = wide(&big(v)).unwrap();
            let r = crate::float::round(
                w,
                crate::float::Target::F80 { precision: 64 },
                crate::float::round::Mode {
                    rc: crate::float::Rc::Nearest,
                    masks: 0x3f,
                    ftz: false,
                },
            );
            assert_eq!(r.bits, v);
            assert_eq!(r.flags, 0);
        }
    }

    #[test]
    fn pi66_is_pi_to_66_bits() {
        let w = wide(&pi66()).unwrap();
        let r = crate::float::round(
            w,
            crate::float::Target::F80 { precision: 64 },
            crate::float::round::Mode {
                rc: crate::float::Rc::Zero,
                masks: 0x3f,
                ftz: false,
            },
        );
        assert_eq!(r.bits, 0x4000_c90f_daa2_2168_c234);
    }
}
