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
use crate::kernel::Vp;
use crate::vcpu::MshvVcpu;
use hv_core::regs::REGISTERS;
use hv_core::state::WatchKind;
use hv_core::state::{HARDWARE_BREAKPOINTS, STATE_MSRS};
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

/// The debug registers for `debug`: DR0-DR3 (the watchpoints first, then the
/// breakpoints, as `hv_core::state::dr6_for_slot` numbers them) and DR7 with a local
/// enable for each (SDM vol 3 18.2.4: R/W 00 execute, 01 write, 11 read or write; LEN
/// 00/01/11/10 for 1/2/4/8 bytes, the address aligned to it).
pub fn debug_registers(debug: &DebugState) -> Result<([u64; 4], u64)> {
    let n = debug.watchpoints.len() + debug.breakpoints.len();
    if n > HARDWARE_BREAKPOINTS {
        return Err(HvError::InvalidArgument(format!(
            "{n} breakpoints and watchpoints: MSHV's are DR0-DR3, so at most {HARDWARE_BREAKPOINTS}"
        )));
    }
    let mut dr = [0u64; 4];
    let mut dr7 = 0u64;
    for (i, w) in debug.watchpoints.iter().enumerate() {
        let rw = match w.kind {
            WatchKind::Write => 0b01,
            WatchKind::Access => 0b11,
            WatchKind::Read => {
                return Err(HvError::InvalidArgument(format!(
                "a read watchpoint at {:#x}: x86 debug registers watch writes, or reads and writes",
                w.address
            )))
            }
        };
        let len = match w.len {
            1 => 0b00,
            2 => 0b01,
            4 => 0b11,
            8 => 0b10,
            _ => 4,
        };
        if len == 4 || !w.address.is_multiple_of(w.len) {
            return Err(HvError::InvalidArgument(format!(
                "watchpoint at {:#x} of {} bytes: debug registers watch 1, 2, 4 or 8 bytes at an address aligned to that",
                w.address, w.len
            )));
        }
        dr[i] = w.address;
        dr7 |= 1 << (2 * i) | rw << (16 + 4 * i) | len << (18 + 4 * i);
    }
    for (j, b) in debug.breakpoints.iter().enumerate() {
        let i = debug.watchpoints.len() + j;
        dr[i] = *b;
        dr7 |= 1 << (2 * i);
    }
    Ok((dr, dr7))
}

/// The LAPIC state page of `vp` in the APIC's MMIO layout: `MSHV_GET_VP_STATE` with
/// `MSHV_VP_STATE_LAPIC`, through the kernel seam.
pub fn lapic_page<V: Vp>(vp: &V) -> Result<Vec<u8>> {
    let lapic = retry(|| vp.get_lapic()).map_err(|e| map_error("get LAPIC state", e))?;
    Ok(lapic.regs.iter().map(|&b| b as u8).collect())
}

/// Replaces the LAPIC state page of `vp` (`MSHV_SET_VP_STATE`), after checking its size.
pub fn set_lapic_page<V: Vp>(vp: &V, lapic: &[u8]) -> Result<()> {
    hv_core::state::check_lapic(lapic)?;
    let page = lapic_state(lapic);
    retry(|| vp.set_lapic(&page)).map_err(|e| map_error("set LAPIC state", e))
}

