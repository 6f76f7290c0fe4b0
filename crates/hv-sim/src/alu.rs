//! Integer arithmetic with the flags the hardware sets, as pure functions.
//!
//! Sizes are in bytes (1, 2, 4, 8). Every function returns the result (masked to the
//! size) and the new arithmetic flags; callers merge them into RFLAGS with [`merge`].
//! Where the SDM leaves a flag undefined we return what current Intel and AMD cores do
//! for the common cases; the differential tests compare only the defined flags.

pub const CF: u64 = 1 << 0;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const TF: u64 = 1 << 8;
pub const IF: u64 = 1 << 9;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
/// The six arithmetic flags.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

/// Mask of a `size`-byte value.
#[inline(always)]
pub fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// The sign bit of a `size`-byte value.
#[inline(always)]
pub fn sign_bit(size: usize) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Sign-extends a `size`-byte value to 64 bits.
#[inline(always)]
pub fn sext(v: u64, size: usize) -> u64 {
    let shift = 64 - size * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// Replaces the flags in `which` with `new`.
#[inline(always)]
pub fn merge(rflags: u64, new: u64, which: u64) -> u64 {
    (rflags & !which) | (new & which)
}

#[inline(always)]
fn szp(res: u64, size: usize) -> u64 {
    let mut f = 0;
    if res & mask(size) == 0 {
        f |= ZF;
    }
    if res & sign_bit(size) != 0 {
        f |= SF;
    }
    if (res as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

/// ADD / ADC.
#[inline]
pub fn add(size: usize, a: u64, b: u64, carry: bool) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let c = carry as u64;
    let wide = (a as u128) + (b as u128) + (c as u128);
    let res = (wide as u64) & m;
    let mut f = szp(res, size);
    if wide > m as u128 {
        f |= CF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= AF;
    }
    if (!(a ^ b) & (a ^ res)) & sign_bit(size) != 0 {
        f |= OF;
    }
    (res, f)
}

/// SUB / SBB / CMP.
#[inline]
pub fn sub(size: usize, a: u64, b: u64, borrow: bool) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let c = borrow as u64;
    let res = a.wrapping_sub(b).wrapping_sub(c) & m;
    let mut f = szp(res, size);
    if (a as u128) < (b as u128) + (c as u128) {
        f |= CF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= AF;
    }
    if ((a ^ b) & (a ^ res)) & sign_bit(size) != 0 {
        f |= OF;
    }
    (res, f)
}

/// AND / OR / XOR / TEST: CF = OF = 0, AF cleared (as Intel and AMD do).
#[inline]
pub fn logic(size: usize, res: u64) -> (u64, u64) {
    let res = res & mask(size);
    (res, szp(res, size))
}

/// INC: like ADD 1 but CF is preserved (returns flags without CF; merge with ARITH & !CF).
#[inline]
pub fn inc(size: usize, a: u64) -> (u64, u64) {
    let (r, f) = add(size, a, 1, false);
    (r, f & !CF)
}

/// DEC: like SUB 1 but CF is preserved.
#[inline]
pub fn dec(size: usize, a: u64) -> (u64, u64) {
    let (r, f) = sub(size, a, 1, false);
    (r, f & !CF)
}

/// NEG: 0 - a, CF = (a != 0).
#[inline]
pub fn neg(size: usize, a: u64) -> (u64, u64) {
    sub(size, 0, a, false)
}

/// The masked shift count, as the hardware computes it.
#[inline]
pub fn shift_count(size: usize, count: u64) -> u32 {
    (count & if size == 8 { 0x3f } else { 0x1f }) as u32
}

/// Shifts and rotates. `kind`: 0 ROL, 1 ROR, 2 RCL, 3 RCR, 4 SHL, 5 SHR, 7 SAR (the
/// ModRM reg field). Returns `None` when the masked count is 0 (nothing changes),
/// else the result, the new flags and the mask of flags the operation defines.
pub fn shift(size: usize, kind: u8, a: u64, count: u64, rflags: u64) -> Option<(u64, u64, u64)> {
    let bits = (size * 8) as u32;
    let m = mask(size);
    let a = a & m;
    let n = shift_count(size, count);
    if n == 0 {
        return None;
    }
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let cf_in = rflags & CF;
    match kind {
        0 | 1 => {
            let r = n % bits;
            let res = if kind == 0 {
                ((a << r) | if r == 0 { 0 } else { a >> (bits - r) }) & m
            } else {
                ((a >> r) | if r == 0 { 0 } else { a << (bits - r) }) & m
            };
            let cf = if kind == 0 { res & 1 } else { msb(res) };
            let of = if kind == 0 {
                msb(res) ^ cf
            } else {
                msb(res) ^ ((res >> (bits - 2)) & 1)
            };
            let f = (if cf != 0 { CF } else { 0 }) | (if of != 0 { OF } else { 0 });
            Some((res, f, CF | OF))
        }
        2 | 3 => {
            // Rotate through carry: a (bits+1)-bit rotation.
            let r = n % (bits + 1);
            let mut v = a;
            let mut cf = cf_in;
            for _ in 0..r {
                if kind == 2 {
                    let out = msb(v);
                    v = ((v << 1) | cf) & m;
                    cf = out;
                } else {
                    let out = v & 1;
                    v = (v >> 1) | (cf << (bits - 1));
                    cf = out;
                }
            }
            let of = if kind == 2 {
                msb(v) ^ cf
            } else {
                msb(v) ^ ((v >> (bits - 2)) & 1)
            };
            let f = (if cf != 0 { CF } else { 0 }) | (if of != 0 { OF } else { 0 });
            Some((v, f, CF | OF))
        }
        4 | 6 => {
            let res = if n >= bits { 0 } else { (a << n) & m };
            let cf = if n > bits { 0 } else { (a >> (bits - n)) & 1 };
            let mut f = szp(res, size) | if cf != 0 { CF } else { 0 };
            if msb(res) ^ cf != 0 {
                f |= OF;
            }
            Some((res, f, ARITH & !AF))
        }
        5 => {
            let res = if n >= bits { 0 } else { a >> n };
            let cf = if n > bits { 0 } else { (a >> (n - 1)) & 1 };
            let mut f = szp(res, size) | if cf != 0 { CF } else { 0 };
            if msb(a) != 0 {
                f |= OF;
            }
            Some((res, f, ARITH & !AF))
        }
        _ => {
            let sa = sext(a, size) as i64;
            let res = (sa >> n.min(63)) as u64 & m;
            let cf = ((sa >> (n - 1).min(63)) & 1) as u64;
            let f = szp(res, size) | if cf != 0 { CF } else { 0 };
            Some((res, f, ARITH & !AF))
        }
    }
}

/// Unsigned MUL: (low, high, flags). CF = OF = (high != 0).
pub fn mul(size: usize, a: u64, b: u64) -> (u64, u64, u64) {
    let m = mask(size);
    let wide = (a & m) as u128 * (b & m) as u128;
    let bits = size * 8;
    let lo = wide as u64 & m;
    let hi = (wide >> bits) as u64 & m;
    let f = if hi != 0 { CF | OF } else { 0 };
    (lo, hi, f | szp(lo, size))
}

/// Signed IMUL: (low, high, flags). CF = OF = (result does not fit in `size`).
pub fn imul(size: usize, a: u64, b: u64) -> (u64, u64, u64) {
    let m = mask(size);
    let wide = sext(a, size) as i64 as i128 * sext(b, size) as i64 as i128;
    let bits = size * 8;
    let lo = wide as u64 & m;
    let hi = (wide >> bits) as u64 & m;
    let fits = sext(lo, size) as i64 as i128 == wide;
    let f = if fits { 0 } else { CF | OF };
    (lo, hi, f | szp(lo, size))
}

/// Unsigned DIV of hi:lo by `d`: `None` on #DE (zero divisor or quotient overflow).
pub fn div(size: usize, hi: u64, lo: u64, d: u64) -> Option<(u64, u64)> {
    let m = mask(size);
    let bits = size * 8;
    let d = (d & m) as u128;
    if d == 0 {
        return None;
    }
    let n = (((hi & m) as u128) << bits) | (lo & m) as u128;
    let q = n / d;
    if q > m as u128 {
        return None;
    }
    Some((q as u64, (n % d) as u64))
}

/// Signed IDIV of hi:lo by `d`: `None` on #DE.
pub fn idiv(size: usize, hi: u64, lo: u64, d: u64) -> Option<(u64, u64)> {
    let m = mask(size);
    let bits = size * 8;
    let d = sext(d, size) as i64 as i128;
    if d == 0 {
        return None;
    }
    let n_u = (((hi & m) as u128) << bits) | (lo & m) as u128;
    let n = ((n_u << (128 - 2 * bits)) as i128) >> (128 - 2 * bits);
    let q = n.checked_div(d)?;
    let r = n % d;
    let min = -(1i128 << (bits - 1));
    let max = (1i128 << (bits - 1)) - 1;
    if q < min || q > max {
        return None;
    }
    Some((q as u64 & m, r as u64 & m))
}

/// Evaluates a condition code (the low nibble of Jcc/SETcc/CMOVcc opcodes).
#[inline]
pub fn condition(cc: u8, f: u64) -> bool {
    let cf = f & CF != 0;
    let zf = f & ZF != 0;
    let sf = f & SF != 0;
    let of = f & OF != 0;
    let pf = f & PF != 0;
    let r = match cc >> 1 {
        0 => of,
        1 => cf,
        2 => zf,
        3 => cf || zf,
        4 => sf,
        5 => pf,
        6 => sf != of,
        _ => zf || sf != of,
    };
    r ^ (cc & 1 != 0)
}
