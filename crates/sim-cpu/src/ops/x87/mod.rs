//! The x87 FPU instructions (SDM vol 1 chapter 8, vol 2 for each): the compiler that
//! picks a handler, and what every x87 instruction shares: the #NM and #MF checks, the
//! instruction and data pointers, operand fetch in every memory format, the stack
//! faults and the masked and unmasked responses to exceptions.

mod arith;
mod compare;
mod control;
mod load_store;
mod transcend;

pub use crate::decode::MemFmt;
use crate::decode::{ea, Handler, Op};
use crate::exec::Exec;
use crate::fault::{Stop, MF, NM};
use crate::float::round::Mode;
use crate::float::{self, Fmt, Rc, IE};
use crate::fpu::{FSW_C1, FSW_SF};
use crate::state::{CR0_EM, CR0_MP, CR0_NE, CR0_TS, CS};
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

/// Checks before an x87 instruction: #NM when CR0.EM or CR0.TS is set (SDM vol 3
/// 2.5, Table 2-2); for a waiting instruction, a pending unmasked exception raises #MF
/// with CR0.NE set. With NE clear the PC's FERR#/IGNNE# path applies: FERR# is asserted
/// (for an interrupt controller to raise IRQ 13) and, as with IGNNE# asserted, the
/// instruction goes on (SDM vol 1 8.7, Appendix D).
pub fn enter(x: &mut Exec, waiting: bool) -> Result<(), Stop> {
    if x.cpu.cr0 & (CR0_EM | CR0_TS) != 0 {
        return Err(x.raise(NM, None));
    }
    if waiting && x.cpu.fpu.pending() {
        if x.cpu.cr0 & CR0_NE != 0 {
            return Err(x.raise(MF, None));
        }
        x.cpu.ferr = true;
    }
    Ok(())
}

/// WAIT/FWAIT: #NM only with both CR0.MP and CR0.TS; a pending exception is #MF.
pub fn wait(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    if x.cpu.cr0 & (CR0_MP | CR0_TS) == CR0_MP | CR0_TS {
        return Err(x.raise(NM, None));
    }
    if x.cpu.fpu.pending() {
        if x.cpu.cr0 & CR0_NE != 0 {
            return Err(x.raise(MF, None));
        }
        x.cpu.ferr = true;
    }
    Ok(())
}

/// Records the instruction pointer (and data pointer, for a memory operand) that
/// FNSTENV, FNSAVE and FXSAVE report (SDM vol 1 8.1.8). FOP is left alone: outside
/// the fopcode compatibility mode it is defined only after an unmasked exception
/// (vol 1 8.1.9.1).
pub fn note(x: &mut Exec, op: &Op, mem: Option<u64>) {
    let f = &mut x.cpu.fpu;
    f.fip = op.ip;
    f.fcs = x.cpu.seg[CS].selector;
    if let Some(a) = mem {
        f.fdp = a;
        f.fds = x.cpu.seg[op.seg as usize].selector;
    }
}

/// The rounding mode and masks of FCW.
pub fn mode(x: &Exec) -> Mode {
    let fcw = x.cpu.fpu.fcw;
    Mode {
        rc: Rc::from_bits((fcw >> 10) as u32),
        masks: (fcw & 0x3f) as u8,
        ftz: false,
    }
}

/// The precision control: 24, 53 or 64 significand bits (the reserved setting 01
/// rounds to 64 here).
pub fn precision(x: &Exec) -> u32 {
    match (x.cpu.fpu.fcw >> 8) & 3 {
        0 => 24,
        2 => 53,
        _ => 64,
    }
}

/// Whether exception `flag` is masked.
pub fn masked(x: &Exec, flag: u8) -> bool {
    x.cpu.fpu.fcw & flag as u16 != 0
}

/// Converts a value of `fmt` (32 or 64 bits) to 80 bits exactly. NaNs keep their
/// signalling state and payload (the operation that uses them applies the rules).
pub fn to_f80(fmt: Fmt, bits: u128) -> u128 {
    use float::Class;
    let sign = if float::sign(fmt, bits) {
        1u128 << 79
    } else {
        0
    };
    match float::classify(fmt, bits) {
        Class::Zero => sign,
        Class::Inf => float::infinity(Fmt::F80, sign != 0),
        Class::QNan | Class::SNan => {
            let frac_bits = if fmt == Fmt::F32 { 23 } else { 52 };
            let frac = bits & ((1 << frac_bits) - 1);
            sign | 0x7fff << 64 | 1 << 63 | frac << (63 - frac_bits)
        }
        _ => from_parts(float::parts(fmt, bits)),
    }
}

