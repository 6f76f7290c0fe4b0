//! The sim's side of the state seam: a vCPU's whole state out and in
//! ([`hv_core::VcpuState`]), and the debugger's breakpoints and step.

use crate::apic::{ApicState, APIC_BASE_EN, APIC_BASE_EXTD, APIC_TIMER_VALUES};
use crate::registers;
use crate::vcpu::{SimVcpu, ACTIVITY_HALT_SUSPEND, ACTIVITY_KNOWN, ACTIVITY_STARTUP_SUSPEND};
use hv_core::regs::REGISTERS;
use hv_core::state::STATE_MSRS;
use hv_core::{DebugState, HvError, Result, VcpuBackend, VcpuState};
use mshv_bindings::hv_register_name_HV_REGISTER_INTERNAL_ACTIVITY_STATE as ACTIVITY;
use mshv_bindings::hv_register_name_HV_X64_REGISTER_CR8 as CR8;
use sim_cpu::Cpu;
use std::sync::atomic::Ordering;

/// Names of the processor's internal values.
const FERR: &str = "cpu.ferr";
/// PKRU (SDM vol 3 2.7): MSHV carries it in the XSAVE area (state component 9) and has
/// no `hv_register_name` for it; the sim, without XSAVE, keeps it here.
const PKRU: &str = "cpu.pkru";
/// IA32_PKRS (SDM vol 3 4.6.2): no `hv_register_name` names it either.
const PKRS: &str = "cpu.pkrs";
const PDPTE: [&str; 4] = ["cpu.pdpte0", "cpu.pdpte1", "cpu.pdpte2", "cpu.pdpte3"];
const TSC_OFFSET: &str = "cpu.tscOffset";
/// IA32_MCG_STATUS (SDM vol 3 16.3.1.2): no architectural register carries it.
const MCG_STATUS: &str = "cpu.mcgStatus";

/// x2APIC mode by IA32_APIC_BASE: EN and EXTD set (SDM vol 3 11.12.1).
fn x2apic_mode(apic_base: u64) -> bool {
    apic_base & (APIC_BASE_EN | APIC_BASE_EXTD) == APIC_BASE_EN | APIC_BASE_EXTD
}

/// Breakpoints one vCPU takes: each block of code is compared with all of them.
const MAX_BREAKPOINTS: usize = 4096;

/// The storage of an MSR of [`STATE_MSRS`].
fn state_msr(cpu: &mut Cpu, msr: u32) -> Option<&mut u64> {
    let m = &mut cpu.msr;
    Some(match msr {
        0x1a0 => &mut m.misc_enable,
        0x2ff => &mut m.mtrr_def_type,
        0x250 => &mut m.mtrr_fixed[0],
        0x258 => &mut m.mtrr_fixed[1],
        0x259 => &mut m.mtrr_fixed[2],
        0x268..=0x26f => &mut m.mtrr_fixed[3 + (msr - 0x268) as usize],
        0x200..=0x20f => &mut m.mtrr_var[(msr - 0x200) as usize],
        _ => return None,
    })
}

impl SimVcpu {
    /// The local APIC's state page (`HV_GET_SET_VP_STATE_LAPIC_STATE`'s layout) now.
    pub(crate) fn lapic_page(&self) -> Vec<u8> {
        let x2apic = x2apic_mode(self.processor.cpu.apic_base);
        self.apic.lock().save(self.now(), x2apic).0
    }

