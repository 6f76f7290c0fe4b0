//! The meanings of [`Op`]'s selector byte, `cc`: one `u8` that each handler family reads
//! as something of its own (a condition, a register number, which of several related
//! instructions...). Here, in one place, each meaning has a type, a constructor its
//! compiler calls (`set_*`) and an accessor its handlers call; nothing else touches the
//! byte. The storage stays one byte, and the accessors compile to the masks and
//! compares the handlers did on the raw byte (Op is copied into every block and read on
//! every instruction): the enums' discriminants are the values the byte holds, so
//! turning the byte into one is a mask, and the handler's `match` on it is the `match`
//! it had on the number.
//!
//! | accessor(s) | type | opcodes | handlers (`ops::`) | byte |
//! |---|---|---|---|---|
//! | [`Op::condition`] | [`Cond`] | Jcc, SETcc, CMOVcc | `control::jcc`, `data::setcc`, `data::cmov` (a copy per condition: they read it when compiled) | 0..15, the opcode's low nibble |
//! | [`Op::segment_register`] | `usize` | MOV Sreg, r/m; MOV r/m, Sreg; PUSH/POP Sreg; LDS, LES, LFS, LGS, LSS | `data::mov_to_seg`, `data::mov_from_seg`, `data::load_far`, `stack::push_seg`, `stack::pop_seg` | index into `Cpu::seg` (`state::ES`..`GS`) |
//! | [`Op::control_register`] | `u8` | MOV CRn, r; MOV r, CRn | `system::mov_to_cr`, `system::mov_from_cr` | n: 0, 2, 3, 4, 8 |
//! | [`Op::debug_register`] | `u8` | MOV DRn, r; MOV r, DRn | `system::mov_to_dr`, `system::mov_from_dr` | n: 0..7 |
//! | [`Op::string_op`] | [`StringOp`] | MOVS, STOS, LODS, CMPS, SCAS (REP is [`Op::rep`]) | `string::once`, `string::repeated` | 0..4 |
//! | [`Op::shift`], [`Op::count`] | [`Shift`], [`Count`] | ROL, ROR, RCL, RCR, SHL/SAL, SHR, SAR | `shift::shift_r`, `shift::shift_m` | bits 2:0 the shift, 5:4 the count's source |
//! | [`Op::double_shift`], [`Op::count`] | [`DoubleShift`], [`Count`] | SHLD, SHRD | `shift::shld_shrd` | bit 0 SHRD, 5:4 the count's source |
//! | [`Op::bit_test`], [`Op::bit_offset_imm`] | [`BitTest`], `bool` | BT, BTS, BTR, BTC | `bits::bt_reg`, `bits::bt_mem_reg` | bits 1:0 the operation, bit 4 an immediate bit offset |
//! | [`Op::scan`] | [`Scan`] | BSF, BSR, TZCNT (as BSF), LZCNT, POPCNT | `bits::scan` | 0..3 |
//! | [`Op::mul_div`] | [`MulDiv`] | MUL, IMUL (1, 2 and 3 operands), DIV, IDIV | `arith::mul1`, `arith::imul2`, `arith::div` | 0..3 |
//! | [`Op::subtracts`] | `bool` | DAA/DAS, AAA/AAS | `arith::daa_das`, `arith::aaa_aas` | 1: DAS, AAS |
//! | [`Op::loop_kind`] | [`LoopKind`] | LOOP, LOOPE, LOOPNE, JCXZ/JECXZ/JRCXZ | `control::loop_op` | 0..3 |
//! | [`Op::io`] | [`Io`] | IN, OUT, INS, OUTS | `io::io` | bit 0 input, bit 1 string, bit 4 immediate port |
//! | [`Op::flag_change`] | [`FlagChange`] | CLC, STC, CMC, CLD, STD, CLI, STI | `system::flag_op` | 0..6 |
//! | [`Op::idt`] | `bool` | LGDT/LIDT, SGDT/SIDT | `system::load_table`, `system::store_table` | 1: the IDTR |
//! | [`Op::task_register`] | `bool` | SLDT/STR | `system::store_selector` | 1: TR |
//! | [`Op::lsl`] | `bool` | LAR/LSL | `system::lar_lsl` | 1: LSL |
//! | [`Op::verw`] | `bool` | VERR/VERW | `system::verr_verw` | 1: VERW |
//! | [`Op::rdtscp`] | `bool` | RDTSC/RDTSCP | `system::rdtsc` | 1: RDTSCP |
//! | [`Op::clac`] | `bool` | STAC/CLAC | `system::stac_clac` | 1: CLAC |
//! | [`Op::fs_gs_base`] | [`FsGsBase`] | RDFSBASE, RDGSBASE, WRFSBASE, WRGSBASE | `system::fsgsbase` | 0..3 |
//! | [`Op::simd_dst`], [`Op::simd_src`], [`Op::simd_aligned`] | [`SimdClass`], `bool` | MMX, SSE, SSE2 | everything in `simd` | bits 1:0 the destination's class, 3:2 the source's, bit 4 alignment required |
//! | [`Op::x87_memory`], [`Op::x87_format`] | [`MemFmt`] | the x87 instructions | `x87::*` (`has_mem`, the memory forms) | 0: no memory operand in a format, else the format |
//!
//! Every other instruction leaves the byte 0 and reads nothing from it. A handler must
//! read only the meaning its compiler wrote: the byte does not say which it holds.

