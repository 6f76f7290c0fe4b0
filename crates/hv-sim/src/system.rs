//! System instructions: MOV to/from segment, control and debug registers, descriptor
//! tables, far transfers, CPUID, MSRs and the time stamp counter.

use crate::access::Ctx;
use crate::alu::mask;
use crate::cpu::{Segment, CR0_PE, CR0_PG, CS, EFER_LMA, SS};
use crate::stop::Stop;
use hv_core::UnknownMsr;
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

const NP: u8 = 11;

pub const MSR_TSC: u32 = 0x10;
pub const MSR_APIC_BASE: u32 = 0x1b;
pub const MSR_SYSENTER_CS: u32 = 0x174;
pub const MSR_SYSENTER_ESP: u32 = 0x175;
pub const MSR_SYSENTER_EIP: u32 = 0x176;
pub const MSR_PAT: u32 = 0x277;
pub const MSR_EFER: u32 = 0xc000_0080;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SFMASK: u32 = 0xc000_0084;
pub const MSR_FS_BASE: u32 = 0xc000_0100;
pub const MSR_GS_BASE: u32 = 0xc000_0101;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MSR_TSC_AUX: u32 = 0xc000_0103;

/// MSRs the sim models without a VMM: plain storage beyond the ones with side effects.
const STORED_MSRS: &[u32] = &[
    MSR_SYSENTER_CS,
    MSR_SYSENTER_ESP,
    MSR_SYSENTER_EIP,
    MSR_PAT,
    MSR_STAR,
    MSR_LSTAR,
    MSR_CSTAR,
    MSR_SFMASK,
    MSR_KERNEL_GS_BASE,
    MSR_TSC_AUX,
];

/// Decodes a segment descriptor into base, limit and `hv_x64_segment_register` attributes.
pub fn decode_descriptor(d: u64) -> (u64, u32, u16) {
    let base = ((d >> 16) & 0xff_ffff) | ((d >> 56) & 0xff) << 24;
    let raw_limit = (d & 0xffff) | ((d >> 48) & 0xf) << 16;
    let attributes = (((d >> 40) & 0xff) | ((d >> 52) & 0xf) << 12) as u16;
    let limit = if attributes & (1 << 15) != 0 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    (base, limit as u32, attributes)
}

