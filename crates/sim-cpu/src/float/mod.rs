//! Floating-point arithmetic as x86 defines it, for the x87 FPU and SSE.
//!
//! The arithmetic itself is `rustc_apfloat` (IEEE 754 with every rounding mode and the
//! five exception flags, also on custom precisions): an operation is computed once, in
//! a [`wide`] format with 109 significand bits and an exponent range no x86 operand
//! can leave, rounded toward zero and made *odd* when inexact ("round to odd", Boldo
//! and Melquiond 2008: with at least two more bits than the target, the second
//! rounding is then correct for every target precision and rounding mode). [`round`]
//! then rounds that value once to the destination format the way x86 does: the
//! rounding control, x87 precision control, tininess detected after rounding, FTZ and
//! the masked and unmasked responses (SDM vol 1 4.9, 8.4, 8.5, 10.2.3, 11.5).
//!
//! What apfloat does not have is written here: x86's NaN rules (vol 1 4.8.3.5,
//! Table 4-7), the classification of the x87's unsupported encodings (vol 1 8.2.2),
//! and the square root (an integer square root with a sticky bit).

pub mod round;
pub mod wide;

pub use round::{round, Target};
pub use wide::Wide;

/// Exception flags, in the bit positions of FSW and MXCSR (SDM vol 1 8.1.3, 10.2.3).
pub const IE: u8 = 1;
pub const DE: u8 = 2;
pub const ZE: u8 = 4;
pub const OE: u8 = 8;
pub const UE: u8 = 16;
pub const PE: u8 = 32;

/// The rounding control of FCW and MXCSR (SDM vol 1 Table 4-8): the same encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rc {
    Nearest = 0,
    Down = 1,
    Up = 2,
    Zero = 3,
}

impl Rc {
    pub fn from_bits(v: u32) -> Rc {
        match v & 3 {
            0 => Rc::Nearest,
            1 => Rc::Down,
            2 => Rc::Up,
            _ => Rc::Zero,
        }
    }

    pub fn apfloat(self) -> rustc_apfloat::Round {
        use rustc_apfloat::Round;
        match self {
            Rc::Nearest => Round::NearestTiesToEven,
            Rc::Down => Round::TowardNegative,
            Rc::Up => Round::TowardPositive,
            Rc::Zero => Round::TowardZero,
        }
    }
}

/// The storage formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    F32,
    F64,
    F80,
}

impl Fmt {
    /// Exponent field width, bias, and explicit fraction bits.
    const fn exp_bits(self) -> u32 {
        match self {
            Fmt::F32 => 8,
            Fmt::F64 => 11,
            Fmt::F80 => 15,
        }
    }

    const fn frac_bits(self) -> u32 {
        match self {
            Fmt::F32 => 23,
            Fmt::F64 => 52,
            Fmt::F80 => 63,
        }
    }

    pub const fn bias(self) -> i32 {
        (1 << (self.exp_bits() - 1)) - 1
    }

    const fn sign_bit(self) -> u32 {
        match self {
            Fmt::F32 => 31,
            Fmt::F64 => 63,
            Fmt::F80 => 79,
        }
    }

    /// The default NaN ("real indefinite", SDM vol 1 4.8.3.7): negative, quiet, no payload.
    pub const fn indefinite(self) -> u128 {
        match self {
            Fmt::F32 => 0xffc0_0000,
            Fmt::F64 => 0xfff8_0000_0000_0000,
            Fmt::F80 => 0xffff_c000_0000_0000_0000,
        }
    }

    /// The quiet bit of a NaN's significand.
    pub const fn quiet_bit(self) -> u128 {
        1 << (self.frac_bits() - 1)
    }

    pub const fn sign_mask(self) -> u128 {
        1 << self.sign_bit()
    }
}

/// What a value is (SDM vol 1 4.8, 8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Zero,
    Denormal,
    Normal,
    Inf,
    QNan,
    SNan,
    /// An 80-bit encoding the 387 and later refuse (pseudo-NaN, pseudo-infinity,
    /// unnormal): an invalid operand.
    Unsupported,
}

/// A finite or infinite value taken apart: sign, exponent of the significand's bit
/// 63, significand (normalized, bit 63 set, unless zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub sign: bool,
    pub exp: i32,
    pub sig: u64,
}

/// Classifies `bits` in `fmt`.
pub fn classify(fmt: Fmt, bits: u128) -> Class {
    let e = (bits >> (fmt.frac_bits() + (fmt == Fmt::F80) as u32)) & ((1 << fmt.exp_bits()) - 1);
    let e_max = (1u128 << fmt.exp_bits()) - 1;
    let frac = bits & ((1u128 << fmt.frac_bits()) - 1);
    if fmt == Fmt::F80 {
        let int = bits >> 63 & 1 == 1;
        return match (e, int) {
            (0, _) if frac == 0 && !int => Class::Zero,
            // A pseudo-denormal (integer bit set, exponent 0) is a denormal operand.
            (0, _) => Class::Denormal,
            (e, true) if e == e_max && frac == 0 => Class::Inf,
            (e, true) if e == e_max => {
                if frac & fmt.quiet_bit() != 0 {
                    Class::QNan
                } else {
                    Class::SNan
                }
            }
            (_, true) => Class::Normal,
            (_, false) => Class::Unsupported,
        };
    }
    match e {
        0 if frac == 0 => Class::Zero,
        0 => Class::Denormal,
        e if e == e_max && frac == 0 => Class::Inf,
        e if e == e_max => {
            if frac & fmt.quiet_bit() != 0 {
                Class::QNan
            } else {
                Class::SNan
            }
        }
        _ => Class::Normal,
    }
}