use super::Op;
use iced_x86::{ConditionCode, MemorySize};

/// A condition code (SDM vol 1 appendix B): the low nibble of the Jcc, SETcc and CMOVcc
/// opcodes. Bit 0 negates the condition of the other three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cond {
    /// OF = 1.
    O = 0,
    No = 1,
    /// CF = 1 (below, carry).
    B = 2,
    Ae = 3,
    /// ZF = 1 (equal, zero).
    E = 4,
    Ne = 5,
    /// CF = 1 or ZF = 1 (below or equal).
    Be = 6,
    A = 7,
    /// SF = 1.
    S = 8,
    Ns = 9,
    /// PF = 1.
    P = 10,
    Np = 11,
    /// SF != OF (less).
    L = 12,
    Ge = 13,
    /// ZF = 1 or SF != OF (less or equal).
    Le = 14,
    G = 15,
}

impl Cond {
    /// The condition of nibble `n` (bits above the low four are ignored).
    #[inline(always)]
    pub fn from_nibble(n: u8) -> Cond {
        use Cond::*;
        match n & 15 {
            0 => O,
            1 => No,
            2 => B,
            3 => Ae,
            4 => E,
            5 => Ne,
            6 => Be,
            7 => A,
            8 => S,
            9 => Ns,
            10 => P,
            11 => Np,
            12 => L,
            13 => Ge,
            14 => Le,
            _ => G,
        }
    }

    /// The condition of a Jcc, SETcc or CMOVcc as iced decodes it (whose
    /// `ConditionCode` counts from 1, after `None`).
    pub fn of(c: ConditionCode) -> Cond {
        Cond::from_nibble((c as u8).wrapping_sub(1))
    }
}

/// Which string instruction (the repeat prefix is [`Op::rep`], the element size
/// `Op::size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StringOp {
    Movs = 0,
    Stos = 1,
    Lods = 2,
    Cmps = 3,
    Scas = 4,
}

/// Which shift or rotate: the ModRM reg field of C0, C1 and D0-D3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Shift {
    Rol = 0,
    Ror = 1,
    Rcl = 2,
    Rcr = 3,
    /// SHL and SAL (/4).
    Shl = 4,
    Shr = 5,
    /// /6, the undocumented encoding iced calls SAL: SHL again, as processors execute
    /// it. The compiler writes [`Shift::Shl`] for it; the variant exists so that every
    /// value of the three bits is one (reading the kind is a mask, no more).
    Sal = 6,
    Sar = 7,
}

/// Where a shift's count comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Count {
    /// D0/D1: a count of 1.
    One = 0,
    /// CL.
    Cl = 1,
    /// An immediate: `Op::imm` for the shifts and rotates, `Op::imm2` for SHLD/SHRD.
    Imm = 2,
}

/// SHLD or SHRD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DoubleShift {
    Shld = 0,
    Shrd = 1,
}

/// What a bit test does to the bit after copying it to CF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BitTest {
    /// BT: nothing.
    Bt = 0,
    /// BTS: sets it.
    Bts = 1,
    /// BTR: clears it.
    Btr = 2,
    /// BTC: complements it.
    Btc = 3,
}

