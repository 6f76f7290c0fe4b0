//! Pre-decoding: iced-x86 decodes an instruction once, and it is compiled into an
//! [`Op`]: its handler and the operand fields the handler reads, so executing it again
//! decodes nothing.

mod cc;

pub use cc::{
    BitTest, Cond, Count, DoubleShift, FlagChange, FsGsBase, Io, LoopKind, MemFmt, MulDiv, Scan,
    Shift, SimdClass, StringOp,
};

use crate::exec::{Exec, AH, NONE};
use crate::fault::Stop;
use crate::ops;
use crate::state::{CS, DS, ES, FS, GS, SS};
use iced_x86::{Instruction, OpKind, Register};

/// Executes one compiled instruction. On entry RIP already points at the next
/// instruction; a handler that branches sets it. On `Err`, the run loop puts RIP back
/// on the instruction (except after HLT).
pub type Handler = fn(&mut Exec, &Op) -> Result<(), Stop>;

/// A compiled instruction.
#[derive(Clone)]
pub struct Op {
    pub exec: Handler,
    /// RIP of this instruction and of the next.
    pub ip: u64,
    pub next: u64,
    pub len: u8,
    /// Operand size in bytes.
    pub size: u8,
    /// Address size in bytes (memory operands, string instructions, LOOP's counter).
    pub asize: u8,
    /// The ModRM reg operand (or the only register operand).
    pub r: u8,
    /// The r/m operand when it is a register; [`NONE`] when it is memory.
    pub rm: u8,
    /// The memory operand: segment, base, index and scale (shift), displacement (the
    /// absolute address for RIP-relative operands).
    pub seg: u8,
    pub base: u8,
    pub index: u8,
    pub scale: u8,
    pub disp: u64,
    /// A selector whose meaning depends on the instruction, private to `decode`: each
    /// meaning has a type, a constructor and an accessor in `decode/cc.rs` (which
    /// tabulates them with their handlers and encodings), and nothing else reads it.
    /// The meanings, with the instructions whose handlers read them:
    /// - [`Op::condition`] ([`Cond`]): Jcc, SETcc, CMOVcc;
    /// - [`Op::segment_register`] (an index into `Cpu::seg`): MOV Sreg, r/m; MOV r/m,
    ///   Sreg; PUSH/POP Sreg; LDS, LES, LFS, LGS, LSS;
    /// - [`Op::control_register`]: MOV to and from CR0, CR2, CR3, CR4, CR8;
    /// - [`Op::debug_register`]: MOV to and from DR0-DR7;
    /// - [`Op::string_op`] ([`StringOp`]): MOVS, STOS, LODS, CMPS, SCAS;
    /// - [`Op::shift`] ([`Shift`]) and [`Op::count`] ([`Count`]): ROL, ROR, RCL, RCR,
    ///   SHL/SAL, SHR, SAR;
    /// - [`Op::double_shift`] ([`DoubleShift`]) and [`Op::count`]: SHLD, SHRD;
    /// - [`Op::bit_test`] ([`BitTest`]) and [`Op::bit_offset_imm`]: BT, BTS, BTR, BTC;
    /// - [`Op::scan`] ([`Scan`]): BSF, BSR, TZCNT, LZCNT, POPCNT;
    /// - [`Op::mul_div`] ([`MulDiv`]): MUL, IMUL, DIV, IDIV;
    /// - [`Op::subtracts`]: DAA/DAS, AAA/AAS;
    /// - [`Op::loop_kind`] ([`LoopKind`]): LOOP, LOOPE, LOOPNE, JCXZ/JECXZ/JRCXZ;
    /// - [`Op::io`] ([`Io`]): IN, OUT, INS, OUTS;
    /// - [`Op::flag_change`] ([`FlagChange`]): CLC, STC, CMC, CLD, STD, CLI, STI;
    /// - one of a pair: [`Op::idt`] LGDT/LIDT and SGDT/SIDT, [`Op::task_register`]
    ///   SLDT/STR, [`Op::lsl`] LAR/LSL, [`Op::verw`] VERR/VERW, [`Op::rdtscp`]
    ///   RDTSC/RDTSCP, [`Op::clac`] STAC/CLAC;
    /// - [`Op::fs_gs_base`] ([`FsGsBase`]): RDFSBASE, RDGSBASE, WRFSBASE, WRGSBASE;
    /// - [`Op::simd_dst`], [`Op::simd_src`] ([`SimdClass`]) and [`Op::simd_aligned`]:
    ///   the MMX, SSE and SSE2 instructions;
    /// - [`Op::x87_memory`] and [`Op::x87_format`] ([`MemFmt`]): the x87 instructions.
    ///
    /// Every other instruction leaves it 0 and reads nothing from it.
    cc: u8,
    /// The repeat prefix (read by the string instructions and INS/OUTS).
    pub rep: Rep,
    pub lock: bool,
    pub imm: u64,
    pub imm2: u64,
    /// Branch target (near branches), already truncated to the operand size.
    pub target: u64,
    /// The decoded instruction, for handlers of rare forms.
    pub ins: Instruction,
}

/// A repeat prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rep {
    None = 0,
    /// F3: REP, or REPE for CMPS and SCAS.
    Rep = 1,
    /// F2: REPNE.
    Repne = 2,
}

/// A handler for instructions the block builder reports as unsupported.
fn unsupported(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    Err(x.unsupported())
}

/// #UD: an invalid encoding, or an instruction this processor does not have.
pub fn invalid(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    Err(x.ud())
}

