//! The one rounding of a result to its destination, as x86 does it.
//!
//! - Rounding control: nearest-even, down, up, toward zero (SDM vol 1 4.8.4).
//! - x87 precision control rounds the significand to 24, 53 or 64 bits and keeps the
//!   80-bit exponent range (vol 1 8.1.5.2).
//! - Underflow: the result is *tiny* when its value rounded to the destination's
//!   precision with an unbounded exponent lies below the smallest normal (x86 detects
//!   tininess after rounding; Berkeley SoftFloat's 8086 specialization does the same).
//!   Masked, underflow is flagged only when the denormalized result is also inexact;
//!   unmasked, whenever the result is tiny (vol 1 4.9.1.5).
//! - FTZ (SSE, underflow masked): a tiny result becomes a zero of its sign, with UE and
//!   PE (vol 1 10.2.3.3).
//! - Unmasked overflow and underflow on the x87 deliver the result with its exponent
//!   adjusted by 24,576 (vol 1 8.5.4, 8.5.5); SSE stores nothing (the caller faults).

use super::wide::{Wide, WideF};
use super::{Fmt, Rc, IE, OE, PE, UE, ZE};
use rustc_apfloat::ieee::{Double, IeeeFloat, Semantics, Single, X87DoubleExtended};
use rustc_apfloat::{Float, FloatConvert, Status, StatusAnd};

/// A destination: its storage format and, for the x87, the precision control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    F32,
    F64,
    /// 80-bit storage rounded to 24, 53 or 64 significand bits.
    F80 {
        precision: u32,
    },
}

impl Target {
    pub fn fmt(self) -> Fmt {
        match self {
            Target::F32 => Fmt::F32,
            Target::F64 => Fmt::F64,
            Target::F80 { .. } => Fmt::F80,
        }
    }

    fn precision(self) -> u32 {
        match self {
            Target::F32 => 24,
            Target::F64 => 53,
            Target::F80 { precision } => precision,
        }
    }

    /// log2 of the smallest normal.
    fn emin(self) -> i32 {
        1 - self.fmt().bias()
    }

    /// log2 of the largest power of two below the largest finite value.
    fn emax(self) -> i32 {
        self.fmt().bias()
    }
}

/// How the destination treats exceptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub rc: Rc,
    /// The exception mask bits (FCW or MXCSR bits 7-12 moved to 0-5).
    pub masks: u8,
    /// SSE's flush-to-zero.
    pub ftz: bool,
}

/// A rounded result: its bits (`None` when an unmasked SSE exception leaves the
/// destination alone) and the exception flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounded {
    pub bits: u128,
    pub flags: u8,
    /// The rounding increased the magnitude (the x87 reports it in C1).
    pub up: bool,
}

/// The x87 precision control's 24- and 53-bit significands on the 80-bit exponent
/// range; below 2^-16382 they denormalize at their own precision (a 24-bit result
/// there keeps its last bit at 2^-16405), as the hardware does.
struct Pc24;
impl Semantics for Pc24 {
    const BITS: usize = 1 + 15 + 23;
    const EXP_BITS: usize = 15;
}
struct Pc53;
impl Semantics for Pc53 {
    const BITS: usize = 1 + 15 + 52;
    const EXP_BITS: usize = 15;
}

/// Each precision with an exponent range no result leaves: for detecting tininess
/// after rounding.
struct Unbounded24;
impl Semantics for Unbounded24 {
    const BITS: usize = 1 + 19 + 23;
    const EXP_BITS: usize = 19;
}
struct Unbounded53;
impl Semantics for Unbounded53 {
    const BITS: usize = 1 + 19 + 52;
    const EXP_BITS: usize = 19;
}
struct Unbounded64;
impl Semantics for Unbounded64 {
    const BITS: usize = 1 + 19 + 63;
    const EXP_BITS: usize = 19;
}

fn convert<S: Semantics>(v: WideF, rc: Rc) -> StatusAnd<IeeeFloat<S>>
where
    WideF: FloatConvert<IeeeFloat<S>>,
{
    v.convert_r(rc.apfloat(), &mut false)
}

/// `v` rounded to `precision` bits with an unbounded exponent.
fn unbounded(v: WideF, precision: u32, rc: Rc) -> WideF {
    let mut l = false;
    match precision {
        24 => {
            let r: IeeeFloat<Unbounded24> = convert(v, rc).value;
            r.convert(&mut l).value
        }
        53 => {
            let r: IeeeFloat<Unbounded53> = convert(v, rc).value;
            r.convert(&mut l).value
        }
        _ => {
            let r: IeeeFloat<Unbounded64> = convert(v, rc).value;
            r.convert(&mut l).value
        }
    }
}