/// Which bit scan or count (TZCNT is BSF here: BMI1 is not advertised, and F3 0F BC
/// is BSF on such processors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Scan {
    Bsf = 0,
    Bsr = 1,
    Lzcnt = 2,
    Popcnt = 3,
}

/// Which multiply or divide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MulDiv {
    /// MUL r/m, DIV r/m.
    Unsigned = 0,
    /// IMUL r/m, IDIV r/m.
    Signed = 1,
    /// IMUL r, r/m.
    Imul2 = 2,
    /// IMUL r, r/m, imm (the immediate in `Op::imm`, truncated to the operand size).
    Imul3 = 3,
}

/// Which of LOOP, LOOPE, LOOPNE and JrCXZ (the counter's width is `Op::asize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LoopKind {
    Loop = 0,
    Loope = 1,
    Loopne = 2,
    /// JCXZ, JECXZ, JRCXZ.
    Jcxz = 3,
}

/// The form of a port I/O instruction (its width is `Op::size`, a REP prefix
/// [`Op::rep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    /// IN or INS (else OUT or OUTS).
    pub input: bool,
    /// INS or OUTS.
    pub string: bool,
    /// The port is the immediate in `Op::imm` (else DX).
    pub imm_port: bool,
}

/// Which flag instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlagChange {
    Clc = 0,
    Stc = 1,
    Cmc = 2,
    Cld = 3,
    Std = 4,
    Cli = 5,
    Sti = 6,
}

/// Which of RDFSBASE, RDGSBASE, WRFSBASE, WRGSBASE (bit 0: GS, bit 1: a write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FsGsBase {
    RdFs = 0,
    RdGs = 1,
    WrFs = 2,
    WrGs = 3,
}

impl FsGsBase {
    /// GS's base (else FS's).
    #[inline(always)]
    pub fn gs(self) -> bool {
        self as u8 & 1 != 0
    }

    /// A write of the base from `Op::r` (else a read into it).
    #[inline(always)]
    pub fn write(self) -> bool {
        self as u8 & 2 != 0
    }
}

/// Where an MMX/SSE operand lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SimdClass {
    Xmm = 0,
    Mmx = 1,
    /// A general register (`Op::size` bytes of it).
    Gpr = 2,
    /// The memory operand.
    Mem = 3,
}

impl SimdClass {
    #[inline(always)]
    fn from_bits(b: u8) -> SimdClass {
        match b & 3 {
            0 => SimdClass::Xmm,
            1 => SimdClass::Mmx,
            2 => SimdClass::Gpr,
            _ => SimdClass::Mem,
        }
    }
}

/// An x87 memory operand's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MemFmt {
    F32 = 1,
    F64 = 2,
    F80 = 3,
    I16 = 4,
    I32 = 5,
    I64 = 6,
    Bcd = 7,
}

impl MemFmt {
    /// Its size in bytes.
    pub fn size(self) -> usize {
        match self {
            MemFmt::F32 | MemFmt::I32 => 4,
            MemFmt::F64 | MemFmt::I64 => 8,
            MemFmt::F80 | MemFmt::Bcd => 10,
            MemFmt::I16 => 2,
        }
    }

    /// The format of a memory operand of iced's size `ms`, if it is one (the control
    /// word, the environment and the state images are not).
    pub fn of(ms: MemorySize) -> Option<MemFmt> {
        Some(match ms {
            MemorySize::Float32 => MemFmt::F32,
            MemorySize::Float64 => MemFmt::F64,
            MemorySize::Float80 => MemFmt::F80,
            MemorySize::Int16 => MemFmt::I16,
            MemorySize::Int32 => MemFmt::I32,
            MemorySize::Int64 => MemFmt::I64,
            MemorySize::Bcd => MemFmt::Bcd,
            _ => return None,
        })
    }

    #[inline(always)]
    fn from_code(c: u8) -> MemFmt {
        match c {
            1 => MemFmt::F32,
            2 => MemFmt::F64,
            3 => MemFmt::F80,
            4 => MemFmt::I16,
            5 => MemFmt::I32,
            6 => MemFmt::I64,
            _ => MemFmt::Bcd,
        }
    }
}

/// Bit 4: an immediate operand (BT's bit offset, IN/OUT's port) or, for the MMX/SSE
/// instructions, a 16-byte memory operand that must be aligned.
const BIT4: u8 = 1 << 4;

