//! Operand, memory and stack access for the interpreter.
//!
//! Every access that leaves guest RAM stops the instruction with [`Stop::Mmio`] before
//! any architectural state is changed, so the VMM sees RIP at the faulting instruction.

use crate::alu::mask;
use crate::cpu::{Cpu, CS, DS, ES, FS, GS, SS};
use crate::memmap::MemMap;
use crate::mmu::{Access, PageFault, Tlb, Translated};
use crate::stop::Stop;
use iced_x86::{Instruction, OpKind, Register};

/// The interpreter's view of one vCPU while it runs.
pub struct Ctx<'a> {
    pub cpu: &'a mut Cpu,
    pub mem: &'a MemMap,
    pub tlb: &'a mut Tlb,
    pub config: &'a crate::SimConfig,
    /// String iterations done since the run loop last looked: they count as work
    /// between its cancel and deadline checks.
    pub iterations: u64,
    /// The CPUID answers the VMM registered for this vCPU.
    pub cpuid: &'a [hv_core::CpuidResult],
}

const AL: u32 = Register::AL as u32;
const AX: u32 = Register::AX as u32;
const EAX: u32 = Register::EAX as u32;
const RAX: u32 = Register::RAX as u32;
const ES_REG: u32 = Register::ES as u32;

impl From<PageFault> for Stop {
    fn from(pf: PageFault) -> Self {
        Stop::PageFault(pf)
    }
}