/// mshv-bindings' `LapicState` holding `lapic` (checked to be its size).
fn lapic_state(lapic: &[u8]) -> LapicState {
    let mut page = LapicState::default();
    for (d, s) in page.regs.iter_mut().zip(lapic) {
        *d = *s as _;
    }
    page
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
        let lapic = lapic_page(fd)?;
        let xsave = retry(|| fd.get_xsave()).map_err(|e| map_error("get XSAVE state", e))?;
        Ok(VcpuState {
            registers: ids.into_iter().zip(values).collect(),
            msrs: STATE_MSRS
                .iter()
                .copied()
                .zip(msr_values.iter().map(|v| v[0]))
                .collect(),
            lapic,
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
        hv_core::state::check_lapic(lapic)?;
        let mut image = XSave::default();
        if xsave.len() != image.buffer.len() {
            return Err(HvError::InvalidArgument(format!(
                "the XSAVE image is {} bytes; MSHV's is {}",
                xsave.len(),
                image.buffer.len()
            )));
        }
        image.buffer.copy_from_slice(xsave);
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
        set_lapic_page(fd, lapic)?;
        retry(|| fd.set_xsave(&image)).map_err(|e| map_error("set XSAVE state", e))?;
        // A restored vCPU resumes: a breakpoint where it stands lets its instruction run
        // (RF at the next run, as after a stop there; the sim does the same).
        self.set_at_breakpoint();
        Ok(())
    }

    pub(crate) fn debug(&mut self, vm: &VmFd, debug: &DebugState) -> Result<()> {
        let (dr, dr7) = debug_registers(debug)?;
        let on = dr7 != 0 || debug.single_step;
        retry(|| vm.install_intercept(debug_intercept(on)))
            .map_err(|e| map_error("install the #DB intercept", e))?;
        let mut regs: Vec<(u32, RegisterValue)> = dr
            .iter()
            .enumerate()
            .map(|(i, a)| (hv_register_name_HV_X64_REGISTER_DR0 + i as u32, [*a, 0]))
            .collect();
        regs.push((hv_register_name_HV_X64_REGISTER_DR6, [0, 0]));
        regs.push((hv_register_name_HV_X64_REGISTER_DR7, [dr7, 0]));
        let rflags = self.get_many(&[hv_register_name_HV_X64_REGISTER_RFLAGS])?[0][0];
        let rflags = if debug.single_step {
            rflags | TF
        } else {
            rflags & !TF
        };
        regs.push((hv_register_name_HV_X64_REGISTER_RFLAGS, [rflags, 0]));
        self.set_many(&regs)?;
        self.debugging = on;
        self.watch_slots = debug.watchpoints.len();
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
    use crate::kernel::fake::{errno, Kernel, Op};
    use hv_core::lapic::{register, set_lint, LapicAccess, LVT_LINT0, LVT_LINT1};

    /// A VP of the scripted kernel, read and written as [`MshvVcpu`] does it.
    struct FakeVp<'a>(&'a Kernel);

    impl LapicAccess for FakeVp<'_> {
        fn lapic(&mut self) -> Result<Vec<u8>> {
            lapic_page(self.0)
        }
        fn set_lapic(&mut self, lapic: &[u8]) -> Result<()> {
            set_lapic_page(self.0, lapic)
        }
    }

    /// A VP whose LINT0 and LINT1 are masked, as the SDM's reset state has them (vol 3
    /// 11.4.7.1; MSHV documents no reset values of its own).
    fn masked_kernel() -> Kernel {
        let k = Kernel::default();
        let mut page = LapicState::default();
        for offset in [LVT_LINT0, LVT_LINT1] {
            page.regs[offset + 2] = 1; // bit 16, the mask
        }
        k.set_lapic_page(page);
        k
    }

    fn lvt(k: &Kernel, offset: usize) -> u32 {
        let page: Vec<u8> = k.lapic().regs.iter().map(|&b| b as u8).collect();
        register(&page, offset).unwrap()
    }

    /// Cloud Hypervisor `arch/src/x86_64/interrupts.rs` `set_lint` on MSHV (its
    /// `hypervisor/src/mshv/mod.rs` `get_lapic`/`set_lapic` are mshv-ioctls'): one
    /// `MSHV_GET_VP_STATE`, then one `MSHV_SET_VP_STATE` of the page with LVT0's
    /// delivery mode ExtINT and LVT1's NMI; the BSP's LINT0 also unmasked (KVM's
    /// `KVM_X86_QUIRK_LINT0_REENABLED`).
    #[test]
    fn ch_set_lint_gets_the_lapic_state_then_sets_it_with_lint0_extint_and_lint1_nmi() {
        let k = masked_kernel();
        set_lint(&mut FakeVp(&k), true).unwrap();
        assert_eq!(
            k.calls(),
            [(Op::GetLapic, 0x1_0000), (Op::SetLapic, 0x700)],
            "read (LINT0 masked), then write (LINT0 unmasked ExtINT)"
        );
        assert_eq!(lvt(&k, LVT_LINT1), 0x1_0400, "LINT1: NMI, still masked");

        let ap = masked_kernel();
        set_lint(&mut FakeVp(&ap), false).unwrap();
        assert_eq!(
            lvt(&ap, LVT_LINT0),
            0x1_0700,
            "an AP's LINT0: ExtINT, masked"
        );
        assert_eq!(lvt(&ap, LVT_LINT1), 0x1_0400);
    }

    #[test]
    fn a_refused_lapic_read_writes_nothing() {
        let k = masked_kernel();
        k.answer(Op::GetLapic, Err(errno(libc::EINVAL)));
        let e = set_lint(&mut FakeVp(&k), true).unwrap_err();
        assert!(e.to_string().contains("get LAPIC state"), "{e}");
        assert_eq!(k.count(Op::SetLapic), 0);
        assert!(set_lapic_page(&k, &[0; 16]).is_err(), "a short page");
        assert_eq!(k.count(Op::SetLapic), 0);
    }

    #[test]
    fn every_state_msr_has_an_mshv_register() {
        for &m in STATE_MSRS {
            assert!(msr_register(m).is_ok(), "MSR {m:#x}");
        }
    }

    #[test]
    fn dr7_takes_watchpoints_then_breakpoints_as_the_sdm_encodes_them() {
        use hv_core::state::Watchpoint;
        let d = |watchpoints: Vec<Watchpoint>, breakpoints: Vec<u64>| DebugState {
            breakpoints,
            watchpoints,
            single_step: false,
        };
        assert_eq!(debug_registers(&d(vec![], vec![])).unwrap(), ([0; 4], 0));
        let (dr, dr7) = debug_registers(&d(vec![], vec![0x1000, 0x2000])).unwrap();
        assert_eq!((dr, dr7), ([0x1000, 0x2000, 0, 0], 0b0101));
        let w = Watchpoint {
            address: 0x3008,
            len: 8,
            kind: WatchKind::Write,
        };
        let a = Watchpoint {
            address: 0x4000,
            len: 2,
            kind: WatchKind::Access,
        };
        let (dr, dr7) = debug_registers(&d(vec![w, a], vec![0x1000])).unwrap();
        assert_eq!(dr, [0x3008, 0x4000, 0x1000, 0]);
        // L0 L1 L2; R/W0 01 LEN0 10 (8 bytes); R/W1 11 LEN1 01 (2 bytes).
        assert_eq!(dr7, 0b01_0101 | 0b1001 << 16 | 0b0111 << 20);
        let five = d(vec![w], vec![1, 2, 3, 4]);
        assert!(debug_registers(&five).is_err());
        let odd = Watchpoint { len: 3, ..w };
        assert!(debug_registers(&d(vec![odd], vec![])).is_err());
        let unaligned = Watchpoint {
            address: 0x3004,
            ..w
        };
        assert!(debug_registers(&d(vec![unaligned], vec![])).is_err());
        let read = Watchpoint {
            kind: WatchKind::Read,
            ..w
        };
        assert!(debug_registers(&d(vec![read], vec![])).is_err());
    }
}