impl Op {
    // ---- Jcc, SETcc, CMOVcc ------------------------------------------------------

    /// Jcc, SETcc, CMOVcc: the condition.
    #[inline(always)]
    pub fn condition(&self) -> Cond {
        Cond::from_nibble(self.cc)
    }

    pub(crate) fn set_condition(&mut self, c: Cond) {
        self.cc = c as u8;
    }

    // ---- segment, control and debug registers ------------------------------------

    /// MOV to and from a segment register, PUSH/POP Sreg, LDS/LES/LFS/LGS/LSS: the
    /// segment register, as its index in `Cpu::seg` (`state::ES`..`state::GS`). Not the
    /// memory operand's segment, which is `Op::seg`.
    #[inline(always)]
    pub fn segment_register(&self) -> usize {
        self.cc as usize
    }

    pub(crate) fn set_segment_register(&mut self, seg: usize) {
        self.cc = seg as u8;
    }

    /// MOV to or from a control register: its number (0, 2, 3, 4 or 8; the compiler
    /// makes the others #UD).
    #[inline(always)]
    pub fn control_register(&self) -> u8 {
        self.cc
    }

    pub(crate) fn set_control_register(&mut self, n: u8) {
        self.cc = n;
    }

    /// MOV to or from a debug register: its number, 0..7 (4 and 5 as encoded: the
    /// handler aliases them or faults by CR4.DE).
    #[inline(always)]
    pub fn debug_register(&self) -> u8 {
        self.cc
    }

    pub(crate) fn set_debug_register(&mut self, n: u8) {
        self.cc = n;
    }

    // ---- strings ------------------------------------------------------------------

    /// MOVS, STOS, LODS, CMPS, SCAS: which.
    #[inline(always)]
    pub fn string_op(&self) -> StringOp {
        match self.cc {
            0 => StringOp::Movs,
            1 => StringOp::Stos,
            2 => StringOp::Lods,
            3 => StringOp::Cmps,
            _ => StringOp::Scas,
        }
    }

    pub(crate) fn set_string_op(&mut self, s: StringOp) {
        self.cc = s as u8;
    }

    // ---- shifts and rotates -------------------------------------------------------

    /// The shifts and rotates (C0, C1, D0-D3): which.
    #[inline(always)]
    pub fn shift(&self) -> Shift {
        match self.cc & 7 {
            0 => Shift::Rol,
            1 => Shift::Ror,
            2 => Shift::Rcl,
            3 => Shift::Rcr,
            4 => Shift::Shl,
            5 => Shift::Shr,
            6 => Shift::Sal,
            _ => Shift::Sar,
        }
    }

    /// The shifts and rotates, SHLD and SHRD: where the count comes from. (Bit 4 is
    /// CL, bit 5 an immediate: telling CL from the rest tests one bit.)
    #[inline(always)]
    pub fn count(&self) -> Count {
        if self.cc & 0x10 != 0 {
            Count::Cl
        } else if self.cc & 0x20 != 0 {
            Count::Imm
        } else {
            Count::One
        }
    }

    pub(crate) fn set_shift(&mut self, s: Shift, count: Count) {
        self.cc = s as u8 | (count as u8) << 4;
    }

    /// SHLD, SHRD: which (the count is [`Op::count`]: CL or `Op::imm2`).
    #[inline(always)]
    pub fn double_shift(&self) -> DoubleShift {
        if self.cc & 1 == 0 {
            DoubleShift::Shld
        } else {
            DoubleShift::Shrd
        }
    }

    pub(crate) fn set_double_shift(&mut self, d: DoubleShift, count: Count) {
        self.cc = d as u8 | (count as u8) << 4;
    }

    // ---- bits -----------------------------------------------------------------------

    /// BT, BTS, BTR, BTC: which.
    #[inline(always)]
    pub fn bit_test(&self) -> BitTest {
        match self.cc & 3 {
            0 => BitTest::Bt,
            1 => BitTest::Bts,
            2 => BitTest::Btr,
            _ => BitTest::Btc,
        }
    }

    /// BT, BTS, BTR, BTC: the bit offset is the immediate in `Op::imm` (else the
    /// register `Op::r`).
    #[inline(always)]
    pub fn bit_offset_imm(&self) -> bool {
        self.cc & BIT4 != 0
    }