impl Ctx<'_> {
    /// Reads a general-purpose register by its iced name (any width, AH..BH included).
    #[inline]
    pub fn reg(&self, r: Register) -> u64 {
        let n = r as u32;
        let g = &self.cpu.gpr;
        if (RAX..RAX + 16).contains(&n) {
            g[(n - RAX) as usize]
        } else if (EAX..EAX + 16).contains(&n) {
            g[(n - EAX) as usize] & 0xffff_ffff
        } else if (AX..AX + 16).contains(&n) {
            g[(n - AX) as usize] & 0xffff
        } else if (AL..AL + 20).contains(&n) {
            let i = (n - AL) as usize;
            match i {
                0..=3 => g[i] & 0xff,
                4..=7 => (g[i - 4] >> 8) & 0xff,
                _ => g[i - 4] & 0xff,
            }
        } else if (ES_REG..ES_REG + 6).contains(&n) {
            self.cpu.seg[(n - ES_REG) as usize].selector as u64
        } else if r == Register::RIP {
            self.cpu.rip
        } else if r == Register::EIP {
            self.cpu.rip & 0xffff_ffff
        } else {
            0
        }
    }

    /// Writes a general-purpose register; 32-bit writes zero the upper half as hardware does.
    #[inline]
    pub fn set_reg(&mut self, r: Register, v: u64) {
        let n = r as u32;
        let g = &mut self.cpu.gpr;
        if (RAX..RAX + 16).contains(&n) {
            g[(n - RAX) as usize] = v;
        } else if (EAX..EAX + 16).contains(&n) {
            g[(n - EAX) as usize] = v & 0xffff_ffff;
        } else if (AX..AX + 16).contains(&n) {
            let x = &mut g[(n - AX) as usize];
            *x = (*x & !0xffff) | (v & 0xffff);
        } else if (AL..AL + 20).contains(&n) {
            let i = (n - AL) as usize;
            let (idx, shift) = match i {
                0..=3 => (i, 0),
                4..=7 => (i - 4, 8),
                _ => (i - 4, 0),
            };
            let x = &mut g[idx];
            *x = (*x & !(0xff << shift)) | ((v & 0xff) << shift);
        }
    }

    /// Index into `cpu.seg` of a segment register.
    #[inline]
    pub fn seg_index(r: Register) -> usize {
        match r {
            Register::ES => ES,
            Register::CS => CS,
            Register::SS => SS,
            Register::FS => FS,
            Register::GS => GS,
            _ => DS,
        }
    }

    /// The linear address of `seg:offset`.
    #[inline]
    pub fn linear(&self, seg: usize, offset: u64) -> u64 {
        if self.cpu.bitness() == 64 {
            if seg == FS || seg == GS {
                self.cpu.seg[seg].base.wrapping_add(offset)
            } else {
                offset
            }
        } else {
            self.cpu.seg[seg].base.wrapping_add(offset) & 0xffff_ffff
        }
    }

    /// The effective address (offset within the segment) of the memory operand.
    #[inline]
    pub fn effective_address(&self, ins: &Instruction) -> u64 {
        let base = ins.memory_base();
        let index = ins.memory_index();
        let size = if base != Register::None {
            base.size()
        } else if index != Register::None {
            index.size()
        } else {
            match ins.memory_displ_size() {
                0 | 1 => (self.cpu.bitness() / 8) as usize,
                n => n as usize,
            }
        };
        let mut ea = ins.memory_displacement64();
        if base != Register::None && base != Register::RIP && base != Register::EIP {
            ea = ea.wrapping_add(self.reg(base));
        }
        if index != Register::None {
            ea = ea.wrapping_add(
                self.reg(index)
                    .wrapping_mul(ins.memory_index_scale() as u64),
            );
        }
        ea & mask(size)
    }

    /// Translates `lin` for `access`: the host pointer and the bytes of plain RAM from
    /// it in its page, or the stop (MMIO, #PF).
    #[inline]
    fn host(&mut self, lin: u64, access: Access) -> Result<(*mut u8, usize), Stop> {
        match self.tlb.translate(self.cpu, self.mem, lin, access)? {
            Translated::Ram { host, left, .. } => Ok((host, left)),
            Translated::Mmio { gpa, intercepted } => Err(Stop::Mmio {
                gpa,
                gva: lin,
                access,
                intercepted,
            }),
        }
    }

    /// Host pointers for each of the `size` bytes at `lin`, translated before any is
    /// touched (an access that crosses a page or reaches an intercepted range).
    fn bytewise(&mut self, lin: u64, size: usize, access: Access) -> Result<[*mut u8; 8], Stop> {
        let mut ptrs = [std::ptr::null_mut(); 8];
        for (k, p) in ptrs.iter_mut().enumerate().take(size) {
            *p = self.host(lin.wrapping_add(k as u64), access)?.0;
        }
        Ok(ptrs)
    }

    /// Reads `size` bytes (1, 2, 4 or 8) at `lin`, little-endian.
    #[inline]
    pub fn read_linear(&mut self, lin: u64, size: usize, access: Access) -> Result<u64, Stop> {
        assert!(matches!(size, 1 | 2 | 4 | 8), "access size {size}");
        let (p, left) = self.host(lin, access)?;
        if left >= size {
            // SAFETY: `p` starts `left` >= `size` bytes of plain RAM.
            return Ok(unsafe { hv_core::shared::load(p, size) });
        }
        let ptrs = self.bytewise(lin, size, access)?;
        let mut v = 0u64;
        for (k, p) in ptrs.iter().enumerate().take(size) {
            // SAFETY: each pointer addresses one translated byte of RAM.
            v |= unsafe { hv_core::shared::load(*p, 1) } << (8 * k);
        }
        Ok(v)
    }

    /// Writes `size` bytes (1, 2, 4 or 8) at `lin`.
    #[inline]
    pub fn write_linear(&mut self, lin: u64, size: usize, v: u64) -> Result<(), Stop> {
        assert!(matches!(size, 1 | 2 | 4 | 8), "access size {size}");
        let (p, left) = self.host(lin, Access::Write)?;
        if left >= size {
            // SAFETY: `p` starts `left` >= `size` writable bytes of plain RAM.
            unsafe { hv_core::shared::store(p, size, v) };
            return Ok(());
        }
        let ptrs = self.bytewise(lin, size, Access::Write)?;
        for (k, p) in ptrs.iter().enumerate().take(size) {
            // SAFETY: each pointer addresses one translated, writable byte of RAM.
            unsafe { hv_core::shared::store(*p, 1, v >> (8 * k)) };
        }
        Ok(())
    }

    pub fn read_mem(&mut self, seg: usize, offset: u64, size: usize) -> Result<u64, Stop> {
        let lin = self.linear(seg, offset);
        self.read_linear(lin, size, Access::Read)
    }

    pub fn write_mem(&mut self, seg: usize, offset: u64, size: usize, v: u64) -> Result<(), Stop> {
        let lin = self.linear(seg, offset);
        self.write_linear(lin, size, v)
    }

    /// Size in bytes of operand `i`.
    #[inline]
    pub fn op_size(&self, ins: &Instruction, i: u32) -> usize {
        match ins.op_kind(i) {
            OpKind::Register => ins.op_register(i).size(),
            OpKind::Immediate8 | OpKind::Immediate8_2nd => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
            OpKind::Immediate64 | OpKind::Immediate8to64 | OpKind::Immediate32to64 => 8,
            _ => ins.memory_size().size(),
        }
    }

    /// Reads operand `i` (register, immediate or memory), zero-extended.
    #[inline]
    pub fn read_op(&mut self, ins: &Instruction, i: u32, size: usize) -> Result<u64, Stop> {
        match ins.op_kind(i) {
            OpKind::Register => Ok(self.reg(ins.op_register(i))),
            OpKind::Memory => {
                let ea = self.effective_address(ins);
                self.read_mem(Self::seg_index(ins.memory_segment()), ea, size)
            }
            _ => Ok(ins.immediate(i) & mask(size)),
        }
    }

    /// Writes operand `i` (register or memory).
    #[inline]
    pub fn write_op(&mut self, ins: &Instruction, i: u32, size: usize, v: u64) -> Result<(), Stop> {
        match ins.op_kind(i) {
            OpKind::Register => {
                self.set_reg(ins.op_register(i), v);
                Ok(())
            }
            _ => {
                let ea = self.effective_address(ins);
                self.write_mem(Self::seg_index(ins.memory_segment()), ea, size, v)
            }
        }
    }

    /// Mask of the stack pointer: SS.B in legacy modes, all 64 bits in long mode.
    #[inline]
    pub fn stack_mask(&self) -> u64 {
        if self.cpu.bitness() == 64 {
            u64::MAX
        } else if self.cpu.seg[SS].default_big() {
            0xffff_ffff
        } else {
            0xffff
        }
    }

    fn set_rsp(&mut self, v: u64) {
        let m = self.stack_mask();
        let rsp = &mut self.cpu.gpr[4];
        *rsp = (*rsp & !m) | (v & m);
    }

    /// Pushes `size` bytes; memory is written before RSP changes.
    pub fn push(&mut self, v: u64, size: usize) -> Result<(), Stop> {
        let m = self.stack_mask();
        let sp = self.cpu.gpr[4].wrapping_sub(size as u64) & m;
        self.write_mem(SS, sp, size, v)?;
        self.set_rsp(sp);
        Ok(())
    }

    /// Reads the value `size` bytes at the top of the stack without popping it.
    pub fn peek(&mut self, size: usize, skip: u64) -> Result<u64, Stop> {
        let m = self.stack_mask();
        let sp = self.cpu.gpr[4].wrapping_add(skip) & m;
        self.read_mem(SS, sp, size)
    }

    /// Pops `size` bytes.
    pub fn pop(&mut self, size: usize) -> Result<u64, Stop> {
        let v = self.peek(size, 0)?;
        let m = self.stack_mask();
        self.set_rsp(self.cpu.gpr[4].wrapping_add(size as u64) & m);
        Ok(v)
    }

    /// The instruction's operand size for stack operations (push/pop/call/ret).
    pub fn stack_op_size(&self, ins: &Instruction) -> usize {
        (ins.stack_pointer_increment().unsigned_abs() as usize).clamp(2, 8)
    }

    /// Jumps to `target`, truncated to the operand size of the branch.
    pub fn jump(&mut self, target: u64, size: usize) {
        self.cpu.rip = target & mask(size);
    }
}

/// Mask for the address size of a string instruction, from its implicit operand kind.
pub fn string_addr_mask(ins: &Instruction) -> u64 {
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => return 0xffff,
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => {
                return 0xffff_ffff
            }
            OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => return u64::MAX,
            _ => {}
        }
    }
    u64::MAX
}