/// 80 bits for a normalized value within the 80-bit range.
pub fn from_parts(p: float::Parts) -> u128 {
    let sign = (p.sign as u128) << 79;
    if p.sig == 0 {
        return sign;
    }
    let e = p.exp + Fmt::F80.bias();
    if e <= 0 {
        // Below the normal range (only from 80-bit denormals): back to a denormal.
        return sign | (p.sig >> (1 - e)) as u128;
    }
    sign | (e as u128) << 64 | p.sig as u128
}

/// An integer as 80 bits (exact).
pub fn int_to_f80(v: i64) -> u128 {
    if v == 0 {
        return 0;
    }
    let mag = v.unsigned_abs();
    let z = mag.leading_zeros();
    from_parts(float::Parts {
        sign: v < 0,
        exp: 63 - z as i32,
        sig: mag << z,
    })
}

/// Reads a memory operand as 80 bits (BCD excepted: see `load_store`), and whether it
/// was a denormal in its own format (a 32- or 64-bit denormal is a normal 80-bit
/// value, but still a denormal operand, SDM vol 1 8.5.2).
pub fn read_operand(x: &mut Exec, op: &Op, f: MemFmt) -> Result<(u128, bool), Stop> {
    let a = ea(x, op);
    note(x, op, Some(a));
    let seg = op.seg as usize;
    let small = |fmt: Fmt, bits: u128| {
        (
            to_f80(fmt, bits),
            float::classify(fmt, bits) == float::Class::Denormal,
        )
    };
    Ok(match f {
        MemFmt::F32 => small(Fmt::F32, x.read(seg, a, 4)? as u128),
        MemFmt::F64 => small(Fmt::F64, x.read(seg, a, 8)? as u128),
        MemFmt::F80 | MemFmt::Bcd => {
            let mut b = [0u8; 16];
            x.read_bytes(seg, a, &mut b[..10])?;
            (u128::from_le_bytes(b), false)
        }
        MemFmt::I16 => (int_to_f80(x.read(seg, a, 2)? as i16 as i64), false),
        MemFmt::I32 => (int_to_f80(x.read(seg, a, 4)? as i32 as i64), false),
        MemFmt::I64 => (int_to_f80(x.read(seg, a, 8)? as i64), false),
    })
}

/// Sets or clears C1 (left clear by most instructions; "rounded up" after an inexact
/// result, SDM vol 1 8.1.3.1).
pub fn set_c1(x: &mut Exec, on: bool) {
    if on {
        x.cpu.fpu.fsw |= FSW_C1;
    } else {
        x.cpu.fpu.fsw &= !FSW_C1;
    }
}

/// A stack underflow: an empty register was read (SDM vol 1 8.5.1.1). IE and SF with
/// C1 = 0. Masked, the destination ST(`dst`) gets the real indefinite and the
/// instruction completes (returns true); unmasked, nothing else changes.
pub fn underflow(x: &mut Exec, dst: Option<usize>) -> bool {
    set_c1(x, false);
    x.cpu.fpu.fsw |= FSW_SF;
    x.cpu.fpu.raise(IE);
    if !masked(x, IE) {
        return false;
    }
    if let Some(d) = dst {
        x.cpu.fpu.set_st(d, Fmt::F80.indefinite());
    }
    true
}

/// A stack overflow: a push onto a full register (SDM vol 1 8.5.1.1). IE and SF with
/// C1 = 1; masked, the push happens with the real indefinite.
pub fn overflow(x: &mut Exec) -> bool {
    set_c1(x, true);
    x.cpu.fpu.fsw |= FSW_SF;
    x.cpu.fpu.raise(IE);
    if !masked(x, IE) {
        return false;
    }
    x.cpu.fpu.push(Fmt::F80.indefinite());
    true
}

/// Pushes `v` (a load) and returns true; a stack overflow instead if ST(7) is full
/// (handled, with its masked or unmasked response) returns false.
pub fn push(x: &mut Exec, v: u128) -> bool {
    if !x.cpu.fpu.is_empty(7) {
        overflow(x);
        return false;
    }
    x.cpu.fpu.push(v);
    true
}