    pub(crate) fn set_bit_test(&mut self, t: BitTest, imm: bool) {
        self.cc = t as u8 | if imm { BIT4 } else { 0 };
    }

    /// BSF, BSR, TZCNT, LZCNT, POPCNT: which.
    #[inline(always)]
    pub fn scan(&self) -> Scan {
        match self.cc & 3 {
            0 => Scan::Bsf,
            1 => Scan::Bsr,
            2 => Scan::Lzcnt,
            _ => Scan::Popcnt,
        }
    }

    pub(crate) fn set_scan(&mut self, s: Scan) {
        self.cc = s as u8;
    }

    // ---- arithmetic -----------------------------------------------------------------

    /// MUL, IMUL, DIV, IDIV: which form.
    #[inline(always)]
    pub fn mul_div(&self) -> MulDiv {
        match self.cc & 3 {
            0 => MulDiv::Unsigned,
            1 => MulDiv::Signed,
            2 => MulDiv::Imul2,
            _ => MulDiv::Imul3,
        }
    }

    pub(crate) fn set_mul_div(&mut self, m: MulDiv) {
        self.cc = m as u8;
    }

    /// DAA/DAS, AAA/AAS: the subtraction's adjustment (DAS, AAS).
    #[inline(always)]
    pub fn subtracts(&self) -> bool {
        self.cc != 0
    }

    pub(crate) fn set_subtracts(&mut self, sub: bool) {
        self.cc = sub as u8;
    }

    // ---- control transfers, I/O, flags --------------------------------------------

    /// LOOP, LOOPE, LOOPNE, JrCXZ: which.
    #[inline(always)]
    pub fn loop_kind(&self) -> LoopKind {
        match self.cc & 3 {
            0 => LoopKind::Loop,
            1 => LoopKind::Loope,
            2 => LoopKind::Loopne,
            _ => LoopKind::Jcxz,
        }
    }

    pub(crate) fn set_loop_kind(&mut self, k: LoopKind) {
        self.cc = k as u8;
    }

    /// IN, OUT, INS, OUTS: the form.
    #[inline(always)]
    pub fn io(&self) -> Io {
        Io {
            input: self.cc & 1 != 0,
            string: self.cc & 2 != 0,
            imm_port: self.cc & BIT4 != 0,
        }
    }

    pub(crate) fn set_io(&mut self, io: Io) {
        self.cc = io.input as u8 | (io.string as u8) << 1 | if io.imm_port { BIT4 } else { 0 };
    }

    /// CLC, STC, CMC, CLD, STD, CLI, STI: which.
    #[inline(always)]
    pub fn flag_change(&self) -> FlagChange {
        match self.cc {
            0 => FlagChange::Clc,
            1 => FlagChange::Stc,
            2 => FlagChange::Cmc,
            3 => FlagChange::Cld,
            4 => FlagChange::Std,
            5 => FlagChange::Cli,
            _ => FlagChange::Sti,
        }
    }

    pub(crate) fn set_flag_change(&mut self, f: FlagChange) {
        self.cc = f as u8;
    }

    // ---- system instructions, one of a pair ---------------------------------------

    /// LGDT/LIDT, SGDT/SIDT: the IDTR (LIDT, SIDT), else the GDTR.
    #[inline(always)]
    pub fn idt(&self) -> bool {
        self.cc != 0
    }

    pub(crate) fn set_idt(&mut self, idt: bool) {
        self.cc = idt as u8;
    }

    /// SLDT/STR: TR (STR), else LDTR.
    #[inline(always)]
    pub fn task_register(&self) -> bool {
        self.cc != 0
    }

    pub(crate) fn set_task_register(&mut self, tr: bool) {
        self.cc = tr as u8;
    }

    /// LAR/LSL: LSL (the limit), else LAR (the access rights).
    #[inline(always)]
    pub fn lsl(&self) -> bool {
        self.cc != 0
    }

    pub(crate) fn set_lsl(&mut self, lsl: bool) {
        self.cc = lsl as u8;
    }

    /// VERR/VERW: VERW (writable), else VERR (readable).
    #[inline(always)]
    pub fn verw(&self) -> bool {
        self.cc != 0
    }

