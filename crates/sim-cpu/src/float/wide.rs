//! The intermediate format: 109 significand bits, a 19-bit exponent. Every x86
//! operand (at most 64 significand bits, exponents within ±16,446) converts into it
//! exactly, and no operation on two of them overflows or underflows it, so its only
//! rounding is the one "round to odd" makes harmless (see the module above).

use super::{Fmt, Parts};
use rustc_apfloat::ieee::{IeeeFloat, Semantics};
use rustc_apfloat::{Float, Round, Status, StatusAnd};

pub struct WideS;

impl Semantics for WideS {
    const BITS: usize = 128;
    const EXP_BITS: usize = 19;
}

pub type WideF = IeeeFloat<WideS>;

/// Fraction bits of the wide format (its precision less the implicit bit).
const FRAC: u32 = 108;
const BIAS: i32 = (1 << 18) - 1;

/// A value in the wide format with the flags its computation raised (only INVALID_OP
/// and DIV_BY_ZERO are meaningful: anything inexact is folded into the odd bit).
#[derive(Debug, Clone, Copy)]
pub struct Wide {
    pub v: WideF,
    pub invalid: bool,
    pub div_by_zero: bool,
}

impl Wide {
    pub fn exact(v: WideF) -> Wide {
        Wide {
            v,
            invalid: false,
            div_by_zero: false,
        }
    }

    /// The value of `parts` (exact).
    pub fn from_parts(p: Parts) -> Wide {
        if p.sig == 0 {
            return Wide::exact(if p.sign { -WideF::ZERO } else { WideF::ZERO });
        }
        // `sig` is normalized: bit 63 is the implicit bit.
        let frac = ((p.sig as u128) << (FRAC - 63)) & ((1 << FRAC) - 1);
        let e = (p.exp + BIAS) as u128;
        let bits = (p.sign as u128) << 127 | e << FRAC | frac;
        Wide::exact(WideF::from_bits(bits))
    }

    /// The value `0.1sss... × 2^(exp + 1)` of a normalized 128-bit significand (bit 127
    /// set, worth 2^exp), made odd when bits below the wide precision are lost or
    /// `sticky` says the significand itself was inexact.
    pub fn from_sig128(sign: bool, exp: i32, sig: u128, sticky: bool) -> Wide {
        if sig == 0 {
            return Wide::exact(if sign { -WideF::ZERO } else { WideF::ZERO });
        }
        let drop = 127 - FRAC;
        let mut frac = (sig >> drop) & ((1 << FRAC) - 1);
        if sticky || sig & ((1 << drop) - 1) != 0 {
            frac |= 1;
        }
        let e = (exp + BIAS) as u128;
        Wide::exact(WideF::from_bits((sign as u128) << 127 | e << FRAC | frac))
    }

    /// The value of `bits` in `fmt`, which must be finite or infinite (not a NaN).
    pub fn from_bits(fmt: Fmt, bits: u128) -> Wide {
        match super::classify(fmt, bits) {
            super::Class::Inf => Wide::exact(if super::sign(fmt, bits) {
                -WideF::INFINITY
            } else {
                WideF::INFINITY
            }),
            _ => Wide::from_parts(super::parts(fmt, bits)),
        }
    }

    /// The result of an apfloat operation done toward zero, made odd if inexact.
    pub fn odd(r: StatusAnd<WideF>) -> Wide {
        let mut v = r.value;
        if r.status.intersects(Status::INEXACT) && v.is_finite_non_zero() {
            v = WideF::from_bits(v.to_bits() | 1);
        }
        Wide {
            v,
            invalid: r.status.intersects(Status::INVALID_OP),
            div_by_zero: r.status.intersects(Status::DIV_BY_ZERO),
        }
    }

    /// `a + b`. An exact zero sum of nonzero operands is -0 only when rounding down
    /// (IEEE 754 6.3), so the sign of a zero comes from the real rounding mode.
    pub fn add(a: Wide, b: Wide, rc: super::Rc) -> Wide {
        let r = Wide::odd(a.v.add_r(b.v, Round::TowardZero));
        if r.v.is_zero() && !r.invalid {
            return Wide::exact(a.v.add_r(b.v, rc.apfloat()).value);
        }
        r
    }

    pub fn sub(a: Wide, b: Wide, rc: super::Rc) -> Wide {
        let r = Wide::odd(a.v.sub_r(b.v, Round::TowardZero));
        if r.v.is_zero() && !r.invalid {
            return Wide::exact(a.v.sub_r(b.v, rc.apfloat()).value);
        }
        r
    }

    pub fn product(a: Wide, b: Wide) -> Wide {
        Wide::odd(a.v.mul_r(b.v, Round::TowardZero))
    }

    pub fn quotient(a: Wide, b: Wide) -> Wide {
        Wide::odd(a.v.div_r(b.v, Round::TowardZero))
    }

