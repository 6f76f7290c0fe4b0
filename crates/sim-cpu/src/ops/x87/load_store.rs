//! x87 data transfer: FLD, FILD, FBLD and the constants, FST(P), FIST(P), FBSTP,
//! FXCH, FCMOVcc, FFREE(P), FINCSTP, FDECSTP, FNOP (SDM vol 2 for each, vol 1 8.3.3).

use super::arith::apply;
use super::{enter, has_mem, masked, mode, note, push, read_operand, set_c1, underflow, MemFmt};
use crate::decode::{ea, Handler, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::float::round::{round, Target};
use crate::float::wide::Wide;
use crate::float::{self, Class, Fmt, Rc, DE, IE, PE};
use iced_x86::{Instruction, Mnemonic};
use rustc_apfloat::Float;

/// FLD m32/m64/m80, FILD, FBLD: push the operand (SNaN and denormal flags for the
/// 32- and 64-bit formats only).
fn load_mem(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    if !x.cpu.fpu.is_empty(7) {
        // A stack overflow outranks the operand's own exceptions.
        note(x, op, Some(ea(x, op)));
        super::overflow(x);
        return Ok(());
    }
    let f = op.x87_format();
    let (mut v, denormal) = if f == MemFmt::Bcd {
        let a = ea(x, op);
        note(x, op, Some(a));
        let mut b = [0u8; 10];
        x.read_bytes(op.seg as usize, a, &mut b)?;
        (bcd_to_f80(&b), false)
    } else {
        read_operand(x, op, f)?
    };
    let mut flags = 0;
    if matches!(f, MemFmt::F32 | MemFmt::F64) {
        if float::classify(Fmt::F80, v) == Class::SNan {
            flags = IE;
            v = float::quiet(Fmt::F80, v);
        } else if denormal {
            flags = DE;
        }
    }
    // An unmasked SNaN stops the load; an unmasked denormal does not: the value loads
    // (exactly, normalized) and the exception is pending (as the hardware does).
    if flags == IE && !masked(x, IE) {
        set_c1(x, false);
        x.cpu.fpu.raise(flags);
        return Ok(());
    }
    if push(x, v) {
        set_c1(x, false);
        x.cpu.fpu.raise(flags);
    }
    Ok(())
}

/// FLD ST(i).
fn load_reg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let i = op.rm as usize;
    if x.cpu.fpu.is_empty(i) {
        // Underflow; masked, the indefinite is pushed.
        if underflow(x, None) {
            push(x, Fmt::F80.indefinite());
        }
        return Ok(());
    }
    let v = x.cpu.fpu.st(i);
    if push(x, v) {
        set_c1(x, false);
    }
    Ok(())
}

/// The constants, as the processor holds them (66 significand bits) rounded to 64 by
/// the rounding control (SDM vol 1 8.3.8): (sign/exponent, nearest, and the
/// neighbour toward zero or away when nearest rounded the other way).
const CONSTANTS: [(u16, u64, u64); 5] = [
    (0x4000, 0xd49a_784b_cd1b_8afe, 0xd49a_784b_cd1b_8aff), // log2(10): nearest is low
    (0x3fff, 0xb8aa_3b29_5c17_f0bc, 0xb8aa_3b29_5c17_f0bb), // log2(e): nearest is high
    (0x4000, 0xc90f_daa2_2168_c235, 0xc90f_daa2_2168_c234), // pi: high
    (0x3ffd, 0x9a20_9a84_fbcf_f799, 0x9a20_9a84_fbcf_f798), // log10(2): high
    (0x3ffe, 0xb172_17f7_d1cf_79ac, 0xb172_17f7_d1cf_79ab), // ln(2): high
];