    pub(crate) fn set_verw(&mut self, verw: bool) {
        self.cc = verw as u8;
    }

    /// RDTSC/RDTSCP: RDTSCP (which also loads ECX with IA32_TSC_AUX).
    #[inline(always)]
    pub fn rdtscp(&self) -> bool {
        self.cc != 0
    }

    pub(crate) fn set_rdtscp(&mut self, rdtscp: bool) {
        self.cc = rdtscp as u8;
    }

    /// STAC/CLAC: CLAC (clears EFLAGS.AC), else STAC (sets it).
    #[inline(always)]
    pub fn clac(&self) -> bool {
        self.cc != 0
    }

    pub(crate) fn set_clac(&mut self, clac: bool) {
        self.cc = clac as u8;
    }

    /// RDFSBASE, RDGSBASE, WRFSBASE, WRGSBASE: which.
    #[inline(always)]
    pub fn fs_gs_base(&self) -> FsGsBase {
        match self.cc & 3 {
            0 => FsGsBase::RdFs,
            1 => FsGsBase::RdGs,
            2 => FsGsBase::WrFs,
            _ => FsGsBase::WrGs,
        }
    }

    pub(crate) fn set_fs_gs_base(&mut self, f: FsGsBase) {
        self.cc = f as u8;
    }

    // ---- MMX, SSE, SSE2 ---------------------------------------------------------

    /// MMX/SSE/SSE2: where the destination (operand 0, register `Op::r`) lives.
    #[inline(always)]
    pub fn simd_dst(&self) -> SimdClass {
        SimdClass::from_bits(self.cc)
    }

    /// MMX/SSE/SSE2: where the source (operand 1, register `Op::rm`; the destination's
    /// class again for one-operand forms) lives.
    #[inline(always)]
    pub fn simd_src(&self) -> SimdClass {
        SimdClass::from_bits(self.cc >> 2)
    }

    /// MMX/SSE/SSE2: a 16-byte memory operand must be 16-byte aligned (#GP(0)
    /// otherwise): every legacy SSE form but the unaligned moves.
    #[inline(always)]
    pub fn simd_aligned(&self) -> bool {
        self.cc & BIT4 != 0
    }

    pub(crate) fn set_simd(&mut self, dst: SimdClass, src: SimdClass, aligned: bool) {
        self.cc = dst as u8 | (src as u8) << 2 | if aligned { BIT4 } else { 0 };
    }

    // ---- x87 --------------------------------------------------------------------

    /// x87: the format of the memory operand, `None` for the register forms and the
    /// memory operands that are not a number (control word, environment, state).
    #[inline(always)]
    pub fn x87_memory(&self) -> Option<MemFmt> {
        (self.cc != 0).then(|| MemFmt::from_code(self.cc))
    }

    /// x87, the handlers of the memory forms: the memory operand's format (as
    /// [`Op::x87_memory`] without the `None` those handlers never see).
    #[inline(always)]
    pub fn x87_format(&self) -> MemFmt {
        MemFmt::from_code(self.cc)
    }

