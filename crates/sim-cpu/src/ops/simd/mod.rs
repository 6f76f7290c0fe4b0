//! MMX, SSE and SSE2 (SDM vol 1 chapters 9-11, vol 2 for each instruction): the
//! operand plumbing every form shares — XMM, MMX, general register or memory operands,
//! the #UD/#NM/#MF checks of each kind (vol 3 Table 2-2, vol 2 chapter 2.? "Exception
//! Conditions for Legacy SIMD/MMX Instructions"), 16-byte alignment — and the compiler
//! that picks a handler for each decoded instruction.

mod convert;
mod fp;
mod int;
mod moves;

pub use crate::decode::SimdClass;
use crate::decode::{ea, Handler, Op};
use crate::exec::{Exec, NONE};
use crate::fault::{Stop, MF, NM, XM};
use crate::state::{CR0_EM, CR0_NE, CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT};
use iced_x86::{CpuidFeature, Instruction, Mnemonic, OpKind, Register};

/// Where the destination lives ([`Op::simd_dst`]).
#[inline]
pub fn dst_class(op: &Op) -> SimdClass {
    op.simd_dst()
}

/// Where the source lives ([`Op::simd_src`]).
#[inline]
pub fn src_class(op: &Op) -> SimdClass {
    op.simd_src()
}

/// The checks before an instruction on XMM registers: #UD with CR0.EM set or
/// CR4.OSFXSR clear, #NM with CR0.TS set.
#[inline]
pub fn enter_sse(x: &mut Exec) -> Result<(), Stop> {
    let cpu = &*x.cpu;
    if cpu.cr0 & CR0_EM != 0 || cpu.cr4 & CR4_OSFXSR == 0 {
        return Err(x.ud());
    }
    if cpu.cr0 & CR0_TS != 0 {
        return Err(x.raise(NM, None));
    }
    Ok(())
}

/// The checks before an instruction on MMX registers: #UD with CR0.EM, #NM with
/// CR0.TS, #MF for a pending x87 exception; then the x87 state turns MMX: TOP 0, every
/// register valid (SDM vol 1 9.5.1).
#[inline]
pub fn enter_mmx(x: &mut Exec) -> Result<(), Stop> {
    let cpu = &*x.cpu;
    if cpu.cr0 & CR0_EM != 0 {
        return Err(x.ud());
    }
    if cpu.cr0 & CR0_TS != 0 {
        return Err(x.raise(NM, None));
    }
    if x.cpu.fpu.pending() {
        if x.cpu.cr0 & CR0_NE != 0 {
            return Err(x.raise(MF, None));
        }
        x.cpu.ferr = true;
    }
    x.cpu.fpu.enter_mmx();
    Ok(())
}

/// The checks for an instruction whose operands are `op`'s: MMX rules when any
/// operand is an MMX register, else SSE's.
#[inline]
pub fn enter(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if dst_class(op) == SimdClass::Mmx || src_class(op) == SimdClass::Mmx {
        if dst_class(op) == SimdClass::Xmm || src_class(op) == SimdClass::Xmm {
            // Forms mixing XMM and MMX registers (CVTPI2PS, MOVQ2DQ...) need both.
            enter_sse(x)?;
        }
        enter_mmx(x)
    } else {
        enter_sse(x)
    }
}

/// An unmasked SIMD floating-point exception: #XM, or #UD when the OS has not set
/// CR4.OSXMMEXCPT (SDM vol 1 11.5.2).
#[cold]
pub fn simd_exception(x: &mut Exec) -> Stop {
    if x.cpu.cr4 & CR4_OSXMMEXCPT != 0 {
        x.raise(XM, None)
    } else {
        x.ud()
    }
}

/// The linear checks of a memory operand of `size` bytes: 16-byte operands of the
/// aligned forms must be aligned (#GP(0)).
#[inline]
fn mem_address(x: &mut Exec, op: &Op, size: usize) -> Result<u64, Stop> {
    let a = ea(x, op);
    if size == 16 && op.simd_aligned() {
        let lin = x.linear(op.seg as usize, a, 16, false)?;
        if lin & 15 != 0 {
            return Err(x.gp(0));
        }
    }
    Ok(a)
}

/// Reads `size` bytes of memory operand.
pub fn read_mem(x: &mut Exec, op: &Op, size: usize) -> Result<u128, Stop> {
    let a = mem_address(x, op, size)?;
    if size <= 8 {
        return Ok(x.read(op.seg as usize, a, size)? as u128);
    }
    let mut b = [0u8; 16];
    x.read_bytes(op.seg as usize, a, &mut b[..size])?;
    Ok(u128::from_le_bytes(b))
}

/// Writes `size` bytes of a memory operand.
pub fn write_mem(x: &mut Exec, op: &Op, size: usize, v: u128) -> Result<(), Stop> {
    let a = mem_address(x, op, size)?;
    if size <= 8 {
        return x.write(op.seg as usize, a, size, v as u64);
    }
    x.write_bytes(op.seg as usize, a, &v.to_le_bytes()[..size])
}