fn load_const(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let v = match op.imm {
        0 => 0,
        1 => 0x3fff_8000_0000_0000_0000,
        k => {
            let (se, near, other) = CONSTANTS[k as usize - 2];
            let rc = mode(x).rc;
            // For log2(10) nearest rounded down: up takes the other; for the rest
            // nearest rounded up: down and toward zero take the other.
            let sig = if k == 2 {
                if rc == Rc::Up {
                    other
                } else {
                    near
                }
            } else if rc == Rc::Down || rc == Rc::Zero {
                other
            } else {
                near
            };
            (se as u128) << 64 | sig as u128
        }
    };
    if push(x, v) {
        set_c1(x, false);
    }
    Ok(())
}

/// The value of an 80-bit packed BCD integer (18 digits and a sign byte).
fn bcd_to_f80(b: &[u8; 10]) -> u128 {
    let mut v: i64 = 0;
    for i in (0..9).rev() {
        v = v * 100 + (b[i] >> 4) as i64 * 10 + (b[i] & 15) as i64;
    }
    let f = super::int_to_f80(v);
    if b[9] & 0x80 != 0 {
        f | 1 << 79
    } else {
        f
    }
}

// ---- stores -------------------------------------------------------------------------

/// The integer indefinite of each width (SDM vol 1 4.2.2) and the BCD indefinite.
fn int_indefinite(f: MemFmt) -> u128 {
    match f {
        MemFmt::I16 => 0x8000,
        MemFmt::I32 => 0x8000_0000,
        MemFmt::I64 => 0x8000_0000_0000_0000,
        _ => 0xffff_c000_0000_0000_0000,
    }
}

/// Converts ST(0)'s value for a store in `f`: the bits, flags, and C1.
fn convert_for_store(x: &Exec, v: u128, f: MemFmt) -> (u128, u8, bool) {
    let class = float::classify(Fmt::F80, v);
    match f {
        MemFmt::F80 => (v, 0, false),
        MemFmt::F32 | MemFmt::F64 => {
            let fmt = if f == MemFmt::F32 { Fmt::F32 } else { Fmt::F64 };
            let (target, frac_bits) = if f == MemFmt::F32 {
                (Target::F32, 23)
            } else {
                (Target::F64, 52)
            };
            let sign = float::sign(Fmt::F80, v);
            match class {
                Class::Unsupported => (fmt.indefinite(), IE, false),
                Class::QNan | Class::SNan => {
                    let flags = if class == Class::SNan { IE } else { 0 };
                    let payload = ((v as u64 & ((1 << 63) - 1)) >> (63 - frac_bits)) as u128;
                    let bits = float::infinity(fmt, sign) | payload | fmt.quiet_bit();
                    (bits, flags, false)
                }
                Class::Zero => (float::zero(fmt, sign), 0, false),
                Class::Inf => (float::infinity(fmt, sign), 0, false),
                _ => {
                    let w = Wide::from_bits(Fmt::F80, v);
                    let r = round(w, target, mode(x));
                    (r.bits, r.flags, r.up)
                }
            }
        }
        MemFmt::Bcd => to_bcd(x, v, class),
        _ => {
            let bits = match f {
                MemFmt::I16 => 16,
                MemFmt::I32 => 32,
                _ => 64,
            };
            if !matches!(class, Class::Zero | Class::Normal | Class::Denormal) {
                return (int_indefinite(f), IE, false);
            }
            let w = Wide::from_bits(Fmt::F80, v);
            let mut exact = false;
            let r = w.v.to_i128_r(bits, mode(x).rc.apfloat(), &mut exact);
            if r.status.intersects(rustc_apfloat::Status::INVALID_OP) {
                return (int_indefinite(f), IE, false);
            }
            let mask = (1u128 << bits) - 1;
            let inexact = !exact;
            let up = inexact && {
                let back = Wide::from_bits(Fmt::F80, super::int_to_f80(r.value as i64));
                back.v.abs() > w.v.abs()
            };
            ((r.value as u128) & mask, if inexact { PE } else { 0 }, up)
        }
    }
}

