//! Instruction handlers, one module per family, and the compiler that picks a handler
//! (and its operand form) for each decoded instruction.

pub mod arith;
pub mod bits;
pub mod control;
pub mod data;
pub mod io;
pub mod shift;
pub mod simd;
pub mod stack;
pub mod string;
pub mod system;
pub mod x87;

use crate::decode::{ea, invalid, Handler, Op};
use crate::exec::{Exec, NONE};
use crate::fault::Stop;
use crate::paging::Access;
use iced_x86::{CpuidFeature, Instruction, Mnemonic, OpKind};

/// The copy of handler `$f` for condition `$cc` (a [`crate::decode::Cond`]): the
/// condition is a constant when it executes.
macro_rules! by_condition {
    ($f:ident, $cc:expr) => {
        match $cc as u8 {
            0 => $f::<0> as crate::decode::Handler,
            1 => $f::<1>,
            2 => $f::<2>,
            3 => $f::<3>,
            4 => $f::<4>,
            5 => $f::<5>,
            6 => $f::<6>,
            7 => $f::<7>,
            8 => $f::<8>,
            9 => $f::<9>,
            10 => $f::<10>,
            11 => $f::<11>,
            12 => $f::<12>,
            13 => $f::<13>,
            14 => $f::<14>,
            _ => $f::<15>,
        }
    };
}
pub(crate) use by_condition;

/// The copy of handler `$f` for operand size `$s` (1, 2, 4 or 8 bytes): the size is
/// a constant when it executes.
macro_rules! by_size {
    ($f:ident, $s:expr) => {
        match $s {
            1 => $f::<1> as crate::decode::Handler,
            2 => $f::<2>,
            4 => $f::<4>,
            _ => $f::<8>,
        }
    };
}
pub(crate) use by_size;

/// Where an instruction's destination (or only operand) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Register destination, register source (`r`, `rm`).
    RegReg,
    /// Register destination, memory source.
    RegMem,
    /// Memory destination, register source (in `r`).
    MemReg,
    /// Register destination, immediate source.
    RegImm,
    /// Memory destination, immediate source.
    MemImm,
}

/// The form of a two-operand instruction.
pub fn form(ins: &Instruction) -> Form {
    let k0 = ins.op_kind(0);
    let k1 = if ins.op_count() > 1 {
        ins.op_kind(1)
    } else {
        OpKind::Register
    };
    let imm = !matches!(k1, OpKind::Register | OpKind::Memory);
    match (k0 == OpKind::Memory, k1 == OpKind::Memory, imm) {
        (true, _, true) => Form::MemImm,
        (true, _, false) => Form::MemReg,
        (false, true, _) => Form::RegMem,
        (false, false, true) => Form::RegImm,
        (false, false, false) => Form::RegReg,
    }
}

/// Reads the r/m operand: the register `rm`, or memory.
#[inline(always)]
pub fn read_rm(x: &mut Exec, op: &Op, size: usize) -> Result<u64, Stop> {
    if op.rm != NONE {
        Ok(x.reg(op.rm, size))
    } else {
        let a = ea(x, op);
        x.read(op.seg as usize, a, size)
    }
}

/// Writes the r/m operand.
#[inline(always)]
pub fn write_rm(x: &mut Exec, op: &Op, size: usize, v: u64) -> Result<(), Stop> {
    if op.rm != NONE {
        x.set_reg(op.rm, size, v);
        Ok(())
    } else {
        let a = ea(x, op);
        x.write(op.seg as usize, a, size, v)
    }
}

/// A read-modify-write memory operand: translated once, for writing (a read-only page
/// faults with W set before anything is read, as the processor's locked accesses do).
pub struct Rmw {
    pub lin: u64,
}

#[inline(always)]
pub fn rmw_begin(x: &mut Exec, op: &Op, size: usize) -> Result<(Rmw, u64), Stop> {
    let a = ea(x, op);
    let lin = x.linear(op.seg as usize, a, size, true)?;
    let v = read_for_write(x, lin, size)?;
    Ok((Rmw { lin }, v))
}

#[inline(always)]
pub fn rmw_end(x: &mut Exec, r: Rmw, size: usize, v: u64) -> Result<(), Stop> {
    x.write_lin(r.lin, size, v)
}