    /// Replaces the local APIC's registers with `page`'s, as MSHV's `MSHV_SET_VP_STATE`
    /// of the LAPIC state alone does: what the page cannot carry stays (NMI, INIT, SIPI
    /// and the 8259's INTR pending, IA32_APIC_BASE and the mode it gives, the
    /// TSC-deadline), and the timer keeps its exact deadline unless the page changes its
    /// registers (a changed timer counts from the page's current count).
    pub(crate) fn set_lapic_page(&mut self, page: &[u8]) -> Result<()> {
        hv_core::state::check_lapic(page)?;
        let now = self.now();
        let x2apic = x2apic_mode(self.processor.cpu.apic_base);
        let mut s = self.apic.lock();
        let (old_page, internal) = s.save(now, x2apic);
        let timer_same = [
            crate::apic::LVT_TIMER,
            crate::apic::TIMER_INITIAL,
            crate::apic::TIMER_CURRENT,
            crate::apic::TIMER_DIVIDE,
        ]
        .iter()
        .all(|&o| {
            let o = o as usize;
            page[o..o + 4] == old_page[o..o + 4]
        });
        let find = |n: &str| {
            internal
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| *v)
                .filter(|_| timer_same || !APIC_TIMER_VALUES.contains(&n))
        };
        let mut apic = ApicState::restore(page, find, s.startup_suspend, now, x2apic)?;
        apic.apic_enabled = s.apic_enabled;
        *s = apic;
        self.apic.publish(&s);
        Ok(())
    }

    pub(crate) fn save_state(&mut self) -> Result<VcpuState> {
        let mut regs = Vec::with_capacity(REGISTERS.len());
        for r in REGISTERS {
            let v = match self.outside_register(r.id) {
                Some(v) => v,
                None => registers::get(&self.processor.cpu, r.id)?,
            };
            regs.push((r.id, v));
        }
        let cpu = &mut self.processor.cpu;
        let msrs = STATE_MSRS
            .iter()
            .map(|&m| (m, state_msr(cpu, m).map_or(0, |v| *v)))
            .collect();
        let mut internal = vec![
            (PKRU.to_string(), u64::from(cpu.pkru)),
            (PKRS.to_string(), cpu.msr.pkrs),
            (FERR.to_string(), cpu.ferr as u64),
            (TSC_OFFSET.to_string(), self.tsc_offset as u64),
            (MCG_STATUS.to_string(), cpu.msr.mcg_status),
        ];
        internal.extend(PDPTE.iter().zip(cpu.pdpte).map(|(n, v)| (n.to_string(), v)));
        let now = self.now();
        let x2apic = x2apic_mode(self.processor.cpu.apic_base);
        let (lapic, apic_internal) = self.apic.lock().save(now, x2apic);
        internal.extend(apic_internal);
        Ok(VcpuState {
            registers: regs,
            msrs,
            lapic,
            xsave: Vec::new(),
            internal,
        })
    }

    /// Checks the whole state on a copy first: a state that does not fit changes nothing.
    pub(crate) fn restore_state(&mut self, state: &VcpuState) -> Result<()> {
        let VcpuState {
            registers: regs,
            msrs,
            lapic,
            xsave,
            internal,
        } = state;
        if !xsave.is_empty() {
            return Err(HvError::InvalidArgument(format!(
                "the state has a {}-byte XSAVE image: the sim keeps x87 and SSE state in registers and has no other components",
                xsave.len()
            )));
        }
        let mut cpu = self.processor.cpu.clone();
        let mut activity = 0;
        for &(id, v) in regs {
            if id == ACTIVITY {
                if v[0] & !ACTIVITY_KNOWN != 0 || v[1] != 0 {
                    return Err(HvError::InvalidArgument(format!(
                        "internalActivityState {:#x}: only bits 0 and 1 exist",
                        v[0]
                    )));
                }
                activity = v[0];
                continue;
            }
            if id == CR8 {
                // CR8 is the APIC's TPR[7:4] (SDM vol 3 11.8.6): the LAPIC page below
                // holds it, and wins, as on MSHV, which sets that page after the
                // registers (hv-mshv's restore_state).
                continue;
            }
            registers::set(&mut cpu, id, v)?;
        }
        cpu.halted = activity & ACTIVITY_HALT_SUSPEND != 0;
        for &(msr, v) in msrs {
            let slot = state_msr(&mut cpu, msr).ok_or_else(|| {
                HvError::InvalidArgument(format!("MSR {msr:#x} is not one a vCPU state carries"))
            })?;
            *slot = v;
        }
        let mut tsc_offset = self.tsc_offset;
        let mut apic_values = Vec::new();
        for (name, v) in internal {
            match name.as_str() {
                PKRU => {
                    cpu.pkru = u32::try_from(*v).map_err(|_| {
                        HvError::InvalidArgument(format!("{PKRU} {v:#x}: PKRU has 32 bits"))
                    })?
                }
                // Bits 63:32 are reserved, as WRMSR has them (SDM vol 3 4.6.2).
                PKRS if *v >> 32 != 0 => {
                    return Err(HvError::InvalidArgument(format!(
                        "{PKRS} {v:#x}: bits 63:32 of IA32_PKRS are reserved"
                    )))
                }
                PKRS => cpu.msr.pkrs = *v,
                FERR => cpu.ferr = *v != 0,
                TSC_OFFSET => tsc_offset = *v as i64,
                MCG_STATUS => cpu.msr.mcg_status = *v,
                n if n.starts_with("apic.") => apic_values.push((n, *v)),
                n => match PDPTE.iter().position(|p| *p == n) {
                    Some(i) => cpu.pdpte[i] = *v,
                    None => {
                        return Err(HvError::InvalidArgument(format!(
                            "internal value '{n}' is not one the sim keeps (a state of another backend?)"
                        )))
                    }
                },
            }
        }
        let now = if self.clock.deterministic() {
            cpu.tsc
        } else {
            self.clock.now()
        };
        let find = |n: &str| apic_values.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        // The page's ID and LDR are read as the restored IA32_APIC_BASE's mode has them.
        let x2apic = x2apic_mode(cpu.apic_base);
        let mut apic = ApicState::restore(
            lapic,
            find,
            activity & ACTIVITY_STARTUP_SUSPEND != 0,
            now,
            x2apic,
        )?;
        apic.apic_enabled = cpu.apic_base & APIC_BASE_EN != 0;
        // Nothing was refused: the state is the vCPU's now.
        let pdpte = cpu.pdpte;
        self.processor.cpu = cpu;
        // A restored vCPU resumes: a breakpoint where it stands lets its instruction run.
        let at = self.processor.cpu.seg[sim_cpu::state::CS]
            .base
            .wrapping_add(self.processor.cpu.rip);
        self.processor.resume_at(at);
        self.tsc_offset = tsc_offset;
        {
            let mut s = self.apic.lock();
            *s = apic;
            self.apic.restore_mode(self.processor.cpu.apic_base);
            self.apic.events.store(s.events(), Ordering::Release);
        }
        if self.clock.deterministic() {
            self.clock.advance_to(self.index(), self.processor.cpu.tsc);
        }
        self.flush_pending = true;
        // The flush reloads PAE's PDPTEs from memory; the saved ones are what the
        // processor had loaded (SDM vol 3 4.4.1: they change only with CR3 and the like).
        self.restore_pdptes = Some(pdpte);
        Ok(())
    }

    pub(crate) fn debug(&mut self, debug: &DebugState) -> Result<()> {
        if debug.breakpoints.len() > MAX_BREAKPOINTS {
            return Err(HvError::InvalidArgument(format!(
                "{} breakpoints: a vCPU takes at most {MAX_BREAKPOINTS}",
                debug.breakpoints.len()
            )));
        }
        if debug.watchpoints.len() > hv_core::state::HARDWARE_BREAKPOINTS {
            return Err(HvError::InvalidArgument(format!(
                "{} watchpoints: a vCPU takes at most {} (DR6 names four)",
                debug.watchpoints.len(),
                hv_core::state::HARDWARE_BREAKPOINTS
            )));
        }
        if let Some(w) = debug
            .watchpoints
            .iter()
            .find(|w| w.len == 0 || w.address.checked_add(w.len - 1).is_none())
        {
            return Err(HvError::InvalidArgument(format!(
                "watchpoint at {:#x} of {} bytes: the range must be 1 byte or more and end below 2^64",
                w.address, w.len
            )));
        }
        self.processor.set_debug(sim_cpu::Debug {
            breakpoints: debug.breakpoints.clone(),
            watchpoints: debug.watchpoints.clone(),
            single_step: debug.single_step,
        });
        Ok(())
    }
}
