//! SSE and SSE2 conversions between integers, single and double precision, on XMM,
//! MMX and general registers (SDM vol 2 CVT*; vol 1 11.5.2 for the flags): rounding
//! by MXCSR or truncating (the CVTT forms), the integer indefinite for NaNs and values
//! out of range, quieted NaNs, DAZ and FTZ.

use super::fp::{daz, mode, report};
use super::{dst, dst_class, enter, set_reg, src, src_class, SimdClass};
use crate::decode::{Handler, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::float::round::{round, Mode, Target};
use crate::float::wide::Wide;
use crate::float::{self, Class, Fmt, Parts, DE, IE, PE};
use iced_x86::{Instruction, Mnemonic};

/// A NaN of `from` as a quiet NaN of `to` (the payload's top bits kept).
fn convert_nan(from: Fmt, to: Fmt, bits: u128) -> u128 {
    let (fb, tb) = (frac_bits(from), frac_bits(to));
    let frac = bits & ((1 << fb) - 1);
    let frac = if tb >= fb {
        frac << (tb - fb)
    } else {
        frac >> (fb - tb)
    };
    float::infinity(to, float::sign(from, bits)) | frac | to.quiet_bit()
}

fn frac_bits(f: Fmt) -> u32 {
    match f {
        Fmt::F32 => 23,
        _ => 52,
    }
}

fn target(f: Fmt) -> Target {
    if f == Fmt::F32 {
        Target::F32
    } else {
        Target::F64
    }
}

/// A float lane to another float format.
fn float_to_float(x: &Exec, from: Fmt, to: Fmt, bits: u128, m: Mode) -> (u128, u8) {
    let bits = daz(x, from, bits);
    match float::classify(from, bits) {
        Class::QNan => (convert_nan(from, to, bits), 0),
        Class::SNan => (convert_nan(from, to, bits), IE),
        Class::Zero => (float::zero(to, float::sign(from, bits)), 0),
        Class::Inf => (float::infinity(to, float::sign(from, bits)), 0),
        c => {
            let de = if c == Class::Denormal { DE } else { 0 };
            let r = round(Wide::from_bits(from, bits), target(to), m);
            (r.bits, r.flags | de)
        }
    }
}

/// A float lane to a signed integer of `width` bits: rounded by MXCSR, or truncated.
fn float_to_int(
    x: &Exec,
    from: Fmt,
    bits: u128,
    width: usize,
    truncate: bool,
    m: Mode,
) -> (u64, u8) {
    let indefinite = 1u64 << (width - 1);
    let bits = daz(x, from, bits);
    match float::classify(from, bits) {
        Class::QNan | Class::SNan | Class::Inf => return (indefinite, IE),
        Class::Zero => return (0, 0),
        _ => {}
    }
    let w = Wide::from_bits(from, bits);
    let rc = if truncate { float::Rc::Zero } else { m.rc };
    let mut exact = false;
    let r = rustc_apfloat::Float::to_i128_r(w.v, width, rc.apfloat(), &mut exact);
    if r.status.intersects(rustc_apfloat::Status::INVALID_OP) {
        return (indefinite, IE);
    }
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    (r.value as u64 & mask, if exact { 0 } else { PE })
}

/// A signed integer to a float lane.
fn int_to_float(v: i64, to: Fmt, m: Mode) -> (u128, u8) {
    if v == 0 {
        return (0, 0);
    }
    let mag = v.unsigned_abs();
    let z = mag.leading_zeros();
    let w = Wide::from_parts(Parts {
        sign: v < 0,
        exp: 63 - z as i32,
        sig: mag << z,
    });
    let r = round(w, target(to), m);
    (r.bits, r.flags)
}

/// What a conversion reads and writes (`Op::imm2`).
#[derive(Clone, Copy)]
enum Conv {
    /// CVTSI2SS/SD: a general register or memory integer into lane 0.
    IntToScalar(Fmt),
    /// CVT(T)SS2SI, CVT(T)SD2SI: lane 0 into a general register.
    ScalarToInt(Fmt, bool),
    /// CVTSS2SD, CVTSD2SS: lane 0 to lane 0, the rest of the destination kept.
    Scalar(Fmt, Fmt),
    /// CVTPS2PD, CVTPD2PS: the low lanes; a narrowing result clears the upper half.
    Packed(Fmt, Fmt),
    /// CVTDQ2PS, CVTDQ2PD, CVTPI2PS, CVTPI2PD: dwords to floats.
    IntsToFloats(Fmt),
    /// CVT(T)PS2DQ, CVT(T)PD2DQ, CVT(T)PS2PI, CVT(T)PD2PI: floats to dwords.
    FloatsToInts(Fmt, bool),
}

fn conv(op: &Op) -> Conv {
    let f = |b: u64| if b & 1 != 0 { Fmt::F64 } else { Fmt::F32 };
    let t = op.imm2 & 0x100 != 0;
    match op.imm2 >> 4 & 0xf {
        0 => Conv::IntToScalar(f(op.imm2)),
        1 => Conv::ScalarToInt(f(op.imm2), t),
        2 => Conv::Scalar(f(op.imm2), f(op.imm2 >> 1)),
        3 => Conv::Packed(f(op.imm2), f(op.imm2 >> 1)),
        4 => Conv::IntsToFloats(f(op.imm2)),
        _ => Conv::FloatsToInts(f(op.imm2), t),
    }
}

fn size(f: Fmt) -> usize {
    if f == Fmt::F32 {
        4
    } else {
        8
    }
}

fn lane_mask(n: usize) -> u128 {
    (1u128 << (8 * n)) - 1
}

fn convert(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let m = mode(x);
    let mut flags = 0u8;
    match conv(op) {
        Conv::IntToScalar(to) => {
            let w = op.size as usize;
            let v = src(x, op, w)?;
            let v = if w == 8 {
                v as u64 as i64
            } else {
                v as u32 as i32 as i64
            };
            let (r, f) = int_to_float(v, to, m);
            flags |= f;
            report(x, flags, 0)?;
            let n = size(to);
            let d = (dst(x, op) & !lane_mask(n)) | r;
            x.cpu.xmm[op.r as usize] = d;
        }
        Conv::ScalarToInt(from, t) => {
            let n = size(from);
            let v = src(x, op, n)? & lane_mask(n);
            let width = 8 * op.size as usize;
            let (r, f) = float_to_int(x, from, v, width, t, m);
            report(x, f, f & IE)?;
            x.set_reg(op.r, op.size as usize, r);
        }
        Conv::Scalar(from, to) => {
            let (ni, no) = (size(from), size(to));
            let v = src(x, op, ni)? & lane_mask(ni);
            let (r, f) = float_to_float(x, from, to, v, m);
            report(x, f, f & (IE | DE))?;
            let d = (dst(x, op) & !lane_mask(no)) | r;
            x.cpu.xmm[op.r as usize] = d;
        }
        Conv::Packed(from, to) => {
            let (ni, no) = (size(from), size(to));
            // Two lanes either way: CVTPS2PD reads 8 bytes, CVTPD2PS 16.
            let v = src(x, op, 2 * ni)?;
            let mut out = 0u128;
            let mut pre = 0;
            for i in 0..2 {
                let (r, f) = float_to_float(x, from, to, (v >> (8 * ni * i)) & lane_mask(ni), m);
                out |= r << (8 * no * i);
                flags |= f;
                pre |= f & (IE | DE);
            }
            report(x, flags, pre)?;
            x.cpu.xmm[op.r as usize] = out;
        }
        Conv::IntsToFloats(to) => {
            let no = size(to);
            let lanes = if to == Fmt::F32 && src_class(op) != SimdClass::Mmx && op.size != 8 {
                4
            } else {
                2
            };
            let v = src(x, op, 4 * lanes)?;
            let mut out = 0u128;
            for i in 0..lanes {
                let (r, f) = int_to_float((v >> (32 * i)) as u32 as i32 as i64, to, m);
                out |= r << (8 * no * i);
                flags |= f;
            }
            report(x, flags, 0)?;
            let d = dst_class(op);
            let written = lanes * no;
            let merged = if written < 16 && d == SimdClass::Xmm && op.imm == 1 {
                // CVTPI2PS keeps the destination's upper half.
                (dst(x, op) & !lane_mask(written)) | out
            } else {
                out
            };
            set_reg(x, d, op.r, 16, merged);
        }
        Conv::FloatsToInts(from, t) => {
            let ni = size(from);
            let lanes = if dst_class(op) == SimdClass::Mmx {
                2
            } else {
                16 / ni
            };
            let v = src(
                x,
                op,
                (lanes * ni)
                    .max(if from == Fmt::F64 { 16 } else { 0 })
                    .min(16),
            )?;
            let mut out = 0u128;
            let mut pre = 0;
            for i in 0..lanes {
                let (r, f) = float_to_int(x, from, (v >> (8 * ni * i)) & lane_mask(ni), 32, t, m);
                out |= (r as u128) << (32 * i);
                flags |= f;
                pre |= f & IE;
            }
            report(x, flags, pre)?;
            set_reg(x, dst_class(op), op.r, 16, out);
        }
    }
    Ok(())
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    // imm2: bits 4-7 the shape, bit 0 the source format (1: double), bit 1 the
    // destination's, bit 8 truncation.
    const D: u64 = 1;
    const TD: u64 = 2;
    const T: u64 = 0x100;
    let (shape, bits) = match ins.mnemonic() {
        M::Cvtsi2ss => (0, 0),
        M::Cvtsi2sd => (0, D),
        M::Cvtss2si => (1, 0),
        M::Cvttss2si => (1, T),
        M::Cvtsd2si => (1, D),
        M::Cvttsd2si => (1, D | T),
        M::Cvtss2sd => (2, TD),
        M::Cvtsd2ss => (2, D),
        M::Cvtps2pd => (3, TD),
        M::Cvtpd2ps => (3, D),
        M::Cvtdq2ps | M::Cvtpi2ps => (4, 0),
        M::Cvtdq2pd | M::Cvtpi2pd => (4, D),
        M::Cvtps2dq | M::Cvtps2pi => (5, 0),
        M::Cvttps2dq | M::Cvttps2pi => (5, T),
        M::Cvtpd2dq | M::Cvtpd2pi => (5, D),
        M::Cvttpd2dq | M::Cvttpd2pi => (5, D | T),
        _ => return None,
    };
    op.imm2 = shape << 4 | bits;
    // CVTPI2PS merges into the destination's upper half; CVTDQ2PD and CVTPI2PD write
    // two doubles, the whole register.
    op.imm = (ins.mnemonic() == M::Cvtpi2ps) as u64;
    Some(convert)
}