    pub(crate) fn set_x87_memory(&mut self, f: Option<MemFmt>) {
        self.cc = f.map_or(0, |f| f as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Instruction;

    fn op() -> Op {
        crate::decode::compile(&Instruction::default(), 64)
    }

    /// Every constructor's value comes back from its accessor, and a meaning's values
    /// are the byte the handlers read before the accessors (the discriminants).
    #[test]
    fn each_meaning_reads_back_what_its_constructor_wrote() {
        let mut op = op();
        for n in 0..16 {
            let c = Cond::from_nibble(n);
            assert_eq!(c as u8, n);
            op.set_condition(c);
            assert_eq!(op.condition(), c);
        }
        assert_eq!(Cond::of(iced_x86::ConditionCode::o), Cond::O);
        assert_eq!(Cond::of(iced_x86::ConditionCode::g), Cond::G);
        for seg in 0..6 {
            op.set_segment_register(seg);
            assert_eq!(op.segment_register(), seg);
        }
        for n in [0, 2, 3, 4, 8] {
            op.set_control_register(n);
            assert_eq!(op.control_register(), n);
        }
        for n in 0..8 {
            op.set_debug_register(n);
            assert_eq!(op.debug_register(), n);
        }
        use StringOp as S;
        for s in [S::Movs, S::Stos, S::Lods, S::Cmps, S::Scas] {
            op.set_string_op(s);
            assert_eq!(op.string_op(), s);
        }
        use Shift as H;
        for h in [
            H::Rol,
            H::Ror,
            H::Rcl,
            H::Rcr,
            H::Shl,
            H::Shr,
            H::Sal,
            H::Sar,
        ] {
            for c in [Count::One, Count::Cl, Count::Imm] {
                op.set_shift(h, c);
                assert_eq!((op.shift(), op.count()), (h, c));
            }
        }
        for d in [DoubleShift::Shld, DoubleShift::Shrd] {
            for c in [Count::Cl, Count::Imm] {
                op.set_double_shift(d, c);
                assert_eq!((op.double_shift(), op.count()), (d, c));
            }
        }
        for t in [BitTest::Bt, BitTest::Bts, BitTest::Btr, BitTest::Btc] {
            for imm in [false, true] {
                op.set_bit_test(t, imm);
                assert_eq!((op.bit_test(), op.bit_offset_imm()), (t, imm));
            }
        }
        for s in [Scan::Bsf, Scan::Bsr, Scan::Lzcnt, Scan::Popcnt] {
            op.set_scan(s);
            assert_eq!(op.scan(), s);
        }
        use MulDiv as M;
        for m in [M::Unsigned, M::Signed, M::Imul2, M::Imul3] {
            op.set_mul_div(m);
            assert_eq!(op.mul_div(), m);
        }
        use LoopKind as L;
        for k in [L::Loop, L::Loope, L::Loopne, L::Jcxz] {
            op.set_loop_kind(k);
            assert_eq!(op.loop_kind(), k);
        }
        for bits in 0..8 {
            let io = Io {
                input: bits & 1 != 0,
                string: bits & 2 != 0,
                imm_port: bits & 4 != 0,
            };
            op.set_io(io);
            assert_eq!(op.io(), io);
        }
        use FlagChange as F;
        for f in [F::Clc, F::Stc, F::Cmc, F::Cld, F::Std, F::Cli, F::Sti] {
            op.set_flag_change(f);
            assert_eq!(op.flag_change(), f);
        }
        for b in [false, true] {
            op.set_subtracts(b);
            assert_eq!(op.subtracts(), b);
            op.set_idt(b);
            assert_eq!(op.idt(), b);
            op.set_task_register(b);
            assert_eq!(op.task_register(), b);
            op.set_lsl(b);
            assert_eq!(op.lsl(), b);
            op.set_verw(b);
            assert_eq!(op.verw(), b);
            op.set_rdtscp(b);
            assert_eq!(op.rdtscp(), b);
            op.set_clac(b);
            assert_eq!(op.clac(), b);
        }
        use FsGsBase as B;
        for (b, gs, write) in [
            (B::RdFs, false, false),
            (B::RdGs, true, false),
            (B::WrFs, false, true),
            (B::WrGs, true, true),
        ] {
            op.set_fs_gs_base(b);
            assert_eq!(op.fs_gs_base(), b);
            assert_eq!((b.gs(), b.write()), (gs, write));
        }
        use SimdClass as C;
        for d in [C::Xmm, C::Mmx, C::Gpr, C::Mem] {
            for s in [C::Xmm, C::Mmx, C::Gpr, C::Mem] {
                for aligned in [false, true] {
                    op.set_simd(d, s, aligned);
                    assert_eq!(
                        (op.simd_dst(), op.simd_src(), op.simd_aligned()),
                        (d, s, aligned)
                    );
                }
            }
        }
        op.set_x87_memory(None);
        assert_eq!(op.x87_memory(), None);
        use MemFmt as X;
        for f in [X::F32, X::F64, X::F80, X::I16, X::I32, X::I64, X::Bcd] {
            op.set_x87_memory(Some(f));
            assert_eq!((op.x87_memory(), op.x87_format()), (Some(f), f));
        }
    }

    /// An instruction that uses none of the meanings leaves the byte 0.
    #[test]
    fn other_instructions_leave_it_zero() {
        let mut ins = Instruction::default();
        ins.set_code(iced_x86::Code::Add_rm32_r32);
        assert_eq!(crate::decode::compile(&ins, 64).cc, 0);
    }
}