/// The ST index of an x87 register operand.
fn st_index(r: Register) -> u8 {
    (r as u32 - Register::ST0 as u32) as u8
}

/// Fills `op` for an x87 instruction: `r` and `rm` are the ST indices of its register
/// operands (`r` the destination), [`Op::x87_memory`] the memory operand's format.
fn operands(ins: &Instruction, op: &mut Op) {
    op.r = 0;
    op.rm = 0;
    op.set_x87_memory(None);
    let mut regs = 0;
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Register => {
                let r = ins.op_register(i);
                if (Register::ST0..=Register::ST7).contains(&r) {
                    if regs == 0 {
                        op.r = st_index(r);
                    } else {
                        op.rm = st_index(r);
                    }
                    regs += 1;
                }
            }
            OpKind::Memory => {
                op.set_x87_memory(MemFmt::of(ins.memory_size()));
            }
            _ => {}
        }
    }
    if regs == 1 && ins.op_count() == 1 {
        // A lone register operand (FLD ST(i), FXCH ST(i), FCOM ST(i)...) is the source.
        op.rm = op.r;
        op.r = 0;
    }
}

/// Whether the instruction has a memory operand in one of the number formats.
pub fn has_mem(op: &Op) -> bool {
    op.x87_memory().is_some()
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    operands(ins, op);
    let m = ins.mnemonic();
    match m {
        M::Fadd
        | M::Faddp
        | M::Fiadd
        | M::Fsub
        | M::Fsubp
        | M::Fisub
        | M::Fsubr
        | M::Fsubrp
        | M::Fisubr
        | M::Fmul
        | M::Fmulp
        | M::Fimul
        | M::Fdiv
        | M::Fdivp
        | M::Fidiv
        | M::Fdivr
        | M::Fdivrp
        | M::Fidivr => arith::compile_binary(ins, op),
        M::Fabs
        | M::Fchs
        | M::Fsqrt
        | M::Frndint
        | M::Fscale
        | M::Fxtract
        | M::Fprem
        | M::Fprem1 => arith::compile_unary(ins, op),
        M::Fcom
        | M::Fcomp
        | M::Fcompp
        | M::Fucom
        | M::Fucomp
        | M::Fucompp
        | M::Ficom
        | M::Ficomp
        | M::Fcomi
        | M::Fcomip
        | M::Fucomi
        | M::Fucomip
        | M::Ftst
        | M::Fxam => compare::compile(ins, op),
        M::Fld
        | M::Fild
        | M::Fbld
        | M::Fld1
        | M::Fldl2t
        | M::Fldl2e
        | M::Fldpi
        | M::Fldlg2
        | M::Fldln2
        | M::Fldz
        | M::Fst
        | M::Fstp
        | M::Fstpnce
        | M::Fist
        | M::Fistp
        | M::Fbstp
        | M::Fxch
        | M::Fcmovb
        | M::Fcmove
        | M::Fcmovbe
        | M::Fcmovu
        | M::Fcmovnb
        | M::Fcmovne
        | M::Fcmovnbe
        | M::Fcmovnu
        | M::Ffree
        | M::Ffreep
        | M::Fincstp
        | M::Fdecstp
        | M::Fnop => load_store::compile(ins, op),
        M::Fsin
        | M::Fcos
        | M::Fsincos
        | M::Fptan
        | M::Fpatan
        | M::F2xm1
        | M::Fyl2x
        | M::Fyl2xp1 => transcend::compile(ins, op),
        M::Finit
        | M::Fninit
        | M::Fclex
        | M::Fnclex
        | M::Fstcw
        | M::Fnstcw
        | M::Fldcw
        | M::Fstsw
        | M::Fnstsw
        | M::Fstenv
        | M::Fnstenv
        | M::Fldenv
        | M::Fsave
        | M::Fnsave
        | M::Frstor
        | M::Feni
        | M::Fneni
        | M::Fdisi
        | M::Fndisi
        | M::Fsetpm
        | M::Fnsetpm
        | M::Fxsave
        | M::Fxsave64
        | M::Fxrstor
        | M::Fxrstor64 => control::compile(ins, op),
        M::Wait => Some(wait),
        _ => None,
    }
}