pub fn is_nan(c: Class) -> bool {
    matches!(c, Class::QNan | Class::SNan)
}

/// The sign of `bits`.
pub fn sign(fmt: Fmt, bits: u128) -> bool {
    bits & fmt.sign_mask() != 0
}

/// A zero of `fmt` with `neg`'s sign.
pub fn zero(fmt: Fmt, neg: bool) -> u128 {
    if neg {
        fmt.sign_mask()
    } else {
        0
    }
}

/// An infinity of `fmt`.
pub fn infinity(fmt: Fmt, neg: bool) -> u128 {
    let e = ((1u128 << fmt.exp_bits()) - 1) << (fmt.frac_bits() + (fmt == Fmt::F80) as u32);
    let int = if fmt == Fmt::F80 { 1 << 63 } else { 0 };
    zero(fmt, neg) | e | int
}

/// `bits` with its quiet bit set.
pub fn quiet(fmt: Fmt, bits: u128) -> u128 {
    bits | fmt.quiet_bit()
}

/// Takes a finite nonzero or infinite value apart (denormals normalized).
pub fn parts(fmt: Fmt, bits: u128) -> Parts {
    let sign = sign(fmt, bits);
    let f = fmt.frac_bits();
    let raw_e = ((bits >> (f + (fmt == Fmt::F80) as u32)) & ((1 << fmt.exp_bits()) - 1)) as i32;
    let (mut sig, mut exp) = if fmt == Fmt::F80 {
        (bits as u64, raw_e.max(1) - fmt.bias())
    } else {
        let frac = (bits & ((1 << f) - 1)) as u64;
        if raw_e == 0 {
            (frac << (63 - f), 1 - fmt.bias())
        } else {
            (frac << (63 - f) | 1 << 63, raw_e - fmt.bias())
        }
    };
    if sig != 0 {
        let z = sig.leading_zeros();
        sig <<= z;
        exp -= z as i32;
    }
    Parts { sign, exp, sig }
}

/// x86's choice between two NaN operands, or a NaN and a number, for the x87 (SDM vol
/// 1 Table 4-7): a QNaN over an SNaN, else the larger significand (the first operand
/// on a tie), quieted. `None` when neither is a NaN.
pub fn x87_nan(a: u128, b: u128) -> Option<u128> {
    let (ca, cb) = (classify(Fmt::F80, a), classify(Fmt::F80, b));
    let q = |v: u128| quiet(Fmt::F80, v);
    match (is_nan(ca), is_nan(cb)) {
        (false, false) => None,
        (true, false) => Some(q(a)),
        (false, true) => Some(q(b)),
        (true, true) => {
            if ca == Class::QNan && cb == Class::SNan {
                Some(a)
            } else if cb == Class::QNan && ca == Class::SNan {
                Some(b)
            } else {
                let mask = (1u128 << 63) - 1;
                Some(q(if b & mask > a & mask { b } else { a }))
            }
        }
    }
}

/// SSE's choice (SDM vol 1 Table 4-7): the first source operand if it is a NaN, else
/// the second, quieted.
pub fn sse_nan(fmt: Fmt, a: u128, b: u128) -> Option<u128> {
    if is_nan(classify(fmt, a)) {
        Some(quiet(fmt, a))
    } else if is_nan(classify(fmt, b)) {
        Some(quiet(fmt, b))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_every_kind() {
        assert_eq!(classify(Fmt::F32, 0x8000_0000), Class::Zero);
        assert_eq!(classify(Fmt::F32, 1), Class::Denormal);
        assert_eq!(classify(Fmt::F32, 0x7f80_0000), Class::Inf);
        assert_eq!(classify(Fmt::F32, 0x7fc0_0000), Class::QNan);
        assert_eq!(classify(Fmt::F32, 0x7f80_0001), Class::SNan);
        assert_eq!(classify(Fmt::F64, 0x3ff0_0000_0000_0000), Class::Normal);
        assert_eq!(
            classify(Fmt::F80, 0x3fff_8000_0000_0000_0000),
            Class::Normal
        );
        assert_eq!(
            classify(Fmt::F80, 0x3fff_0000_0000_0000_0001),
            Class::Unsupported
        );
        assert_eq!(
            classify(Fmt::F80, 0x7fff_0000_0000_0000_0000),
            Class::Unsupported
        );
        assert_eq!(
            classify(Fmt::F80, 0x0000_8000_0000_0000_0000),
            Class::Denormal
        );
        assert_eq!(classify(Fmt::F80, Fmt::F80.indefinite()), Class::QNan);
        assert_eq!(infinity(Fmt::F80, true), 0xffff_8000_0000_0000_0000);
        assert_eq!(infinity(Fmt::F64, false), 0x7ff0_0000_0000_0000);
    }

    #[test]
    fn parts_normalize_denormals() {
        assert_eq!(
            parts(Fmt::F32, 1),
            Parts {
                sign: false,
                exp: -149,
                sig: 1 << 63
            }
        );
        assert_eq!(
            parts(Fmt::F64, 0x3ff0_0000_0000_0000),
            Parts {
                sign: false,
                exp: 0,
                sig: 1 << 63
            }
        );
        assert_eq!(
            parts(Fmt::F80, 0x8000_0000_0000_0000_0001),
            Parts {
                sign: true,
                exp: -16382 - 63,
                sig: 1 << 63
            }
        );
    }
}