/// Reads `size` bytes at `lin` that are about to be written: the write permission is
/// checked first; an MMIO target exits as the read it first is.
#[inline(always)]
pub fn read_for_write(x: &mut Exec, lin: u64, size: usize) -> Result<u64, Stop> {
    if (lin & 0xfff) as usize + size <= 0x1000 {
        if let Some(p) = x
            .tlb
            .lookup(lin, crate::tlb::need(Access::Write, x.cpu.cpl() == 3))
        {
            // SAFETY: the TLB grants writes to the whole page of RAM.
            return Ok(unsafe { hv_core::shared::load(p, size) });
        }
    }
    let who = x.privilege();
    // Check writability of every byte first; RAM that cannot be written exits as MMIO.
    match x.translate(lin, Access::Write, who) {
        Ok(_) => {}
        Err(Stop::Exit) => {
            if let crate::fault::Exit::Mmio { access, .. } = &mut x.exit {
                *access = Access::Read;
            }
            return Err(Stop::Exit);
        }
        Err(e) => return Err(e),
    }
    if (lin & 0xfff) as usize + size > 0x1000 {
        x.translate(lin.wrapping_add(size as u64 - 1), Access::Write, who)?;
    }
    x.read_slow(lin, size, Access::Read, who)
}

/// The CPUID features of instructions this processor has (what its CPUID advertises,
/// `crate::cpuid`): an instruction needing anything else is #UD, as on a processor
/// without it.
fn available(f: CpuidFeature) -> bool {
    use CpuidFeature as F;
    matches!(
        f,
        F::INTEL8086
            | F::INTEL8086_ONLY
            | F::INTEL186
            | F::INTEL286
            | F::INTEL386
            | F::INTEL486
            | F::X64
            | F::CPUID
            | F::CMOV
            | F::CX8
            | F::CMPXCHG16B
            | F::MSR
            | F::TSC
            | F::RDTSCP
            | F::SYSCALL
            | F::SEP
            | F::POPCNT
            | F::LZCNT
            | F::MOVBE
            | F::FSGSBASE
            | F::SMAP
            | F::PKU
            | F::PAUSE
            | F::MULTIBYTENOP
            | F::CLFSH
            | F::CET_IBT
            | F::FPU
            | F::FPU287
            | F::FPU387
            | F::FXSR
            | F::MMX
            | F::SSE
            | F::SSE2
    )
}

/// An x87 instruction (or FXSAVE/FXRSTOR, which save its state).
fn is_x87(ins: &Instruction) -> bool {
    use CpuidFeature as F;
    ins.cpuid_features()
        .iter()
        .any(|f| matches!(f, F::FPU | F::FPU287 | F::FPU387 | F::FXSR))
}