/// `v` (finite or infinite, no NaN) rounded into `t`: its bits and apfloat's status.
fn to_target(v: WideF, t: Target, rc: Rc) -> (u128, Status) {
    let mut l = false;
    match t {
        Target::F32 => {
            let r: StatusAnd<Single> = convert(v, rc);
            (r.value.to_bits(), r.status)
        }
        Target::F64 => {
            let r: StatusAnd<Double> = convert(v, rc);
            (r.value.to_bits(), r.status)
        }
        Target::F80 { precision: 24 } => {
            let r: StatusAnd<IeeeFloat<Pc24>> = convert(v, rc);
            let x: X87DoubleExtended = r.value.convert(&mut l).value;
            (x.to_bits(), r.status)
        }
        Target::F80 { precision: 53 } => {
            let r: StatusAnd<IeeeFloat<Pc53>> = convert(v, rc);
            let x: X87DoubleExtended = r.value.convert(&mut l).value;
            (x.to_bits(), r.status)
        }
        Target::F80 { .. } => {
            let r: StatusAnd<X87DoubleExtended> = convert(v, rc);
            (r.value.to_bits(), r.status)
        }
    }
}

/// 2^n in the wide format.
fn pow2(n: i32) -> WideF {
    Wide::from_parts(super::Parts {
        sign: false,
        exp: n,
        sig: 1 << 63,
    })
    .v
}

/// Whether `bits` (a rounding of `exact`) is larger in magnitude.
fn magnitude_up(bits: u128, t: Target, exact: WideF) -> bool {
    let fmt = t.fmt();
    if super::classify(fmt, bits) == super::Class::Inf {
        return true;
    }
    Wide::from_bits(fmt, bits).v.abs() > exact.abs()
}

/// `v` rounded into `t` with flag `flags`, PE when inexact, and the direction.
fn rounded(v: WideF, t: Target, rc: Rc, flags: u8) -> Rounded {
    let (bits, st) = to_target(v, t, rc);
    let inexact = st.intersects(Status::INEXACT);
    Rounded {
        bits,
        flags: flags | if inexact { PE } else { 0 },
        up: inexact && magnitude_up(bits, t, v),
    }
}

/// The result of an unmasked overflow or underflow: the x87 delivers the exact result
/// with its exponent adjusted by 2^`scale` (SDM vol 1 8.5.4, 8.5.5); when even that
/// does not fit, a zero (or infinity) of the result's sign. SSE (`scale` 0) stores
/// nothing; the flags are what counts there.
fn scaled(v: WideF, scale: i32, t: Target, rc: Rc, flag: u8) -> Rounded {
    if scale == 0 {
        // SSE faults and stores nothing; PE comes with OE or UE when the result rounded
        // to the destination's precision with an unbounded exponent is inexact (as the
        // hardware reports it).
        let u = unbounded(v, t.precision(), rc);
        let pe = if u.bitwise_eq(v) { 0 } else { PE };
        return Rounded {
            bits: to_target(v, t, rc).0,
            flags: flag | pe,
            up: false,
        };
    }
    let s = v.mul_r(pow2(scale), rustc_apfloat::Round::TowardZero).value;
    let u = s.abs();
    let fmt = t.fmt();
    if u < pow2(t.emin()) {
        return Rounded {
            bits: super::zero(fmt, v.is_negative()),
            flags: flag | PE,
            up: false,
        };
    }
    if u >= pow2(t.emax() + 1) {
        return Rounded {
            bits: super::infinity(fmt, v.is_negative()),
            flags: flag | PE,
            up: true,
        };
    }
    rounded(s, t, rc, flag)
}

