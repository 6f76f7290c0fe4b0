//! SSE and SSE2 floating point: ADD, SUB, MUL, DIV, SQRT, MIN, MAX, RCP, RSQRT, CMP in
//! packed and scalar single and double precision, and (U)COMISS/SD. The arithmetic is
//! the `float` module's, with MXCSR's rounding, masks, FTZ and DAZ; exceptions of every
//! lane are gathered, and an unmasked one leaves the destination alone and raises
//! #XM (SDM vol 1 11.5).

use super::{dst, enter_sse, simd_exception, src};
use crate::decode::{Handler, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::flags::{ARITH, CF, PF, ZF};
use crate::float::round::{round, Mode, Target};
use crate::float::wide::Wide;
use crate::float::{self, Class, Fmt, Rc, DE, IE, ZE};
use iced_x86::{Instruction, Mnemonic};

pub const MXCSR_DAZ: u32 = 1 << 6;
pub const MXCSR_FTZ: u32 = 1 << 15;

/// MXCSR as a rounding mode.
pub fn mode(x: &Exec) -> Mode {
    let m = x.cpu.mxcsr;
    Mode {
        rc: Rc::from_bits(m >> 13),
        masks: ((m >> 7) & 0x3f) as u8,
        ftz: m & MXCSR_FTZ != 0,
    }
}

/// DAZ: a denormal operand reads as a zero of its sign (SDM vol 1 10.2.3.4).
#[inline]
pub fn daz(x: &Exec, fmt: Fmt, v: u128) -> u128 {
    if x.cpu.mxcsr & MXCSR_DAZ != 0 && float::classify(fmt, v) == Class::Denormal {
        float::zero(fmt, float::sign(fmt, v))
    } else {
        v
    }
}

/// The operations, by `Op::imm2` bits 0-7.
const ADD: u64 = 0;
const SUB: u64 = 1;
const MUL: u64 = 2;
const DIV: u64 = 3;
const SQRT: u64 = 4;
const MIN: u64 = 5;
const MAX: u64 = 6;
const RCP: u64 = 7;
const RSQRT: u64 = 8;
const CMP: u64 = 9;

/// `Op::imm2` bit 8: double precision; bit 9: scalar.
const DOUBLE: u64 = 1 << 8;
const SCALAR: u64 = 1 << 9;

/// One lane of an arithmetic operation: `a` the destination's value, `b` the source's.
fn lane(x: &Exec, k: u64, fmt: Fmt, a: u128, b: u128, m: Mode) -> (u128, u8) {
    let (a, b) = (daz(x, fmt, a), daz(x, fmt, b));
    let (ca, cb) = (float::classify(fmt, a), float::classify(fmt, b));
    let snan = |c: Class| c == Class::SNan;
    match k {
        SQRT => {
            if float::is_nan(cb) {
                return (float::quiet(fmt, b), if snan(cb) { IE } else { 0 });
            }
            let de = if cb == Class::Denormal { DE } else { 0 };
            let w = Wide::sqrt(Wide::from_bits(fmt, b));
            let r = round(w, target(fmt), m);
            (r.bits, if r.flags & IE != 0 { IE } else { r.flags | de })
        }
        MIN | MAX => {
            // A NaN in either, or two zeros: the second operand, as is (SDM vol 2 MINPS).
            if float::is_nan(ca) || float::is_nan(cb) {
                return (b, IE);
            }
            let de = if ca == Class::Denormal || cb == Class::Denormal {
                DE
            } else {
                0
            };
            if ca == Class::Zero && cb == Class::Zero {
                return (b, de);
            }
            let (wa, wb) = (Wide::from_bits(fmt, a), Wide::from_bits(fmt, b));
            let pick_a = if k == MIN { wa.v < wb.v } else { wa.v > wb.v };
            (if pick_a { a } else { b }, de)
        }
        _ => {
            if let Some(n) = float::sse_nan(fmt, a, b) {
                return (n, if snan(ca) || snan(cb) { IE } else { 0 });
            }
            let de = if ca == Class::Denormal || cb == Class::Denormal {
                DE
            } else {
                0
            };
            let (wa, wb) = (Wide::from_bits(fmt, a), Wide::from_bits(fmt, b));
            let w = match k {
                ADD => Wide::add(wa, wb, m.rc),
                SUB => Wide::sub(wa, wb, m.rc),
                MUL => Wide::product(wa, wb),
                _ => Wide::quotient(wa, wb),
            };
            let r = round(w, target(fmt), m);
            // Invalid and zero-divide outrank the denormal operand (SDM vol 1 4.9.2).
            let flags = if r.flags & (IE | ZE) != 0 {
                r.flags
            } else {
                r.flags | de
            };
            (r.bits, flags)
        }
    }
}

fn target(fmt: Fmt) -> Target {
    if fmt == Fmt::F32 {
        Target::F32
    } else {
        Target::F64
    }
}

/// RCPPS/RSQRTPS lanes: the approximation is the correctly rounded single-precision
/// reciprocal (square root), well within the manual's |relative error| ≤ 1.5 · 2^-12;
/// denormal operands read as zeros and denormal results are flushed; no exceptions
/// (SDM vol 2 RCPPS, RSQRTPS).
fn approx(k: u64, b: u32) -> u32 {
    let f = f32::from_bits(b);
    let c = float::classify(Fmt::F32, b as u128);
    let neg = b >> 31 != 0;
    let zero = |n: bool| if n { 0x8000_0000 } else { 0 };
    let inf = |n: bool| zero(n) | 0x7f80_0000;
    match c {
        Class::QNan | Class::SNan => b | 0x0040_0000,
        Class::Zero | Class::Denormal => inf(neg),
        Class::Inf => {
            if k == RSQRT && neg {
                0xffc0_0000
            } else {
                zero(neg)
            }
        }
        _ => {
            if k == RSQRT && neg {
                return 0xffc0_0000;
            }
            let v = if k == RCP {
                1.0 / f as f64
            } else {
                1.0 / (f as f64).sqrt()
            };
            // Tiny results are flushed; every |x| ≥ 2^126 gives one (SDM vol 2 RCPPS
            // places the boundary between 1.1111111111101b·2^125 and
            // 1.00000000000110000000001b·2^126; the hardware flushes from 2^126).
            if k == RCP && (b & 0x7fff_ffff) >= 0x7e80_0000 {
                return zero(neg);
            }
            (v as f32).to_bits()
        }
    }
}

/// CMPPS/CMPPD/CMPSS/CMPSD: the predicate's mask, and IE for an SNaN (any NaN for the
/// ordered relations LT, LE, NLT, NLE).
fn compare(x: &Exec, fmt: Fmt, a: u128, b: u128, pred: u64) -> (bool, u8) {
    let (a, b) = (daz(x, fmt, a), daz(x, fmt, b));
    let (ca, cb) = (float::classify(fmt, a), float::classify(fmt, b));
    let unordered = float::is_nan(ca) || float::is_nan(cb);
    let signalling = matches!(pred & 7, 1 | 2 | 5 | 6);
    let ie = if ca == Class::SNan || cb == Class::SNan || unordered && signalling {
        IE
    } else {
        0
    };
    let de = if !unordered && (ca == Class::Denormal || cb == Class::Denormal) {
        DE
    } else {
        0
    };
    let (lt, eq) = if unordered {
        (false, false)
    } else {
        let (wa, wb) = (Wide::from_bits(fmt, a), Wide::from_bits(fmt, b));
        (wa.v < wb.v, wa.v == wb.v)
    };
    let r = match pred & 7 {
        0 => eq,
        1 => lt,
        2 => lt || eq,
        3 => unordered,
        4 => !eq,
        5 => !lt,
        6 => !(lt || eq),
        _ => !unordered,
    };
    (r, ie | de)
}

/// The packed and scalar arithmetic and compares.
fn arith(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter_sse(x)?;
    let k = op.imm2 & 0xff;
    let double = op.imm2 & DOUBLE != 0;
    let scalar = op.imm2 & SCALAR != 0;
    let (fmt, n) = if double { (Fmt::F64, 8) } else { (Fmt::F32, 4) };
    let lanes = if scalar { 1 } else { 16 / n };
    let b = src(x, op, if scalar { n } else { 16 })?;
    let a = dst(x, op);
    let m = mode(x);
    let mask = (1u128 << (8 * n)) - 1;
    let mut out = a;
    let mut flags = 0u8;
    let mut pre = 0u8;
    for i in 0..lanes {
        let s = 8 * n * i;
        let (la, lb) = ((a >> s) & mask, (b >> s) & mask);
        let (v, f) = match k {
            RCP | RSQRT => (approx(k, lb as u32) as u128, 0),
            CMP => {
                let (r, f) = compare(x, fmt, la, lb, op.imm);
                (if r { mask } else { 0 }, f)
            }
            _ => lane(x, k, fmt, la, lb, m),
        };
        out = (out & !(mask << s)) | (v & mask) << s;
        flags |= f;
        pre |= f & (IE | DE | ZE);
    }
    report(x, flags, pre)?;
    x.cpu.xmm[op.r as usize] = out;
    Ok(())
}

/// Records the flags in MXCSR; an unmasked one is #XM (the destination unchanged).
/// When an unmasked exception is a pre-computation one (IE, DE, ZE), the
/// post-computation flags (OE, UE, PE) are not reported (SDM vol 1 11.5.2.1).
pub fn report(x: &mut Exec, flags: u8, pre: u8) -> Result<(), Stop> {
    let unmasked = flags & !mode(x).masks;
    if unmasked == 0 {
        x.cpu.mxcsr |= flags as u32;
        return Ok(());
    }
    if unmasked & pre != 0 {
        x.cpu.mxcsr |= pre as u32;
    } else {
        x.cpu.mxcsr |= flags as u32;
    }
    Err(simd_exception(x))
}

/// COMISS, UCOMISS, COMISD, UCOMISD: ZF, PF, CF from the comparison; OF, SF, AF cleared.
fn comis(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter_sse(x)?;
    let double = op.imm2 & DOUBLE != 0;
    let (fmt, n) = if double { (Fmt::F64, 8) } else { (Fmt::F32, 4) };
    let mask = (1u128 << (8 * n)) - 1;
    let b = src(x, op, n)? & mask;
    let a = dst(x, op) & mask;
    let (a, b) = (daz(x, fmt, a), daz(x, fmt, b));
    let (ca, cb) = (float::classify(fmt, a), float::classify(fmt, b));
    let unordered = float::is_nan(ca) || float::is_nan(cb);
    let quiet = op.imm2 & 1 != 0;
    let ie = if ca == Class::SNan || cb == Class::SNan || unordered && !quiet {
        IE
    } else {
        0
    };
    let de = if !unordered && (ca == Class::Denormal || cb == Class::Denormal) {
        DE
    } else {
        0
    };
    report(x, ie | de, ie | de)?;
    let f = if unordered {
        ZF | PF | CF
    } else {
        let (wa, wb) = (Wide::from_bits(fmt, a), Wide::from_bits(fmt, b));
        if wa.v < wb.v {
            CF
        } else if wa.v == wb.v {
            ZF
        } else {
            0
        }
    };
    x.cpu.flags.set_arith(f, ARITH);
    Ok(())
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    let (k, double, scalar) = match m {
        M::Addps => (ADD, false, false),
        M::Addss => (ADD, false, true),
        M::Addpd => (ADD, true, false),
        M::Addsd => (ADD, true, true),
        M::Subps => (SUB, false, false),
        M::Subss => (SUB, false, true),
        M::Subpd => (SUB, true, false),
        M::Subsd => (SUB, true, true),
        M::Mulps => (MUL, false, false),
        M::Mulss => (MUL, false, true),
        M::Mulpd => (MUL, true, false),
        M::Mulsd => (MUL, true, true),
        M::Divps => (DIV, false, false),
        M::Divss => (DIV, false, true),
        M::Divpd => (DIV, true, false),
        M::Divsd => (DIV, true, true),
        M::Sqrtps => (SQRT, false, false),
        M::Sqrtss => (SQRT, false, true),
        M::Sqrtpd => (SQRT, true, false),
        M::Sqrtsd => (SQRT, true, true),
        M::Minps => (MIN, false, false),
        M::Minss => (MIN, false, true),
        M::Minpd => (MIN, true, false),
        M::Minsd => (MIN, true, true),
        M::Maxps => (MAX, false, false),
        M::Maxss => (MAX, false, true),
        M::Maxpd => (MAX, true, false),
        M::Maxsd => (MAX, true, true),
        M::Rcpps => (RCP, false, false),
        M::Rcpss => (RCP, false, true),
        M::Rsqrtps => (RSQRT, false, false),
        M::Rsqrtss => (RSQRT, false, true),
        M::Cmpps => (CMP, false, false),
        M::Cmpss => (CMP, false, true),
        M::Cmppd => (CMP, true, false),
        M::Cmpsd if ins.op_count() == 3 => (CMP, true, true),
        M::Comiss | M::Ucomiss | M::Comisd | M::Ucomisd => {
            let double = matches!(m, M::Comisd | M::Ucomisd);
            let quiet = matches!(m, M::Ucomiss | M::Ucomisd);
            op.imm2 = quiet as u64 | if double { DOUBLE } else { 0 };
            return Some(comis);
        }
        _ => return None,
    };
    op.imm2 = k | if double { DOUBLE } else { 0 } | if scalar { SCALAR } else { 0 };
    Some(arith)
}