/// FBSTP's conversion: round by the rounding control, 18 digits.
fn to_bcd(x: &Exec, v: u128, class: Class) -> (u128, u8, bool) {
    if !matches!(class, Class::Zero | Class::Normal | Class::Denormal) {
        return (int_indefinite(MemFmt::Bcd), IE, false);
    }
    let w = Wide::from_bits(Fmt::F80, v);
    let mut exact = false;
    let r = w.v.to_i128_r(64, mode(x).rc.apfloat(), &mut exact);
    let n = r.value;
    if r.status.intersects(rustc_apfloat::Status::INVALID_OP)
        || n.unsigned_abs() >= 1_000_000_000_000_000_000
    {
        return (int_indefinite(MemFmt::Bcd), IE, false);
    }
    let mut mag = n.unsigned_abs() as u64;
    let mut out: u128 = 0;
    for i in 0..9 {
        let lo = mag % 10;
        mag /= 10;
        let hi = mag % 10;
        mag /= 10;
        out |= ((hi << 4 | lo) as u128) << (8 * i);
    }
    if float::sign(Fmt::F80, v) {
        out |= 0x80 << 72;
    }
    let up = !exact && {
        let back = Wide::from_bits(Fmt::F80, super::int_to_f80(n as i64));
        back.v.abs() > w.v.abs()
    };
    (out, if exact { 0 } else { PE }, up)
}

/// FST/FSTP/FIST/FISTP/FBSTP to memory.
fn store_mem(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    let f = op.x87_format();
    let a = ea(x, op);
    note(x, op, Some(a));
    let pop = op.imm != 0;
    let (bits, flags, up) = if x.cpu.fpu.is_empty(0) {
        set_c1(x, false);
        x.cpu.fpu.fsw |= crate::fpu::FSW_SF;
        let indefinite = match f {
            MemFmt::F32 => Fmt::F32.indefinite(),
            MemFmt::F64 => Fmt::F64.indefinite(),
            MemFmt::F80 => Fmt::F80.indefinite(),
            _ => int_indefinite(f),
        };
        (indefinite, IE, false)
    } else {
        convert_for_store(x, x.cpu.fpu.st(0), f)
    };
    // An unmasked invalid, overflow or underflow stores nothing and pops nothing
    // (SDM vol 1 8.5.1, 8.5.4, 8.5.5: a memory destination keeps its value).
    let stop = flags & (IE | float::OE | float::UE) & !(x.cpu.fpu.fcw as u8 & 0x3f) != 0;
    // Stopped by an unmasked overflow or underflow, nothing was rounded: no PE, no C1.
    let (flags, up) = if stop && flags & IE == 0 {
        (flags & !PE, false)
    } else {
        (flags, up)
    };
    if !stop {
        let size = f.size();
        x.write_bytes(op.seg as usize, a, &bits.to_le_bytes()[..size])?;
    }
    set_c1(x, up);
    x.cpu.fpu.raise(flags);
    if !stop && pop {
        x.cpu.fpu.pop();
    }
    Ok(())
}

/// FST/FSTP ST(i).
fn store_reg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let i = op.rm as usize;
    let pops = op.imm as u8;
    if x.cpu.fpu.is_empty(0) {
        if underflow(x, Some(i)) {
            for _ in 0..pops {
                x.cpu.fpu.pop();
            }
        }
        return Ok(());
    }
    let v = x.cpu.fpu.st(0);
    apply(x, Some(v), 0, false, i, pops);
    Ok(())
}

/// FXCH ST(i).
fn fxch(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let i = op.rm as usize;
    let f = &mut x.cpu.fpu;
    if f.is_empty(0) || f.is_empty(i) {
        let (e0, ei) = (f.is_empty(0), f.is_empty(i));
        if !underflow(x, None) {
            return Ok(());
        }
        let f = &mut x.cpu.fpu;
        if e0 {
            f.set_st(0, Fmt::F80.indefinite());
        }
        if ei {
            f.set_st(i, Fmt::F80.indefinite());
        }
    }
    let f = &mut x.cpu.fpu;
    let (a, b) = (f.st(0), f.st(i));
    f.set_st(0, b);
    f.set_st(i, a);
    set_c1(x, false);
    Ok(())
}