/// Rounds `w` (the result of an operation on non-NaN operands) into `t`.
pub fn round(w: Wide, t: Target, m: Mode) -> Rounded {
    let fmt = t.fmt();
    let exact = |bits: u128, flags: u8| Rounded {
        bits,
        flags,
        up: false,
    };
    if w.invalid {
        return exact(fmt.indefinite(), IE);
    }
    let v = w.v;
    if w.div_by_zero {
        return exact(to_target(v, t, m.rc).0, ZE);
    }
    if !v.is_finite_non_zero() {
        return exact(to_target(v, t, m.rc).0, 0);
    }
    // Tininess and overflow both look at the value rounded with an unbounded exponent
    // (SDM vol 1 4.9.1.4, 4.9.1.5). (apfloat alone reports no overflow when the
    // rounding direction gives the largest finite value, which x86 flags all the same.)
    let u = unbounded(v, t.precision(), m.rc).abs();
    let tiny = u < pow2(t.emin());
    let huge = u >= pow2(t.emax() + 1);
    let masked = |f: u8| m.masks & f != 0;
    let x87 = matches!(t, Target::F80 { .. });
    if tiny {
        if m.ftz && masked(UE) {
            return exact(super::zero(fmt, v.is_negative()), UE | PE);
        }
        if !masked(UE) {
            return scaled(v, if x87 { 24576 } else { 0 }, t, m.rc, UE);
        }
    }
    if huge {
        if !masked(OE) {
            return scaled(v, if x87 { -24576 } else { 0 }, t, m.rc, OE);
        }
        return rounded(v, t, m.rc, OE);
    }
    let r = rounded(v, t, m.rc, 0);
    let ue = tiny && r.flags & PE != 0;
    Rounded {
        flags: r.flags | if ue { UE } else { 0 },
        ..r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u8 = 0x3f;

    fn w32(x: f32) -> Wide {
        Wide::from_bits(Fmt::F32, x.to_bits() as u128)
    }

    fn mode(rc: Rc) -> Mode {
        Mode {
            rc,
            masks: ALL,
            ftz: false,
        }
    }

    #[test]
    fn rounding_modes_on_an_inexact_quotient() {
        let q = Wide::quotient(w32(1.0), w32(3.0));
        let near = round(q, Target::F32, mode(Rc::Nearest));
        assert_eq!(near.bits as u32, (1.0f32 / 3.0).to_bits());
        assert_eq!(near.flags, PE);
        // 1/3 = 0x3EAAAAAB to nearest, which rounded up.
        let up = round(q, Target::F32, mode(Rc::Up));
        assert_eq!(up.bits as u32, 0x3eaa_aaab);
        let zero = round(q, Target::F32, mode(Rc::Zero));
        assert_eq!(zero.bits as u32, 0x3eaa_aaaa);
    }

    #[test]
    fn overflow_underflow_and_ftz() {
        let big = Wide::product(w32(f32::MAX), w32(2.0));
        assert_eq!(round(big, Target::F32, mode(Rc::Nearest)).flags, OE | PE);
        assert_eq!(
            round(big, Target::F32, mode(Rc::Nearest)).bits as u32,
            f32::INFINITY.to_bits()
        );
        assert_eq!(
            round(big, Target::F32, mode(Rc::Zero)).bits as u32,
            f32::MAX.to_bits()
        );
        // An exact denormal result: tiny but exact, no flags when masked.
        let d = Wide::product(w32(f32::MIN_POSITIVE), w32(0.5));
        assert_eq!(round(d, Target::F32, mode(Rc::Nearest)).flags, 0);
        let unmasked = Mode {
            masks: ALL & !UE,
            ..mode(Rc::Nearest)
        };
        assert_eq!(round(d, Target::F32, unmasked).flags, UE);
        let ftz = Mode {
            ftz: true,
            ..mode(Rc::Nearest)
        };
        assert_eq!(
            round(d, Target::F32, ftz),
            Rounded {
                bits: 0,
                flags: UE | PE,
                up: false
            }
        );
    }

    #[test]
    fn tininess_is_detected_after_rounding() {
        // (1 - 2^-26) * 2^-126 rounds (nearest, unbounded exponent) to 2^-126: not tiny,
        // so only PE although the value lies below the smallest normal.
        let x = Wide::from_parts(super::super::Parts {
            sign: false,
            exp: -127,
            sig: ((1 << 26) - 1) << 38,
        });
        let r = round(x, Target::F32, mode(Rc::Nearest));
        assert_eq!(r.bits as u32, f32::MIN_POSITIVE.to_bits());
        assert_eq!(r.flags, PE);
        // (1 - 2^-24) * 2^-126 has 24 bits, so it is tiny; denormalized it rounds (a tie,
        // to even) up to 2^-126, and underflow is flagged: apfloat alone would not.
        let y = Wide::product(w32(1.0 - f32::EPSILON / 2.0), w32(f32::MIN_POSITIVE));
        let r = round(y, Target::F32, mode(Rc::Nearest));
        assert_eq!(r.bits as u32, f32::MIN_POSITIVE.to_bits());
        assert_eq!(r.flags, UE | PE);
        assert_eq!(round(x, Target::F32, mode(Rc::Zero)).flags, UE | PE);
    }
}
