//! RFLAGS with lazily computed arithmetic flags.
//!
//! Most instructions set all six arithmetic flags and most of those flags are never
//! read: an ALU instruction records its operands and result and the kind of operation,
//! and a flag is computed only when something reads it (a Jcc, PUSHF, an exception,
//! the VMM). Bochs and QEMU keep flags the same way. The definitions are the SDM's
//! (vol 1 3.4.3 and each instruction's "Flags Affected").

pub const CF: u64 = 1 << 0;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const TF: u64 = 1 << 8;
pub const IF: u64 = 1 << 9;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
pub const IOPL: u64 = 3 << 12;
pub const NT: u64 = 1 << 14;
pub const RF: u64 = 1 << 16;
pub const VM: u64 = 1 << 17;
pub const AC: u64 = 1 << 18;
pub const VIF: u64 = 1 << 19;
pub const VIP: u64 = 1 << 20;
pub const ID: u64 = 1 << 21;
/// The six arithmetic flags.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
/// Bits that exist (the rest read as 0, bit 1 as 1).
pub const DEFINED: u64 = ARITH | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID | 2;

/// What produced the pending arithmetic flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlagOp {
    /// Every flag is in `bits`.
    Eager,
    /// ADD (and ADC with no carry in): res = a + b.
    Add,
    /// ADC with a carry in: res = a + b + 1.
    Adc,
    /// SUB, CMP, NEG (and SBB with no borrow in): res = a - b.
    Sub,
    /// SBB with a borrow in: res = a - b - 1.
    Sbb,
    /// AND, OR, XOR, TEST: CF = OF = 0.
    Logic,
    /// INC: res = a + 1, CF kept in `bits`.
    Inc,
    /// DEC: res = a - 1, CF kept in `bits`.
    Dec,
}

/// RFLAGS: `bits` holds every flag except the arithmetic ones `op` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub bits: u64,
    pub op: FlagOp,
    /// Operand size in bytes.
    pub size: u8,
    /// Result and operands, masked to `size`.
    pub res: u64,
    pub a: u64,
    pub b: u64,
}

#[inline(always)]
pub fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

