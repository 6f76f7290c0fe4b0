//! x87 comparisons: FCOM(P)(P), FUCOM(P)(P), FICOM(P), FCOMI(P), FUCOMI(P), FTST,
//! FXAM (SDM vol 2 for each, vol 1 8.3.6 and Table 8-6 / 8-7 for the results).

use super::{enter, has_mem, note, read_operand, set_c1};
use crate::decode::{Handler, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::flags::{CF, PF, ZF};
use crate::float::wide::Wide;
use crate::float::{self, Class, Fmt, DE, IE};
use crate::fpu::{FSW_C0, FSW_C1, FSW_C2, FSW_C3, FSW_SF};
use iced_x86::{Instruction, Mnemonic};
use std::cmp::Ordering;

/// Comparison outcomes as C3 C2 C0 (FCOM) and ZF PF CF (FCOMI) bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Greater,
    Less,
    Equal,
    Unordered,
}

const UNORDERED_QUIET: u64 = 1; // FUCOM: only SNaN operands are invalid
const TO_EFLAGS: u64 = 2; // FCOMI forms
const SHIFT_POPS: u64 = 2;

/// Compares 80-bit `a` with `b`: the outcome and the flags.
fn compare(a: u128, b: u128, quiet: bool) -> (Outcome, u8) {
    let (ca, cb) = (float::classify(Fmt::F80, a), float::classify(Fmt::F80, b));
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return (Outcome::Unordered, IE);
    }
    if float::is_nan(ca) || float::is_nan(cb) {
        let snan = ca == Class::SNan || cb == Class::SNan;
        return (Outcome::Unordered, if snan || !quiet { IE } else { 0 });
    }
    let de = if ca == Class::Denormal || cb == Class::Denormal {
        DE
    } else {
        0
    };
    let (wa, wb) = (Wide::from_bits(Fmt::F80, a), Wide::from_bits(Fmt::F80, b));
    let o = match wa.v.partial_cmp(&wb.v) {
        Some(Ordering::Greater) => Outcome::Greater,
        Some(Ordering::Less) => Outcome::Less,
        _ => Outcome::Equal,
    };
    (o, de)
}

/// Sets the outcome in C3 C2 C0 (C1 cleared) or in ZF PF CF (OF, SF, AF cleared).
fn report(x: &mut Exec, o: Outcome, eflags: bool) {
    let (c3, c2, c0) = match o {
        Outcome::Greater => (false, false, false),
        Outcome::Less => (false, false, true),
        Outcome::Equal => (true, false, false),
        Outcome::Unordered => (true, true, true),
    };
    if eflags {
        // FCOMI and friends leave C1 alone (as the hardware does).
        let v = if c3 { ZF } else { 0 } | if c2 { PF } else { 0 } | if c0 { CF } else { 0 };
        x.cpu.flags.set_arith(v, crate::flags::ARITH);
    } else {
        set_c1(x, false);
        let f = &mut x.cpu.fpu;
        f.fsw &= !(FSW_C0 | FSW_C2 | FSW_C3);
        f.fsw |=
            if c3 { FSW_C3 } else { 0 } | if c2 { FSW_C2 } else { 0 } | if c0 { FSW_C0 } else { 0 };
    }
}

/// Compares ST(0) with the operand and pops as the instruction says.
fn fcom(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    let quiet = op.imm & UNORDERED_QUIET != 0;
    let eflags = op.imm & TO_EFLAGS != 0;
    let pops = (op.imm >> SHIFT_POPS) as usize;
    let mut b_denormal = false;
    let b = if has_mem(op) {
        let (v, d) = read_operand(x, op, op.x87_format())?;
        b_denormal = d;
        Some(v)
    } else {
        note(x, op, None);
        (!x.cpu.fpu.is_empty(op.rm as usize)).then(|| x.cpu.fpu.st(op.rm as usize))
    };
    let a = (!x.cpu.fpu.is_empty(0)).then(|| x.cpu.fpu.st(0));
    let (o, flags) = match (a, b) {
        (Some(a), Some(b)) => {
            let (o, mut flags) = compare(a, b, quiet);
            if b_denormal && flags & IE == 0 {
                flags |= DE;
            }
            (o, flags)
        }
        _ => {
            // A stack underflow: C1 = 0 (SDM vol 1 8.5.1.1).
            set_c1(x, false);
            x.cpu.fpu.fsw |= FSW_SF;
            (Outcome::Unordered, IE)
        }
    };
    let unmasked = flags & !(x.cpu.fpu.fcw as u8);
    x.cpu.fpu.raise(flags);
    // The outcome is reported whether the exception is masked or not (the hardware
    // does; an invalid operand is "unordered"); an unmasked one prevents the pops.
    report(x, o, eflags);
    if unmasked & (IE | DE) != 0 {
        return Ok(());
    }
    for _ in 0..pops {
        x.cpu.fpu.pop();
    }
    Ok(())
}

/// FTST: ST(0) against +0.0.
fn ftst(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let (o, flags) = if x.cpu.fpu.is_empty(0) {
        x.cpu.fpu.fsw |= FSW_SF;
        (Outcome::Unordered, IE)
    } else {
        compare(x.cpu.fpu.st(0), 0, false)
    };
    x.cpu.fpu.raise(flags);
    report(x, o, false);
    Ok(())
}

/// FXAM: the class of ST(0) in C3 C2 C0, its sign in C1 (SDM vol 2 FXAM, Table 3-48).
fn fxam(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, true)?;
    note(x, op, None);
    let f = &x.cpu.fpu;
    let v = f.st(0);
    let (c3, c2, c0) = if f.is_empty(0) {
        (true, false, true)
    } else {
        match float::classify(Fmt::F80, v) {
            Class::Unsupported => (false, false, false),
            Class::QNan | Class::SNan => (false, false, true),
            Class::Normal => (false, true, false),
            Class::Inf => (false, true, true),
            Class::Zero => (true, false, false),
            Class::Denormal => (true, true, false),
        }
    };
    let f = &mut x.cpu.fpu;
    f.fsw &= !(FSW_C0 | FSW_C1 | FSW_C2 | FSW_C3);
    f.fsw |= if c3 { FSW_C3 } else { 0 }
        | if c2 { FSW_C2 } else { 0 }
        | if c0 { FSW_C0 } else { 0 }
        | if v >> 79 & 1 != 0 { FSW_C1 } else { 0 };
    Ok(())
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    match m {
        M::Ftst => return Some(ftst),
        M::Fxam => return Some(fxam),
        _ => {}
    }
    let quiet = matches!(
        m,
        M::Fucom | M::Fucomp | M::Fucompp | M::Fucomi | M::Fucomip
    );
    let eflags = matches!(m, M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip);
    let pops: u64 = match m {
        M::Fcompp | M::Fucompp => 2,
        M::Fcomp | M::Fucomp | M::Ficomp | M::Fcomip | M::Fucomip => 1,
        _ => 0,
    };
    if !has_mem(op) && ins.op_count() == 0 {
        // FCOM, FCOMPP... with no operand compare with ST(1).
        op.rm = 1;
    }
    if eflags && ins.op_count() == 2 {
        op.rm = op.rm.max(op.r);
    }
    op.imm = quiet as u64 | (eflags as u64) << 1 | pops << SHIFT_POPS;
    Some(fcom)
}