/// The value of register `r` of `class` (`size` bytes of a general register).
#[inline]
pub fn reg(x: &Exec, class: SimdClass, r: u8, size: usize) -> u128 {
    match class {
        SimdClass::Xmm => x.cpu.xmm[r as usize],
        SimdClass::Mmx => x.cpu.fpu.mm(r as usize) as u128,
        SimdClass::Gpr | SimdClass::Mem => x.reg(r, size) as u128,
    }
}

/// Writes register `r` of `class` (a general register by its x86 write rules).
#[inline]
pub fn set_reg(x: &mut Exec, class: SimdClass, r: u8, size: usize, v: u128) {
    match class {
        SimdClass::Xmm => x.cpu.xmm[r as usize] = v,
        SimdClass::Mmx => x.cpu.fpu.set_mm(r as usize, v as u64),
        SimdClass::Gpr | SimdClass::Mem => x.set_reg(r, size, v as u64),
    }
}

/// The source operand: `size` bytes (memory) or the register.
#[inline]
pub fn src(x: &mut Exec, op: &Op, size: usize) -> Result<u128, Stop> {
    if op.rm == NONE {
        read_mem(x, op, size)
    } else {
        Ok(reg(x, src_class(op), op.rm, size))
    }
}

/// The destination register's value.
#[inline]
pub fn dst(x: &Exec, op: &Op) -> u128 {
    reg(x, dst_class(op), op.r, op.size as usize)
}

/// The operand width of an instruction: 16 bytes on XMM registers, 8 on MMX.
#[inline]
pub fn width(op: &Op) -> usize {
    if dst_class(op) == SimdClass::Mmx
        || (dst_class(op) == SimdClass::Gpr && src_class(op) == SimdClass::Mmx)
    {
        8
    } else {
        16
    }
}

/// The register number and class of an iced register.
fn class_of(r: Register) -> (SimdClass, u8) {
    if (Register::XMM0..=Register::XMM15).contains(&r) {
        (SimdClass::Xmm, (r as u32 - Register::XMM0 as u32) as u8)
    } else if (Register::MM0..=Register::MM7).contains(&r) {
        (SimdClass::Mmx, (r as u32 - Register::MM0 as u32) as u8)
    } else {
        (SimdClass::Gpr, crate::decode::gpr(r))
    }
}

/// Fills the operand fields: `r` and the destination class from operand 0, `rm` and
/// the source class from operand 1 (NONE and `Mem` for memory), `size` the memory
/// operand's size (or the general register's), `imm` an immediate; and whether a
/// 16-byte memory operand must be aligned: in the legacy SSE forms, but for the
/// unaligned moves (SDM vol 1 11.4.1.1, 11.6.6).
fn operands(ins: &Instruction, op: &mut Op) {
    let mut classes = [SimdClass::Mem; 2];
    let mut regs = [NONE; 2];
    let mut size = 0u8;
    for i in 0..ins.op_count().min(3) {
        match ins.op_kind(i) {
            OpKind::Register if i < 2 => {
                let r = ins.op_register(i);
                let (c, n) = class_of(r);
                classes[i as usize] = c;
                regs[i as usize] = n;
                if c == SimdClass::Gpr {
                    size = r.size() as u8;
                }
            }
            OpKind::Memory if i < 2 => {
                classes[i as usize] = SimdClass::Mem;
                size = ins.memory_size().size() as u8;
            }
            OpKind::Immediate8 => op.imm = ins.immediate8() as u64,
            _ => {}
        }
    }
    if ins.op_count() == 1 {
        classes[1] = classes[0];
        regs[1] = regs[0];
    }
    op.r = regs[0];
    op.rm = regs[1];
    let unaligned = matches!(
        ins.mnemonic(),
        Mnemonic::Movups | Mnemonic::Movupd | Mnemonic::Movdqu | Mnemonic::Maskmovdqu
    );
    let aligned = ins.op_count() > 0 && !unaligned && ins.memory_size().size() == 16;
    op.set_simd(classes[0], classes[1], aligned);
    op.size = size;
}

/// Whether `ins` belongs here: MMX, SSE or SSE2 (not the x87, not the fences and hints
/// the data-movement compiler already has).
pub fn is_simd(ins: &Instruction) -> bool {
    ins.cpuid_features().iter().any(|f| {
        matches!(
            f,
            CpuidFeature::MMX | CpuidFeature::SSE | CpuidFeature::SSE2
        )
    })
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    operands(ins, op);
    if let Some(h) = int::compile(ins, op) {
        return Some(h);
    }
    if let Some(h) = moves::compile(ins, op) {
        return Some(h);
    }
    if let Some(h) = fp::compile(ins, op) {
        return Some(h);
    }
    convert::compile(ins, op)
}