/// Picks `ins`'s handler and fills the fields it reads.
pub fn compile(ins: &Instruction, op: &mut Op, bits: u32) -> Handler {
    use Mnemonic as M;
    if ins.is_invalid() {
        return invalid;
    }
    let m = ins.mnemonic();
    let h = match m {
        M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor | M::Cmp | M::Test => {
            arith::compile_binary(ins, op)
        }
        M::Inc | M::Dec | M::Neg | M::Not => arith::compile_unary(ins, op),
        M::Mul | M::Imul | M::Div | M::Idiv => arith::compile_muldiv(ins, op),
        M::Daa | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad => arith::compile_bcd(ins, op),
        M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => {
            shift::compile_shift(ins, op)
        }
        M::Shld | M::Shrd => shift::compile_double(ins, op),
        M::Bt | M::Bts | M::Btr | M::Btc => bits::compile_bt(ins, op),
        M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt | M::Popcnt => bits::compile_scan(ins, op),
        M::Bswap => bits::compile_bswap(ins, op),
        M::Movbe => bits::compile_movbe(ins, op),
        M::Mov => data::compile_mov(ins, op),
        M::Movzx | M::Movsx | M::Movsxd => data::compile_extend(ins, op),
        M::Lea => data::compile_lea(ins, op),
        M::Xchg => data::compile_xchg(ins, op),
        M::Xadd => data::compile_xadd(ins, op),
        M::Cmpxchg => data::compile_cmpxchg(ins, op),
        M::Cmpxchg8b | M::Cmpxchg16b => data::compile_cmpxchg_wide(ins, op),
        M::Cbw | M::Cwde | M::Cdqe | M::Cwd | M::Cdq | M::Cqo => data::compile_convert(ins, op),
        M::Lahf | M::Sahf => data::compile_ahf(ins, op),
        M::Xlatb => data::compile_xlat(ins, op),
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => data::compile_load_far(ins, op),
        M::Pause => Some(data::pause as Handler),
        M::Nop
        | M::Lfence
        | M::Mfence
        | M::Sfence
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Prefetchw
        | M::Endbr32
        | M::Endbr64
        | M::Clflush
        | M::Clflushopt
        | M::Reservednop => data::compile_nop(ins, op),
        M::Wait => Some(x87::wait as Handler),
        M::Salc => system::compile_misc(ins, op),
        _ if is_x87(ins) => x87::compile(ins, op),
        _ if simd::is_simd(ins)
            && !matches!(
                m,
                M::Lfence
                    | M::Mfence
                    | M::Sfence
                    | M::Prefetchnta
                    | M::Prefetcht0
                    | M::Prefetcht1
                    | M::Prefetcht2
            ) =>
        {
            simd::compile(ins, op)
        }
        _ if ins.is_jcc_short_or_near() => control::compile_jcc(ins, op),
        M::Seta
        | M::Setae
        | M::Setb
        | M::Setbe
        | M::Sete
        | M::Setg
        | M::Setge
        | M::Setl
        | M::Setle
        | M::Setne
        | M::Setno
        | M::Setnp
        | M::Setns
        | M::Seto
        | M::Setp
        | M::Sets => data::compile_setcc(ins, op),
        M::Cmova
        | M::Cmovae
        | M::Cmovb
        | M::Cmovbe
        | M::Cmove
        | M::Cmovg
        | M::Cmovge
        | M::Cmovl
        | M::Cmovle
        | M::Cmovne
        | M::Cmovno
        | M::Cmovnp
        | M::Cmovns
        | M::Cmovo
        | M::Cmovp
        | M::Cmovs => data::compile_cmov(ins, op),
        M::Push | M::Pop => stack::compile_push_pop(ins, op, bits),
        M::Pusha | M::Pushad | M::Popa | M::Popad => stack::compile_pusha(ins, op),
        M::Pushf | M::Pushfd | M::Pushfq | M::Popf | M::Popfd | M::Popfq => {
            stack::compile_pushf(ins, op)
        }
        M::Enter | M::Leave => stack::compile_enter_leave(ins, op, bits),
        M::Jmp | M::Call | M::Ret | M::Retf => control::compile_transfer(ins, op, bits),
        M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz | M::Jrcxz => {
            control::compile_loop(ins, op)
        }
        M::Int | M::Int3 | M::Into | M::Int1 | M::Iret | M::Iretd | M::Iretq | M::Bound => {
            control::compile_interrupt(ins, op)
        }
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Movsq
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Stosq
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Lodsq
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Cmpsq
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Scasq
            if ins.is_string_instruction() =>
        {
            string::compile(ins, op)
        }
        M::In | M::Out | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            io::compile(ins, op)
        }
        M::Clc | M::Stc | M::Cmc | M::Cld | M::Std | M::Cli | M::Sti => {
            system::compile_flag_op(ins, op)
        }
        _ => system::compile(ins, op, bits),
    };
    h.unwrap_or_else(|| {
        if ins.cpuid_features().iter().all(|&f| available(f)) {
            // Baseline but not written yet: the VMM hears of it.
            unsupported_baseline
        } else {
            invalid
        }
    })
}

/// An instruction of the baseline this processor has not implemented: an exit, so the
/// gap is reported instead of a #UD the guest would not expect.
fn unsupported_baseline(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    Err(x.unsupported())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Code;

    /// Every instruction form whose CPUID features this processor advertises has a
    /// handler: `EUNSUPPORTED_INSTRUCTION` must never reach a guest (#15: "the goal is
    /// none"). Forms the processor does not advertise are #UD, as on hardware.
    #[test]
    fn every_advertised_instruction_form_has_a_handler() {
        let mut missing = Vec::new();
        for code in Code::values() {
            let pseudo = matches!(
                code,
                Code::DeclareByte
                    | Code::DeclareWord
                    | Code::DeclareDword
                    | Code::DeclareQword
                    | Code::Zero_bytes
            );
            if code == Code::INVALID
                || pseudo
                || !code.cpuid_features().iter().all(|&f| available(f))
            {
                continue;
            }
            let mut ins = Instruction::default();
            ins.set_code(code);
            let bits = 64;
            let mut op = crate::decode::compile(&ins, bits);
            let h = compile(&ins, &mut op, bits);
            if std::ptr::fn_addr_eq(h, unsupported_baseline as Handler) {
                missing.push(format!("{code:?}"));
            }
        }
        assert!(
            missing.is_empty(),
            "{} forms without a handler: {}",
            missing.len(),
            missing.join(" ")
        );
    }
}