/// The register encoding of an iced general-purpose register (any width): 0..15, and
/// 16..19 for AH..BH.
pub fn gpr(r: Register) -> u8 {
    use Register as R;
    let n = r as u32;
    let base = |first: Register| n - first as u32;
    if (R::RAX as u32..=R::R15 as u32).contains(&n) {
        base(R::RAX) as u8
    } else if (R::EAX as u32..=R::R15D as u32).contains(&n) {
        base(R::EAX) as u8
    } else if (R::AX as u32..=R::R15W as u32).contains(&n) {
        base(R::AX) as u8
    } else if (R::AL as u32..=R::BL as u32).contains(&n) {
        base(R::AL) as u8
    } else if (R::AH as u32..=R::BH as u32).contains(&n) {
        AH + base(R::AH) as u8
    } else if (R::SPL as u32..=R::R15L as u32).contains(&n) {
        4 + base(R::SPL) as u8
    } else {
        NONE
    }
}

/// The index into `Cpu::seg` of a segment register.
pub fn seg_index(r: Register) -> u8 {
    match r {
        Register::ES => ES as u8,
        Register::CS => CS as u8,
        Register::SS => SS as u8,
        Register::FS => FS as u8,
        Register::GS => GS as u8,
        _ => DS as u8,
    }
}

/// Size in bytes of operand `i`.
pub fn op_size(ins: &Instruction, i: u32) -> usize {
    match ins.op_kind(i) {
        OpKind::Register => ins.op_register(i).size(),
        OpKind::Immediate8 | OpKind::Immediate8_2nd => 1,
        OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
        OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
        OpKind::Immediate64 | OpKind::Immediate8to64 | OpKind::Immediate32to64 => 8,
        _ => ins.memory_size().size(),
    }
}

/// The address size of an instruction, in bytes.
pub fn address_size(ins: &Instruction, bitness: u32) -> u8 {
    let from_reg = |r: Register| -> Option<u8> {
        (r != Register::None && r != Register::RIP && r != Register::EIP).then(|| r.size() as u8)
    };
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => return 2,
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => return 4,
            OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => return 8,
            OpKind::Memory => {
                if let Some(s) =
                    from_reg(ins.memory_base()).or_else(|| from_reg(ins.memory_index()))
                {
                    return s;
                }
                if ins.memory_base() == Register::EIP {
                    return 4;
                }
                if ins.memory_base() == Register::RIP {
                    return 8;
                }
                return match ins.memory_displ_size() {
                    2 => 2,
                    4 => 4,
                    8 => 8,
                    _ => (bitness / 8) as u8,
                };
            }
            _ => {}
        }
    }
    // No memory operand: the mode's default (LOOP and JrCXZ take theirs from the Code).
    (bitness / 8) as u8
}

/// Compiles `ins`, decoded at `ip` in `bitness`-bit code.
pub fn compile(ins: &Instruction, bitness: u32) -> Op {
    let mut op = Op {
        exec: unsupported,
        ip: ins.ip(),
        next: ins.next_ip() & if bitness == 64 { u64::MAX } else { 0xffff_ffff },
        len: ins.len() as u8,
        size: 0,
        asize: address_size(ins, bitness),
        r: NONE,
        rm: NONE,
        seg: DS as u8,
        base: NONE,
        index: NONE,
        scale: 0,
        disp: 0,
        cc: 0,
        rep: if ins.has_rep_prefix() || ins.has_repe_prefix() {
            Rep::Rep
        } else if ins.has_repne_prefix() {
            Rep::Repne
        } else {
            Rep::None
        },
        lock: ins.has_lock_prefix(),
        imm: 0,
        imm2: 0,
        target: 0,
        ins: *ins,
    };
    if bitness == 16 {
        op.next &= 0xffff_ffff;
    }
    // Operands in the common shape: a register reg field, an r/m, an immediate.
    let mut reg_seen = false;
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::Register => {
                let r = ins.op_register(i);
                let g = gpr(r);
                if g == NONE {
                    continue;
                }
                if !reg_seen {
                    op.r = g;
                    reg_seen = true;
                } else {
                    op.rm = g;
                }
            }
            OpKind::Memory => {
                op.seg = seg_index(ins.memory_segment());
                let base = ins.memory_base();
                if base != Register::RIP && base != Register::EIP {
                    op.base = gpr(base);
                }
                op.index = gpr(ins.memory_index());
                op.scale = ins.memory_index_scale().trailing_zeros() as u8;
                op.disp = ins.memory_displacement64();
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => op.imm = ins.immediate(i),
            OpKind::Immediate8_2nd => op.imm2 = ins.immediate8_2nd() as u64,
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                op.target = ins.near_branch_target()
            }
            _ => {}
        }
    }
    // Memory operands first in the operand list put the register in `r` as the source:
    // `rm` is NONE then, and handlers read the register from `r`.
    if ins.op_count() > 0 {
        op.size = op_size(ins, 0) as u8;
    }
    op.exec = ops::compile(ins, &mut op, bitness);
    op
}

/// The effective address (offset in its segment) of `op`'s memory operand.
#[inline(always)]
pub fn ea(x: &Exec, op: &Op) -> u64 {
    let mut a = op.disp;
    if op.base != NONE {
        a = a.wrapping_add(x.cpu.gpr[op.base as usize]);
    }
    if op.index != NONE {
        a = a.wrapping_add(x.cpu.gpr[op.index as usize] << op.scale);
    }
    a & crate::flags::mask(op.asize as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Op` is copied into every block and read on every instruction: its size is part
    /// of the interpreter's speed. A change to it should be deliberate.
    #[test]
    fn op_keeps_its_size() {
        assert_eq!(std::mem::size_of::<Op>(), 112);
    }
}