impl Ctx<'_> {
    pub(crate) fn mov(&mut self, ins: &Instruction, next: u64) -> Result<(), Stop> {
        let k0 = ins.op_kind(0);
        let k1 = ins.op_kind(1);
        let r0 = if k0 == OpKind::Register {
            ins.op_register(0)
        } else {
            Register::None
        };
        let r1 = if k1 == OpKind::Register {
            ins.op_register(1)
        } else {
            Register::None
        };
        if r0.is_cr() {
            let v = self.reg(r1);
            self.write_cr(r0, v)?;
        } else if r1.is_cr() {
            let v = self.read_cr(r1)?;
            self.set_reg(r0, v);
        } else if r0.is_dr() {
            self.cpu.dr[(r0 as usize - Register::DR0 as usize) & 7] = self.reg(r1);
        } else if r1.is_dr() {
            let v = self.cpu.dr[(r1 as usize - Register::DR0 as usize) & 7];
            self.set_reg(r0, v);
        } else if r0.is_segment_register() {
            if r0 == Register::CS {
                return Err(Stop::ud());
            }
            let v = self.read_op(ins, 1, 2)?;
            self.load_segment(r0, v as u16)?;
        } else if r1.is_segment_register() {
            let sel = self.reg(r1);
            let s = if k0 == OpKind::Memory { 2 } else { r0.size() };
            self.write_op(ins, 0, s, sel)?;
        } else {
            let s = self.op_size(ins, 0);
            let v = self.read_op(ins, 1, s)?;
            self.write_op(ins, 0, s, v)?;
        }
        self.cpu.rip = next;
        Ok(())
    }

    fn read_cr(&self, r: Register) -> Result<u64, Stop> {
        Ok(match r {
            Register::CR0 => self.cpu.cr0,
            Register::CR2 => self.cpu.cr2,
            Register::CR3 => self.cpu.cr3,
            Register::CR4 => self.cpu.cr4,
            Register::CR8 => self.cpu.cr8,
            _ => return Err(Stop::ud()),
        })
    }

    fn write_cr(&mut self, r: Register, v: u64) -> Result<(), Stop> {
        match r {
            Register::CR0 => {
                if v & CR0_PG != 0 && v & CR0_PE == 0 {
                    return Err(Stop::gp(0));
                }
                self.cpu.cr0 = v | 0x10;
                self.cpu.update_lma();
            }
            Register::CR2 => self.cpu.cr2 = v,
            Register::CR3 => self.cpu.cr3 = v,
            Register::CR4 => {
                self.cpu.cr4 = v;
                self.cpu.update_lma();
            }
            Register::CR8 => self.cpu.cr8 = v & 0xf,
            _ => return Err(Stop::ud()),
        }
        self.tlb.flush();
        Ok(())
    }

    /// Reads the 8-byte descriptor for `selector` from the GDT or LDT.
    fn descriptor(&mut self, selector: u16) -> Result<(u64, u64), Stop> {
        let (base, limit) = if selector & 4 != 0 {
            (self.cpu.ldtr.base, self.cpu.ldtr.limit as u64)
        } else {
            (self.cpu.gdtr.base, self.cpu.gdtr.limit as u64)
        };
        let index = (selector & !7) as u64;
        if index + 7 > limit {
            return Err(Stop::gp((selector & 0xfffc) as u32));
        }
        let at = base.wrapping_add(index);
        Ok((self.read_linear(at, 8, crate::mmu::Access::Read)?, at))
    }

    /// Loads a segment register as MOV/POP/far transfers do, from the GDT in protected mode.
    pub(crate) fn load_segment(&mut self, r: Register, selector: u16) -> Result<(), Stop> {
        let i = Self::seg_index(r);
        if self.cpu.cr0 & CR0_PE == 0 {
            let s = &mut self.cpu.seg[i];
            s.selector = selector;
            s.base = (selector as u64) << 4;
            return Ok(());
        }
        if selector & !3 == 0 {
            if i == CS || (i == SS && self.cpu.bitness() != 64) {
                return Err(Stop::gp(0));
            }
            self.cpu.seg[i] = Segment {
                selector,
                ..Segment::default()
            };
            return Ok(());
        }
        let (d, at) = self.descriptor(selector)?;
        let (base, limit, attributes) = decode_descriptor(d);
        if attributes & 0x80 == 0 {
            return Err(Stop::Exception {
                vector: NP,
                error_code: Some((selector & 0xfffc) as u32),
            });
        }
        if attributes & 0x10 == 0 {
            // A system descriptor cannot be loaded into a segment register.
            return Err(Stop::gp((selector & 0xfffc) as u32));
        }
        if d & (1 << 40) == 0 {
            // Set the accessed bit, as the processor does.
            self.write_linear(at.wrapping_add(5), 1, ((d >> 40) as u8 | 1) as u64)?;
        }
        self.cpu.seg[i] = Segment {
            base,
            limit,
            selector,
            attributes: attributes | 1,
        };
        Ok(())
    }

    /// Loads TR or LDTR from a (16-byte in long mode) system descriptor.
    fn load_system_segment(&mut self, tr: bool, selector: u16) -> Result<(), Stop> {
        let (d, at) = self.descriptor(selector)?;
        let (mut base, limit, attributes) = decode_descriptor(d);
        if self.cpu.long_mode_active() {
            let hi = self.read_linear(at.wrapping_add(8), 4, crate::mmu::Access::Read)?;
            base |= hi << 32;
        }
        let seg = Segment {
            base,
            limit,
            selector,
            attributes,
        };
        if tr {
            self.cpu.tr = seg;
        } else {
            self.cpu.ldtr = seg;
        }
        Ok(())
    }

    pub(crate) fn far_jump(&mut self, selector: u16, offset: u64) -> Result<(), Stop> {
        if self.cpu.cr0 & CR0_PE == 0 {
            self.cpu.seg[CS].selector = selector;
            self.cpu.seg[CS].base = (selector as u64) << 4;
        } else {
            self.load_segment(Register::CS, selector)?;
        }
        let bits = self.cpu.bitness();
        self.cpu.rip = offset & mask((bits / 8) as usize);
        Ok(())
    }

    pub(crate) fn far_call(
        &mut self,
        selector: u16,
        offset: u64,
        size: usize,
        next: u64,
    ) -> Result<(), Stop> {
        let saved = (self.cpu.gpr[4], self.cpu.seg[CS]);
        let cs = self.cpu.seg[CS].selector as u64;
        self.push(cs, size)?;
        self.push(next, size)?;
        if let Err(e) = self.far_jump(selector, offset) {
            (self.cpu.gpr[4], self.cpu.seg[CS]) = saved;
            return Err(e);
        }
        Ok(())
    }

    /// The remaining instructions: descriptor tables, CPUID, MSRs, RDTSC, far returns.
    pub(crate) fn system(&mut self, ins: &Instruction, m: Mnemonic, next: u64) -> Result<(), Stop> {
        use Mnemonic as M;
        match m {
            M::Lgdt | M::Lidt => {
                let ea = self.effective_address(ins);
                let seg = Self::seg_index(ins.memory_segment());
                let limit = self.read_mem(seg, ea, 2)? as u16;
                let (size, base_mask) = match ins.code() {
                    Code::Lgdt_m1664 | Code::Lidt_m1664 => (8, u64::MAX),
                    Code::Lgdt_m1632_16 | Code::Lidt_m1632_16 => (4, 0xff_ffff),
                    _ => (4, 0xffff_ffff),
                };
                let base = self.read_mem(seg, ea.wrapping_add(2), size)? & base_mask;
                let t = crate::cpu::Table { base, limit };
                if m == M::Lgdt {
                    self.cpu.gdtr = t;
                } else {
                    self.cpu.idtr = t;
                }
            }
            M::Sgdt | M::Sidt => {
                let t = if m == M::Sgdt {
                    self.cpu.gdtr
                } else {
                    self.cpu.idtr
                };
                let ea = self.effective_address(ins);
                let seg = Self::seg_index(ins.memory_segment());
                let size = if self.cpu.bitness() == 64 { 8 } else { 4 };
                self.write_mem(seg, ea.wrapping_add(2), size, t.base)?;
                self.write_mem(seg, ea, 2, t.limit as u64)?;
            }
            M::Ltr | M::Lldt => {
                let sel = self.read_op(ins, 0, 2)? as u16;
                self.load_system_segment(m == M::Ltr, sel)?;
            }
            M::Invlpg => self.tlb.flush(),
            M::Cpuid => {
                let (leaf, subleaf) = (self.cpu.gpr[0] as u32, self.cpu.gpr[1] as u32);
                let r = hv_core::cpuid::apply(
                    self.cpuid,
                    leaf,
                    subleaf,
                    crate::cpuid::default_result(leaf, subleaf),
                );
                self.cpu.gpr[0] = r[0] as u64;
                self.cpu.gpr[3] = r[1] as u64;
                self.cpu.gpr[1] = r[2] as u64;
                self.cpu.gpr[2] = r[3] as u64;
            }
            M::Rdmsr => {
                let msr = self.cpu.gpr[1] as u32;
                if self.config.intercept_msrs.contains(&msr) {
                    return Err(Stop::Msr { msr, write: false });
                }
                let v = match (self.read_msr(msr), self.config.unknown_msr) {
                    (Some(v), _) => v,
                    (None, UnknownMsr::Ignore) => 0,
                    (None, UnknownMsr::Exit) => return Err(Stop::Msr { msr, write: false }),
                    (None, UnknownMsr::Fault) => return Err(Stop::gp(0)),
                };
                self.cpu.gpr[0] = v & 0xffff_ffff;
                self.cpu.gpr[2] = v >> 32;
            }
            M::Wrmsr => {
                let msr = self.cpu.gpr[1] as u32;
                if self.config.intercept_msrs.contains(&msr) {
                    return Err(Stop::Msr { msr, write: true });
                }
                let v = (self.cpu.gpr[2] << 32) | (self.cpu.gpr[0] & 0xffff_ffff);
                if !self.write_msr(msr, v) {
                    match self.config.unknown_msr {
                        UnknownMsr::Ignore => {}
                        UnknownMsr::Exit => return Err(Stop::Msr { msr, write: true }),
                        UnknownMsr::Fault => return Err(Stop::gp(0)),
                    }
                }
            }
            M::Rdtsc => {
                let t = self.cpu.tsc;
                self.cpu.gpr[0] = t & 0xffff_ffff;
                self.cpu.gpr[2] = t >> 32;
            }
            M::Retf => {
                let s = match ins.code() {
                    Code::Retfw | Code::Retfw_imm16 => 2,
                    Code::Retfq | Code::Retfq_imm16 => 8,
                    _ => 4,
                };
                let saved = self.cpu.gpr[4];
                let off = self.pop(s)?;
                let sel = self.pop(s)? as u16;
                let extra = if ins.op_count() > 0 {
                    ins.immediate16() as u64
                } else {
                    0
                };
                if let Err(e) = self.far_jump(sel, off) {
                    self.cpu.gpr[4] = saved;
                    return Err(e);
                }
                let sm = self.stack_mask();
                self.cpu.gpr[4] =
                    (self.cpu.gpr[4] & !sm) | (self.cpu.gpr[4].wrapping_add(extra) & sm);
                return Ok(());
            }
            M::Iret | M::Iretd | M::Iretq => return self.iret(ins),
            M::Smsw => {
                let s = self.op_size(ins, 0);
                self.write_op(ins, 0, s, self.cpu.cr0 & mask(s))?;
            }
            M::Clts => self.cpu.cr0 &= !8,
            _ => return Err(Stop::Unsupported),
        }
        self.cpu.rip = next;
        Ok(())
    }

    /// IRET to the same privilege level (the sim runs its guests at CPL 0).
    fn iret(&mut self, ins: &Instruction) -> Result<(), Stop> {
        let s = match ins.mnemonic() {
            Mnemonic::Iret => 2,
            Mnemonic::Iretd => 4,
            _ => 8,
        };
        let saved = (
            self.cpu.gpr[4],
            self.cpu.seg[CS],
            self.cpu.seg[SS],
            self.cpu.rflags,
        );
        let result = (|| {
            let ip = self.pop(s)?;
            let cs = self.pop(s)? as u16;
            let flags = self.pop(s)?;
            let long = self.cpu.bitness() == 64;
            let (sp, ss) = if long {
                (Some(self.pop(s)?), Some(self.pop(s)? as u16))
            } else {
                (None, None)
            };
            self.far_jump(cs, ip)?;
            let keep = if s == 2 { !0xffffu64 } else { !0x0025_7fd5 };
            self.cpu.rflags = (self.cpu.rflags & keep) | (flags & 0x0025_7fd5 & mask(s)) | 2;
            if let (Some(sp), Some(ss)) = (sp, ss) {
                self.load_segment(Register::SS, ss)?;
                self.cpu.gpr[4] = sp;
            }
            Ok(())
        })();
        if result.is_err() {
            (
                self.cpu.gpr[4],
                self.cpu.seg[CS],
                self.cpu.seg[SS],
                self.cpu.rflags,
            ) = saved;
        }
        result
    }

    fn read_msr(&self, msr: u32) -> Option<u64> {
        Some(match msr {
            MSR_TSC => self.cpu.tsc,
            MSR_APIC_BASE => self.cpu.apic_base,
            MSR_EFER => self.cpu.efer,
            MSR_FS_BASE => self.cpu.seg[crate::cpu::FS].base,
            MSR_GS_BASE => self.cpu.seg[crate::cpu::GS].base,
            _ if STORED_MSRS.contains(&msr) => {
                self.cpu
                    .msrs
                    .get(&msr)
                    .copied()
                    .unwrap_or(if msr == MSR_PAT {
                        0x0007_0406_0007_0406
                    } else {
                        0
                    })
            }
            _ => return None,
        })
    }

    fn write_msr(&mut self, msr: u32, v: u64) -> bool {
        match msr {
            MSR_TSC => self.cpu.tsc = v,
            MSR_APIC_BASE => self.cpu.apic_base = v,
            MSR_EFER => {
                // LMA is read-only: the processor derives it from CR0.PG and EFER.LME.
                self.cpu.efer = (v & !EFER_LMA) | (self.cpu.efer & EFER_LMA);
                self.cpu.update_lma();
                self.tlb.flush();
            }
            MSR_FS_BASE => self.cpu.seg[crate::cpu::FS].base = v,
            MSR_GS_BASE => self.cpu.seg[crate::cpu::GS].base = v,
            _ if STORED_MSRS.contains(&msr) => {
                self.cpu.msrs.insert(msr, v);
            }
            _ => return false,
        }
        true
    }
}