/// FCMOVcc ST(0), ST(i): the condition on CF, ZF, PF.
fn fcmov(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let i = op.rm as usize;
    if x.cpu.fpu.is_empty(0) || x.cpu.fpu.is_empty(i) {
        underflow(x, Some(0));
        return Ok(());
    }
    let fl = &x.cpu.flags;
    let (cf, zf, pf) = (fl.cf(), fl.zf(), fl.pf());
    let c = match op.imm & 3 {
        0 => cf,
        1 => zf,
        2 => cf || zf,
        _ => pf,
    };
    if c != (op.imm & 4 != 0) {
        let v = x.cpu.fpu.st(i);
        x.cpu.fpu.set_st(0, v);
    }
    // C1 is left alone (as the hardware does).
    Ok(())
}

const FFREE: u64 = 0;
const FFREEP: u64 = 1;
const FINCSTP: u64 = 2;
const FDECSTP: u64 = 3;
const FNOP: u64 = 4;

fn stack_op(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let f = &mut x.cpu.fpu;
    match op.imm {
        FFREE | FFREEP => {
            let p = f.phys(op.rm as usize);
            f.empty |= 1 << p;
            if op.imm == FFREEP {
                f.pop();
            }
            set_c1(x, false);
        }
        FINCSTP => {
            f.set_top(f.top() + 1);
            set_c1(x, false);
        }
        FDECSTP => {
            f.set_top(f.top() + 7);
            set_c1(x, false);
        }
        // FNOP: only the checks above.
        _ => {}
    }
    Ok(())
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    Some(match m {
        M::Fld | M::Fild | M::Fbld => {
            if has_mem(op) {
                load_mem
            } else {
                load_reg
            }
        }
        M::Fldz | M::Fld1 | M::Fldl2t | M::Fldl2e | M::Fldpi | M::Fldlg2 | M::Fldln2 => {
            op.imm = match m {
                M::Fldz => 0,
                M::Fld1 => 1,
                M::Fldl2t => 2,
                M::Fldl2e => 3,
                M::Fldpi => 4,
                M::Fldlg2 => 5,
                _ => 6,
            };
            load_const
        }
        M::Fst | M::Fstp | M::Fstpnce | M::Fist | M::Fistp | M::Fbstp => {
            op.imm = matches!(m, M::Fstp | M::Fstpnce | M::Fistp | M::Fbstp) as u64;
            // FST ST(i): `operands` put the lone register in `rm`, the destination here.
            if has_mem(op) {
                store_mem
            } else {
                store_reg
            }
        }
        M::Fxch => {
            if ins.op_count() == 0 {
                op.rm = 1;
            }
            if ins.op_count() == 2 {
                // FXCH ST(0), ST(i) in either order.
                op.rm = op.rm.max(op.r);
            }
            fxch
        }
        M::Fcmovb
        | M::Fcmove
        | M::Fcmovbe
        | M::Fcmovu
        | M::Fcmovnb
        | M::Fcmovne
        | M::Fcmovnbe
        | M::Fcmovnu => {
            op.imm = match m {
                M::Fcmovb => 0,
                M::Fcmove => 1,
                M::Fcmovbe => 2,
                M::Fcmovu => 3,
                M::Fcmovnb => 4,
                M::Fcmovne => 5,
                M::Fcmovnbe => 6,
                _ => 7,
            };
            fcmov
        }
        _ => {
            op.imm = match m {
                M::Ffree => FFREE,
                M::Ffreep => FFREEP,
                M::Fincstp => FINCSTP,
                M::Fdecstp => FDECSTP,
                _ => FNOP,
            };
            stack_op
        }
    })
}
