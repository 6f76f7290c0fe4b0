//! Integer SIMD on MMX and XMM registers (MMX, and the SSE/SSE2 integer instructions):
//! lane-wise arithmetic with wrap-around or saturation, multiplies, averages, sums of
//! absolute differences, min/max, compares, logic, packs and unpacks, shifts
//! (SDM vol 1 9.4, 10.4.4, 11.4.3; vol 2 for each).

use super::{dst, dst_class, enter, set_reg, src, width};
use crate::decode::{Handler, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use iced_x86::{Instruction, Mnemonic};

/// Applies `f` to each `n`-byte lane of `a` and `b` (`w` bytes in all).
#[inline]
fn lanes(a: u128, b: u128, w: usize, n: usize, f: impl Fn(u64, u64) -> u64) -> u128 {
    let bits = 8 * n;
    let mask = if n == 8 { u64::MAX } else { (1u64 << bits) - 1 };
    let mut out = 0u128;
    for i in 0..w / n {
        let s = bits * i;
        let x = (a >> s) as u64 & mask;
        let y = (b >> s) as u64 & mask;
        out |= ((f(x, y) & mask) as u128) << s;
    }
    out
}

/// Sign-extends the low `n` bytes of `v`.
#[inline]
fn sx(v: u64, n: usize) -> i64 {
    let s = 64 - 8 * n as u32;
    ((v << s) as i64) >> s
}

fn sat_signed(v: i64, n: usize) -> u64 {
    let max = (1i64 << (8 * n - 1)) - 1;
    v.clamp(-max - 1, max) as u64
}

fn sat_unsigned(v: i64, n: usize) -> u64 {
    let max = (1i64 << (8 * n)) - 1;
    v.clamp(0, max) as u64
}

// The binary operations, by `Op::imm2`.
const ADD: u64 = 0;
const SUB: u64 = 1;
const ADDS: u64 = 2;
const SUBS: u64 = 3;
const ADDUS: u64 = 4;
const SUBUS: u64 = 5;
const MULLW: u64 = 6;
const MULHW: u64 = 7;
const MULHUW: u64 = 8;
const MULUDQ: u64 = 9;
const MADDWD: u64 = 10;
const AVG: u64 = 11;
const SADBW: u64 = 12;
const MAXS: u64 = 13;
const MAXU: u64 = 14;
const MINS: u64 = 15;
const MINU: u64 = 16;
const CMPEQ: u64 = 17;
const CMPGT: u64 = 18;
const AND: u64 = 19;
const ANDN: u64 = 20;
const OR: u64 = 21;
const XOR: u64 = 22;
const PACKSS: u64 = 23;
const PACKUS: u64 = 24;
const UNPCKL: u64 = 25;
const UNPCKH: u64 = 26;
const SLL: u64 = 27;
const SRL: u64 = 28;
const SRA: u64 = 29;

/// `Op::imm2`: the operation in bits 0-7, the lane size in bytes in bits 8-15.
fn kind(op: &Op) -> (u64, usize) {
    (op.imm2 & 0xff, (op.imm2 >> 8) as usize)
}

/// Computes `a op b` for `w`-byte operands with `n`-byte lanes.
pub fn compute(k: u64, n: usize, a: u128, b: u128, w: usize) -> u128 {
    match k {
        ADD => lanes(a, b, w, n, |x, y| x.wrapping_add(y)),
        SUB => lanes(a, b, w, n, |x, y| x.wrapping_sub(y)),
        ADDS => lanes(a, b, w, n, |x, y| sat_signed(sx(x, n) + sx(y, n), n)),
        SUBS => lanes(a, b, w, n, |x, y| sat_signed(sx(x, n) - sx(y, n), n)),
        ADDUS => lanes(a, b, w, n, |x, y| sat_unsigned(x as i64 + y as i64, n)),
        SUBUS => lanes(a, b, w, n, |x, y| sat_unsigned(x as i64 - y as i64, n)),
        MULLW => lanes(a, b, w, 2, |x, y| x.wrapping_mul(y)),
        MULHW => lanes(a, b, w, 2, |x, y| ((sx(x, 2) * sx(y, 2)) >> 16) as u64),
        MULHUW => lanes(a, b, w, 2, |x, y| (x * y) >> 16),
        MULUDQ => lanes(a, b, w, 8, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
        MADDWD => lanes(a, b, w, 4, |x, y| {
            let p0 = sx(x & 0xffff, 2) * sx(y & 0xffff, 2);
            let p1 = sx(x >> 16, 2) * sx(y >> 16, 2);
            (p0 + p1) as u64
        }),
        AVG => lanes(a, b, w, n, |x, y| (x + y + 1) >> 1),
        SADBW => lanes(a, b, w, 8, |x, y| {
            (0..8)
                .map(|i| ((x >> (8 * i)) as u8).abs_diff((y >> (8 * i)) as u8) as u64)
                .sum()
        }),
        MAXS => lanes(a, b, w, n, |x, y| if sx(x, n) >= sx(y, n) { x } else { y }),
        MAXU => lanes(a, b, w, n, |x, y| x.max(y)),
        MINS => lanes(a, b, w, n, |x, y| if sx(x, n) <= sx(y, n) { x } else { y }),
        MINU => lanes(a, b, w, n, |x, y| x.min(y)),
        CMPEQ => lanes(a, b, w, n, |x, y| if x == y { u64::MAX } else { 0 }),
        CMPGT => lanes(
            a,
            b,
            w,
            n,
            |x, y| if sx(x, n) > sx(y, n) { u64::MAX } else { 0 },
        ),
        AND => a & b,
        ANDN => !a & b,
        OR => a | b,
        XOR => a ^ b,
        PACKSS | PACKUS => {
            // `n` is the source lane size; the results are half as wide, a's then b's.
            let half = w / 2;
            let pack = |v: u128| -> u128 {
                lanes(v, 0, w, n, |x, _| {
                    let s = sx(x, n);
                    if k == PACKSS {
                        sat_signed(s, n / 2)
                    } else {
                        sat_unsigned(s, n / 2)
                    }
                })
            };
            let squeeze = |v: u128| -> u128 {
                let mut out = 0u128;
                for i in 0..w / n {
                    let lane = (v >> (8 * n * i)) & ((1u128 << (4 * n)) - 1);
                    out |= lane << (4 * n * i);
                }
                out
            };
            squeeze(pack(a)) | squeeze(pack(b)) << (8 * half)
        }
        UNPCKL | UNPCKH => {
            let half = w / 2;
            let (x, y) = if k == UNPCKL {
                (a, b)
            } else {
                (a >> (8 * half), b >> (8 * half))
            };
            let mask = if n == 16 {
                u128::MAX
            } else {
                (1u128 << (8 * n)) - 1
            };
            let mut out = 0u128;
            for i in 0..half / n {
                let s = 8 * n * i;
                out |= ((x >> s) & mask) << (2 * s);
                out |= ((y >> s) & mask) << (2 * s + 8 * n);
            }
            if n == 8 && w == 16 {
                // PUNPCKLQDQ/HQDQ: one lane each.
                out = ((x as u64) as u128) | ((y as u64) as u128) << 64;
            }
            out
        }
        _ => {
            // Shifts by the count in `b` (the low 64 bits, unsigned).
            let count = b as u64;
            let bits = 8 * n as u64;
            match k {
                SLL => lanes(
                    a,
                    0,
                    w,
                    n,
                    |x, _| if count >= bits { 0 } else { x << count },
                ),
                SRL => lanes(
                    a,
                    0,
                    w,
                    n,
                    |x, _| if count >= bits { 0 } else { x >> count },
                ),
                _ => lanes(a, 0, w, n, |x, _| (sx(x, n) >> count.min(bits - 1)) as u64),
            }
        }
    }
}

/// The two-operand forms: dst = dst op src (src from a register or memory).
fn binary(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let w = width(op);
    let b = src(x, op, w)?;
    let a = dst(x, op);
    let (k, n) = kind(op);
    let v = compute(k, n, a, b, w);
    set_reg(x, dst_class(op), op.r, w, v);
    Ok(())
}

/// The shift-by-immediate forms (PSLLW mm, imm8...): the register is `r`.
fn shift_imm(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let w = width(op);
    let a = dst(x, op);
    let (k, n) = kind(op);
    let v = compute(k, n, a, op.imm as u128, w);
    set_reg(x, dst_class(op), op.r, w, v);
    Ok(())
}

/// PSLLDQ/PSRLDQ: the whole register shifted by bytes (16 or more clears it).
fn shift_bytes(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let a = dst(x, op);
    let n = op.imm.min(16) as u32 * 8;
    let v = if n == 128 {
        0
    } else if op.imm2 == SLL {
        a << n
    } else {
        a >> n
    };
    set_reg(x, dst_class(op), op.r, 16, v);
    Ok(())
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let (k, n) = match ins.mnemonic() {
        M::Paddb => (ADD, 1),
        M::Paddw => (ADD, 2),
        M::Paddd => (ADD, 4),
        M::Paddq => (ADD, 8),
        M::Psubb => (SUB, 1),
        M::Psubw => (SUB, 2),
        M::Psubd => (SUB, 4),
        M::Psubq => (SUB, 8),
        M::Paddsb => (ADDS, 1),
        M::Paddsw => (ADDS, 2),
        M::Psubsb => (SUBS, 1),
        M::Psubsw => (SUBS, 2),
        M::Paddusb => (ADDUS, 1),
        M::Paddusw => (ADDUS, 2),
        M::Psubusb => (SUBUS, 1),
        M::Psubusw => (SUBUS, 2),
        M::Pmullw => (MULLW, 2),
        M::Pmulhw => (MULHW, 2),
        M::Pmulhuw => (MULHUW, 2),
        M::Pmuludq => (MULUDQ, 8),
        M::Pmaddwd => (MADDWD, 4),
        M::Pavgb => (AVG, 1),
        M::Pavgw => (AVG, 2),
        M::Psadbw => (SADBW, 8),
        M::Pmaxsw => (MAXS, 2),
        M::Pmaxub => (MAXU, 1),
        M::Pminsw => (MINS, 2),
        M::Pminub => (MINU, 1),
        M::Pcmpeqb => (CMPEQ, 1),
        M::Pcmpeqw => (CMPEQ, 2),
        M::Pcmpeqd => (CMPEQ, 4),
        M::Pcmpgtb => (CMPGT, 1),
        M::Pcmpgtw => (CMPGT, 2),
        M::Pcmpgtd => (CMPGT, 4),
        M::Pand | M::Andps | M::Andpd => (AND, 16),
        M::Pandn | M::Andnps | M::Andnpd => (ANDN, 16),
        M::Por | M::Orps | M::Orpd => (OR, 16),
        M::Pxor | M::Xorps | M::Xorpd => (XOR, 16),
        M::Packsswb => (PACKSS, 2),
        M::Packssdw => (PACKSS, 4),
        M::Packuswb => (PACKUS, 2),
        M::Punpcklbw => (UNPCKL, 1),
        M::Punpcklwd => (UNPCKL, 2),
        M::Punpckldq | M::Unpcklps => (UNPCKL, 4),
        M::Punpcklqdq | M::Unpcklpd => (UNPCKL, 8),
        M::Punpckhbw => (UNPCKH, 1),
        M::Punpckhwd => (UNPCKH, 2),
        M::Punpckhdq | M::Unpckhps => (UNPCKH, 4),
        M::Punpckhqdq | M::Unpckhpd => (UNPCKH, 8),
        M::Psllw => (SLL, 2),
        M::Pslld => (SLL, 4),
        M::Psllq => (SLL, 8),
        M::Psrlw => (SRL, 2),
        M::Psrld => (SRL, 4),
        M::Psrlq => (SRL, 8),
        M::Psraw => (SRA, 2),
        M::Psrad => (SRA, 4),
        M::Pslldq => {
            op.imm2 = SLL;
            return Some(shift_bytes);
        }
        M::Psrldq => {
            op.imm2 = SRL;
            return Some(shift_bytes);
        }
        _ => return None,
    };
    op.imm2 = k | (n as u64) << 8;
    let by_imm = ins.op_count() == 2 && ins.op_kind(1) == iced_x86::OpKind::Immediate8;
    Some(if by_imm { shift_imm } else { binary })
}
