//! The mshv side of the state seam: a vCPU's whole state through the register
//! hypercalls and the VP state ioctls, and the debugger through DR0-DR7, RFLAGS.TF and
//! an exception intercept. It cannot run here (no `/dev/mshv`); the conformance
//! checklist's `vcpu_state` and `debug_stops` are what a host runs against it.
//!
//! Sources: mshv-ioctls 0.7.1 `VcpuFd::get_lapic`/`set_lapic`/`get_xsave`/`set_xsave`
//! (`MSHV_GET_VP_STATE`/`MSHV_SET_VP_STATE`, types `MSHV_VP_STATE_LAPIC` and
//! `MSHV_VP_STATE_XSAVE`; the LAPIC state is converted to and from the APIC page layout
//! by mshv-bindings' `LapicState`), Cloud Hypervisor's `hypervisor/src/mshv` `state()`
//! and `set_state()` (restore order: registers, then APIC_BASE before the LAPIC page,
//! XCR0 before XSAVE), mshv-bindings' `msr_to_hv_reg_name`; for debugging, Hyperlight's
//! mshv `set_debug`/`add_hw_breakpoint`/`set_single_step`
//! (`src/hyperlight_host/src/hypervisor/virtual_machine/mshv/x86_64.rs`) and OpenHCL's
//! `set_debug_state` (`openhcl/virt_mshv_vtl/src/processor/mod.rs`, which clears DR6).

use crate::errors::{map_error, retry};
use crate::vcpu::MshvVcpu;
use hv_core::regs::REGISTERS;
use hv_core::state::{HARDWARE_BREAKPOINTS, LAPIC_STATE_SIZE, STATE_MSRS};
use hv_core::{DebugState, HvError, RegisterValue, Result, VcpuBackend, VcpuState};
use mshv_bindings::*;
use mshv_ioctls::VmFd;

/// Registers per get/set hypercall batch: CH reads its standard and special registers
/// in batches of this order.
const BATCH: usize = 32;

/// RFLAGS.TF and RFLAGS.RF.
const TF: u64 = 1 << 8;
const RF: u64 = 1 << 16;

/// The `hv_register_name` of each MSR of [`STATE_MSRS`].
fn msr_register(msr: u32) -> Result<u32> {
    msr_to_hv_reg_name(msr)
        .map_err(|e| HvError::InvalidArgument(format!("MSR {msr:#x} has no MSHV register: {e}")))
}

/// The #DB intercept (`HV_INTERCEPT_TYPE_EXCEPTION`, vector 1): installed to debug,
/// installed again with no access to stop (Hyperlight's `set_debug`).
fn debug_intercept(on: bool) -> mshv_install_intercept {
    mshv_install_intercept {
        access_type_mask: if on {
            HV_INTERCEPT_ACCESS_MASK_EXECUTE
        } else {
            HV_INTERCEPT_ACCESS_MASK_NONE
        },
        intercept_type: hv_intercept_type_HV_INTERCEPT_TYPE_EXCEPTION,
        intercept_parameter: hv_intercept_parameters {
            exception_vector: 1,
        },
    }
}

/// DR7 with local enables L0..L(n-1), each an execute breakpoint of length 1 (R/W and
/// LEN 00: SDM vol 3 18.2.4).
pub fn dr7_for(breakpoints: usize) -> u64 {
    (0..breakpoints.min(HARDWARE_BREAKPOINTS)).fold(0, |d, i| d | 1 << (2 * i))
}

impl MshvVcpu {
    fn get_many(&mut self, ids: &[u32]) -> Result<Vec<RegisterValue>> {
        let mut out = vec![[0, 0]; ids.len()];
        for (i, chunk) in ids.chunks(BATCH).enumerate() {
            let at = i * BATCH;
            self.get_registers(chunk, &mut out[at..at + chunk.len()])?;
        }
        Ok(out)
    }

    fn set_many(&mut self, regs: &[(u32, RegisterValue)]) -> Result<()> {
        for chunk in regs.chunks(BATCH) {
            let ids: Vec<u32> = chunk.iter().map(|(id, _)| *id).collect();
            let values: Vec<RegisterValue> = chunk.iter().map(|(_, v)| *v).collect();
            self.set_registers(&ids, &values)?;
        }
        Ok(())
    }

    pub(crate) fn save_state(&mut self) -> Result<VcpuState> {
        let ids: Vec<u32> = REGISTERS.iter().map(|r| r.id).collect();
        let values = self.get_many(&ids)?;
        let msr_ids = STATE_MSRS
            .iter()
            .map(|&m| msr_register(m))
            .collect::<Result<Vec<u32>>>()?;
        let msr_values = self.get_many(&msr_ids)?;
        let fd = self.fd();
        let lapic = retry(|| fd.get_lapic()).map_err(|e| map_error("get LAPIC state", e))?;
        let xsave = retry(|| fd.get_xsave()).map_err(|e| map_error("get XSAVE state", e))?;
        Ok(VcpuState {
            registers: ids.into_iter().zip(values).collect(),
            msrs: STATE_MSRS
                .iter()
                .copied()
                .zip(msr_values.iter().map(|v| v[0]))
                .collect(),
            lapic: lapic.regs.iter().map(|&b| b as u8).collect(),
            xsave: xsave.buffer.to_vec(),
            internal: Vec::new(),
        })
    }

