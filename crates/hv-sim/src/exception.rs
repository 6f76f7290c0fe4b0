//! Delivery of guest exceptions through the IVT (real mode) or the IDT (protected and
//! long mode), escalating to a double and then a triple fault as the processor does.

use crate::access::Ctx;
use crate::cpu::{CR0_PE, CS};
use crate::mmu::Access;
use crate::stop::Stop;

const DF: u8 = 8;

/// The outcome of raising an exception.
pub enum Delivery {
    /// The handler's first instruction is at CS:RIP.
    Delivered,
    /// Delivery failed twice: the processor shuts down (an unrecoverable exception).
    TripleFault,
}

use hv_core::event::pushes_error_code as has_error_code;

impl Ctx<'_> {
    /// Raises `vector` with RIP at the faulting instruction.
    pub fn raise(&mut self, vector: u8, error_code: Option<u32>) -> Delivery {
        let saved = self.cpu.clone();
        match self.deliver(vector, error_code) {
            Ok(()) => Delivery::Delivered,
            Err(_) if vector == DF => {
                *self.cpu = saved;
                Delivery::TripleFault
            }
            Err(_) => {
                *self.cpu = saved.clone();
                match self.deliver(DF, Some(0)) {
                    Ok(()) => Delivery::Delivered,
                    Err(_) => {
                        *self.cpu = saved;
                        Delivery::TripleFault
                    }
                }
            }
        }
    }

    fn deliver(&mut self, vector: u8, error_code: Option<u32>) -> Result<(), Stop> {
        let error_code = if has_error_code(vector) {
            error_code.or(Some(0))
        } else {
            None
        };
        let v = vector as u64;
        let flags = self.cpu.rflags;
        let cs = self.cpu.seg[CS].selector as u64;
        let rip = self.cpu.rip;
        if self.cpu.cr0 & CR0_PE == 0 {
            if v * 4 + 3 > self.cpu.idtr.limit as u64 {
                return Err(Stop::gp(0));
            }
            let entry =
                self.read_linear(self.cpu.idtr.base.wrapping_add(v * 4), 4, Access::Read)?;
            self.push(flags, 2)?;
            self.push(cs, 2)?;
            self.push(rip, 2)?;
            self.cpu.rflags &= !(crate::alu::IF | crate::alu::TF | (1 << 18));
            return self.far_jump((entry >> 16) as u16, entry & 0xffff);
        }
        let long = self.cpu.long_mode_active();
        let size = if long { 16 } else { 8 };
        if v * size + size - 1 > self.cpu.idtr.limit as u64 {
            return Err(Stop::gp((v * 8 + 2) as u32));
        }
        let at = self.cpu.idtr.base.wrapping_add(v * size);
        let lo = self.read_linear(at, 8, Access::Read)?;
        let hi = if long {
            self.read_linear(at.wrapping_add(8), 4, Access::Read)?
        } else {
            0
        };
        if lo & (1 << 47) == 0 {
            return Err(Stop::Exception {
                vector: 11,
                error_code: Some((v * 8 + 2) as u32),
            });
        }
        let gate_type = (lo >> 40) & 0xf;
        let selector = (lo >> 16) as u16;
        let offset = (lo & 0xffff) | ((lo >> 48) & 0xffff) << 16 | hi << 32;
        if long {
            // 64-bit gates always push SS:RSP and align the stack.
            let ss = self.cpu.seg[crate::cpu::SS].selector as u64;
            let rsp = self.cpu.gpr[4];
            self.cpu.gpr[4] = rsp & !0xf;
            self.push(ss, 8)?;
            self.push(rsp, 8)?;
            self.push(flags, 8)?;
            self.push(cs, 8)?;
            self.push(rip, 8)?;
            if let Some(e) = error_code {
                self.push(e as u64, 8)?;
            }
        } else {
            let s = if gate_type & 8 != 0 { 4 } else { 2 };
            self.push(flags, s)?;
            self.push(cs, s)?;
            self.push(rip, s)?;
            if let Some(e) = error_code {
                self.push(e as u64, s)?;
            }
        }
        if gate_type & 1 == 0 {
            // Interrupt gate: clear IF.
            self.cpu.rflags &= !crate::alu::IF;
        }
        self.cpu.rflags &= !(crate::alu::TF | (1 << 14) | (1 << 16));
        self.far_jump(selector, offset)
    }
}