#[inline(always)]
pub fn sign_bit(size: usize) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Sign-extends a `size`-byte value.
#[inline(always)]
pub fn sext(v: u64, size: usize) -> u64 {
    let shift = 64 - size * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// PF: set when the low byte of the result has an even number of set bits.
#[inline(always)]
pub fn parity(v: u64) -> bool {
    (v as u8).count_ones() & 1 == 0
}

impl Flags {
    pub fn new(bits: u64) -> Self {
        Flags {
            bits: (bits & DEFINED) | 2,
            op: FlagOp::Eager,
            size: 1,
            res: 0,
            a: 0,
            b: 0,
        }
    }

    /// The whole RFLAGS value.
    #[inline]
    pub fn get(&self) -> u64 {
        if self.op == FlagOp::Eager {
            return self.bits;
        }
        let mut f = self.bits & !ARITH;
        if self.cf() {
            f |= CF;
        }
        if self.pf() {
            f |= PF;
        }
        if self.af() {
            f |= AF;
        }
        if self.zf() {
            f |= ZF;
        }
        if self.sf() {
            f |= SF;
        }
        if self.of() {
            f |= OF;
        }
        f
    }

    /// Replaces the whole value.
    #[inline]
    pub fn set(&mut self, v: u64) {
        self.bits = (v & DEFINED) | 2;
        self.op = FlagOp::Eager;
    }

    /// Makes `bits` hold every flag.
    #[inline]
    pub fn materialize(&mut self) {
        if self.op != FlagOp::Eager {
            self.bits = self.get();
            self.op = FlagOp::Eager;
        }
    }

    /// Records an arithmetic result of `op` over `a` and `b` (already masked).
    #[inline(always)]
    pub fn record(&mut self, op: FlagOp, size: usize, res: u64, a: u64, b: u64) {
        self.op = op;
        self.size = size as u8;
        self.res = res;
        self.a = a;
        self.b = b;
    }

    /// INC/DEC: the carry flag stays as it was, so it moves into `bits` first.
    #[inline(always)]
    pub fn record_keep_cf(&mut self, op: FlagOp, size: usize, res: u64, a: u64) {
        let cf = self.cf();
        self.bits = (self.bits & !CF) | cf as u64;
        self.record(op, size, res, a, 1);
    }

    /// Sets the arithmetic flags in `which` to those of `new`, all others computed
    /// first (shifts, multiplies and other instructions that compute their flags).
    #[inline]
    pub fn set_arith(&mut self, new: u64, which: u64) {
        self.materialize();
        self.bits = (self.bits & !which) | (new & which);
    }

    #[inline]
    pub fn cf(&self) -> bool {
        match self.op {
            FlagOp::Add => self.res < self.a,
            FlagOp::Adc => self.res <= self.a,
            FlagOp::Sub => self.a < self.b,
            FlagOp::Sbb => self.a <= self.b,
            FlagOp::Logic => false,
            FlagOp::Eager | FlagOp::Inc | FlagOp::Dec => self.bits & CF != 0,
        }
    }

    #[inline]
    pub fn zf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & ZF != 0,
            _ => self.res == 0,
        }
    }

    #[inline]
    pub fn sf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & SF != 0,
            _ => self.res & sign_bit(self.size as usize) != 0,
        }
    }

    #[inline]
    pub fn pf(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & PF != 0,
            _ => parity(self.res),
        }
    }

    #[inline]
    pub fn af(&self) -> bool {
        match self.op {
            FlagOp::Eager => self.bits & AF != 0,
            FlagOp::Add | FlagOp::Adc | FlagOp::Sub | FlagOp::Sbb => {
                (self.a ^ self.b ^ self.res) & 0x10 != 0
            }
            FlagOp::Inc => self.res & 0xf == 0,
            FlagOp::Dec => self.res & 0xf == 0xf,
            FlagOp::Logic => false,
        }
    }

    #[inline]
    pub fn of(&self) -> bool {
        let sign = sign_bit(self.size as usize);
        match self.op {
            FlagOp::Eager => self.bits & OF != 0,
            FlagOp::Add | FlagOp::Adc => (self.a ^ self.res) & (self.b ^ self.res) & sign != 0,
            FlagOp::Sub | FlagOp::Sbb => (self.a ^ self.b) & (self.a ^ self.res) & sign != 0,
            FlagOp::Inc => self.res == sign,
            FlagOp::Dec => self.res == sign - 1,
            FlagOp::Logic => false,
        }
    }

    /// Evaluates condition code `CC` (the low nibble of Jcc/SETcc/CMOVcc), with the
    /// common cases decided straight from a compare's operands. A constant: each Jcc,
    /// SETcc and CMOVcc gets its own copy with only its flags' computations.
    #[inline(always)]
    pub fn holds<const CC: u8>(&self) -> bool {
        self.evaluate(CC)
    }

    #[inline(always)]
    fn evaluate(&self, cc: u8) -> bool {
        if self.op == FlagOp::Sub {
            let size = self.size as usize;
            let (a, b) = (self.a, self.b);
            let (sa, sb) = (sext(a, size) as i64, sext(b, size) as i64);
            let r = match cc >> 1 {
                1 => a < b,
                2 => a == b,
                3 => a <= b,
                6 => sa < sb,
                7 => sa <= sb,
                _ => return self.condition_slow(cc),
            };
            return r ^ (cc & 1 != 0);
        }
        self.condition_slow(cc)
    }

    #[inline(always)]
    fn condition_slow(&self, cc: u8) -> bool {
        let r = match cc >> 1 {
            0 => self.of(),
            1 => self.cf(),
            2 => self.zf(),
            3 => self.cf() || self.zf(),
            4 => self.sf(),
            5 => self.pf(),
            6 => self.sf() != self.of(),
            _ => self.zf() || self.sf() != self.of(),
        };
        r ^ (cc & 1 != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every lazily computed flag against a direct computation of the SDM's definition.
    #[test]
    fn lazy_flags_equal_the_definitions() {
        let values = [
            0u64,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            u64::MAX >> 1,
            1 << 63,
            u64::MAX,
        ];
        for size in [1usize, 2, 4, 8] {
            let m = mask(size);
            for &a in &values {
                for &b in &values {
                    let (a, b) = (a & m, b & m);
                    for (op, carry) in [
                        (FlagOp::Add, 0u64),
                        (FlagOp::Adc, 1),
                        (FlagOp::Sub, 0),
                        (FlagOp::Sbb, 1),
                    ] {
                        let add = matches!(op, FlagOp::Add | FlagOp::Adc);
                        let wide: i128 = if add {
                            a as i128 + b as i128 + carry as i128
                        } else {
                            a as i128 - b as i128 - carry as i128
                        };
                        let res = (wide as u64) & m;
                        let mut f = Flags::new(2);
                        f.record(op, size, res, a, b);
                        assert_eq!(
                            f.cf(),
                            wide < 0 || wide > m as i128,
                            "cf {op:?} {size} {a:#x} {b:#x}"
                        );
                        let sa = sext(a, size) as i64 as i128;
                        let sb = sext(b, size) as i64 as i128;
                        let sw = if add {
                            sa + sb + carry as i128
                        } else {
                            sa - sb - carry as i128
                        };
                        let min = -(1i128 << (size * 8 - 1));
                        let max = (1i128 << (size * 8 - 1)) - 1;
                        assert_eq!(
                            f.of(),
                            sw < min || sw > max,
                            "of {op:?} {size} {a:#x} {b:#x}"
                        );
                        assert_eq!(f.zf(), res == 0);
                        assert_eq!(f.af(), ((a ^ b ^ res) & 0x10) != 0);
                        if op == FlagOp::Sub {
                            for cc in 0..16u8 {
                                assert_eq!(
                                    f.evaluate(cc),
                                    f.condition_slow(cc),
                                    "cc {cc} {a:#x} {b:#x} {size}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn inc_and_dec_keep_the_carry_flag() {
        let mut f = Flags::new(2);
        f.record(FlagOp::Sub, 4, 0xffff_ffff, 0, 1); // CF = 1
        f.record_keep_cf(FlagOp::Inc, 4, 0x8000_0000, 0x7fff_ffff);
        assert!(f.cf());
        assert!(f.of());
        assert!(f.sf());
        f.record_keep_cf(FlagOp::Dec, 1, 0x7f, 0x80);
        assert!(f.cf() && f.of() && f.af());
        assert_eq!(f.get() & CF, CF);
    }
}