    pub(crate) fn restore_state(&mut self, state: &VcpuState) -> Result<()> {
        let VcpuState {
            registers,
            msrs,
            lapic,
            xsave,
            internal,
        } = state;
        if let Some((name, _)) = internal.first() {
            return Err(HvError::InvalidArgument(format!(
                "internal value '{name}' is one the sim keeps: a sim state cannot be restored on MSHV"
            )));
        }
        if lapic.len() != LAPIC_STATE_SIZE {
            return Err(HvError::InvalidArgument(format!(
                "the local APIC state is {} bytes; it must be {LAPIC_STATE_SIZE}",
                lapic.len()
            )));
        }
        let mut image = XSave::default();
        if xsave.len() != image.buffer.len() {
            return Err(HvError::InvalidArgument(format!(
                "the XSAVE image is {} bytes; MSHV's is {}",
                xsave.len(),
                image.buffer.len()
            )));
        }
        image.buffer.copy_from_slice(xsave);
        let mut page = LapicState::default();
        for (d, s) in page.regs.iter_mut().zip(lapic) {
            *d = *s as _;
        }
        // Checked before anything is written: an unknown register or MSR changes nothing.
        hv_core::backend::check_batch(
            &registers.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            registers.len(),
        )?;
        let msr_regs = msrs
            .iter()
            .map(|&(m, v)| Ok((msr_register(m)?, [v, 0])))
            .collect::<Result<Vec<_>>>()?;
        // MSRs, then the registers in table order (APIC_BASE and XCR0 among them), then
        // the LAPIC page and XSAVE, which depend on those (CH's order).
        self.set_many(&msr_regs)?;
        self.set_many(registers)?;
        let fd = self.fd();
        retry(|| fd.set_lapic(&page)).map_err(|e| map_error("set LAPIC state", e))?;
        retry(|| fd.set_xsave(&image)).map_err(|e| map_error("set XSAVE state", e))?;
        // A restored vCPU resumes: a breakpoint where it stands lets its instruction run
        // (RF at the next run, as after a stop there; the sim does the same).
        self.set_at_breakpoint();
        Ok(())
    }

    pub(crate) fn debug(&mut self, vm: &VmFd, debug: &DebugState) -> Result<()> {
        let n = debug.breakpoints.len();
        if n > HARDWARE_BREAKPOINTS {
            return Err(HvError::InvalidArgument(format!(
                "{n} breakpoints: MSHV's are DR0-DR3, so at most {HARDWARE_BREAKPOINTS}"
            )));
        }
        let on = n > 0 || debug.single_step;
        retry(|| vm.install_intercept(debug_intercept(on)))
            .map_err(|e| map_error("install the #DB intercept", e))?;
        let mut regs: Vec<(u32, RegisterValue)> = (0..HARDWARE_BREAKPOINTS)
            .map(|i| {
                (
                    hv_register_name_HV_X64_REGISTER_DR0 + i as u32,
                    [debug.breakpoints.get(i).copied().unwrap_or(0), 0],
                )
            })
            .collect();
        regs.push((hv_register_name_HV_X64_REGISTER_DR6, [0, 0]));
        regs.push((hv_register_name_HV_X64_REGISTER_DR7, [dr7_for(n), 0]));
        let rflags = self.get_many(&[hv_register_name_HV_X64_REGISTER_RFLAGS])?[0][0];
        let rflags = if debug.single_step {
            rflags | TF
        } else {
            rflags & !TF
        };
        regs.push((hv_register_name_HV_X64_REGISTER_RFLAGS, [rflags, 0]));
        self.set_many(&regs)?;
        self.debugging = on;
        Ok(())
    }

    /// Before a run that resumes from a breakpoint stop: RFLAGS.RF, so the instruction
    /// runs rather than stopping again (SDM vol 3 18.3.1.1).
    pub(crate) fn resume_past_breakpoint(&mut self) -> Result<()> {
        let rflags = self.get_many(&[hv_register_name_HV_X64_REGISTER_RFLAGS])?[0][0];
        self.set_many(&[(hv_register_name_HV_X64_REGISTER_RFLAGS, [rflags | RF, 0])])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_msr_has_an_mshv_register() {
        for &m in STATE_MSRS {
            assert!(msr_register(m).is_ok(), "MSR {m:#x}");
        }
    }

    #[test]
    fn dr7_enables_one_local_execute_breakpoint_per_slot() {
        assert_eq!(dr7_for(0), 0);
        assert_eq!(dr7_for(1), 0b1);
        assert_eq!(dr7_for(4), 0b0101_0101);
        assert_eq!(dr7_for(9), 0b0101_0101);
    }
}