    /// The square root, made odd if inexact: an integer square root of the significand
    /// (apfloat has none). Negative nonzero operands are invalid.
    pub fn sqrt(a: Wide) -> Wide {
        let v = a.v;
        if v.is_zero() || (v.is_infinite() && !v.is_negative()) {
            return Wide::exact(v);
        }
        if v.is_negative() {
            return Wide {
                v: WideF::NAN,
                invalid: true,
                div_by_zero: false,
            };
        }
        // v = m * 2^(e - 108) with m the 109-bit significand (implicit bit included).
        let bits = v.to_bits();
        let e = ((bits >> FRAC) & ((1 << 19) - 1)) as i32 - BIAS;
        let m = (bits & ((1 << FRAC) - 1)) | 1 << FRAC;
        // Scale to an even exponent and 2 * 68 + bits so the root has ≥ 68 bits:
        // sqrt(m * 2^s) * 2^((e - 108 - s) / 2) with (e - 108 - s) even.
        let mut s: i32 = 255 - 108; // m << s keeps m below 2^256
        if (e - 108 - s) % 2 != 0 {
            s -= 1;
        }
        let (root, exact) = isqrt_shifted(m, s as u32);
        // root ≈ sqrt(m << s); value = root * 2^((e - 108 - s) / 2).
        let half = (e - 108 - s) / 2;
        let lead = 127 - root.leading_zeros() as i32; // bit index of the root's top bit
                                                      // Normalize the root to 109 bits (it has ≥ 109), truncating into the sticky bit.
        let drop = lead - FRAC as i32;
        let mut sig = root >> drop;
        let lost = drop > 0 && root & ((1u128 << drop) - 1) != 0;
        let inexact = !exact || lost;
        if inexact {
            sig |= 1;
        }
        let exp = half + lead;
        let out = (exp + BIAS) as u128;
        let r = out << FRAC | (sig & ((1 << FRAC) - 1));
        Wide::exact(WideF::from_bits(r))
    }
}

/// The integer square root of `m << s` (up to 256 bits) and whether it is exact.
fn isqrt_shifted(m: u128, s: u32) -> (u128, bool) {
    // The radicand as 256 bits: hi:lo.
    let (hi, lo) = if s >= 128 {
        (m << (s - 128), 0u128)
    } else if s == 0 {
        (0, m)
    } else {
        (m >> (128 - s), m << s)
    };
    // Bit by bit, high to low: the result has at most 128 bits.
    let mut root: u128 = 0;
    let mut rem_hi: u128 = 0; // the remainder, as 130-bit value spread over (rem_hi, rem_lo)
    let mut rem_lo: u128 = 0;
    for i in (0..128).rev() {
        // Bring down the next two bits of the radicand.
        let pair = if i >= 64 {
            (hi >> (2 * (i - 64))) & 3
        } else {
            (lo >> (2 * i)) & 3
        };
        // rem = rem * 4 + pair
        rem_hi = rem_hi << 2 | rem_lo >> 126;
        rem_lo = rem_lo << 2 | pair;
        // trial = root * 4 + 1 (as a 130-bit number: root < 2^128)
        let t_hi = root >> 126;
        let t_lo = root << 2 | 1;
        root <<= 1;
        if (rem_hi, rem_lo) >= (t_hi, t_lo) {
            let (l, borrow) = rem_lo.overflowing_sub(t_lo);
            rem_lo = l;
            rem_hi = rem_hi - t_hi - borrow as u128;
            root |= 1;
        }
    }
    (root, rem_hi == 0 && rem_lo == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(x: f64) -> Wide {
        Wide::from_bits(Fmt::F64, x.to_bits() as u128)
    }

    fn back(v: Wide) -> f64 {
        let r: StatusAnd<rustc_apfloat::ieee::Double> =
            rustc_apfloat::FloatConvert::convert_r(v.v, Round::NearestTiesToEven, &mut false);
        f64::from_bits(r.value.to_bits() as u64)
    }

    #[test]
    fn conversions_are_exact_and_arithmetic_rounds_once() {
        for x in [1.0, -2.5, 1e-310, 3.0e300, f64::MIN_POSITIVE, 0.1] {
            assert_eq!(back(w(x)), x);
        }
        assert_eq!(
            back(Wide::add(w(0.1), w(0.2), super::super::Rc::Nearest)),
            0.1 + 0.2
        );
        assert_eq!(back(Wide::product(w(0.1), w(3.0))), 0.1 * 3.0);
        assert_eq!(back(Wide::quotient(w(1.0), w(3.0))), 1.0 / 3.0);
    }

    #[test]
    fn square_roots_round_correctly() {
        for x in [2.0f64, 4.0, 0.5, 1e-300, 7.0e299, 1e-310, 123456.789, 3.0] {
            assert_eq!(back(Wide::sqrt(w(x))), x.sqrt(), "sqrt {x}");
        }
        let s = Wide::sqrt(w(-1.0));
        assert!(s.invalid);
        assert!(Wide::sqrt(w(-0.0)).v.is_neg_zero());
    }

    #[test]
    fn integer_square_root() {
        assert_eq!(isqrt_shifted(16, 0), (4, true));
        assert_eq!(isqrt_shifted(17, 0), (4, false));
        assert_eq!(isqrt_shifted(1, 200), (1 << 100, true));
    }
}
