//! An MSHV virtual processor.

use crate::cpuid;
use crate::errors::{map_error, retry};
use crate::kernel::{TranslateMemo, TranslatePath, Vp, TRANSLATE};
use crate::kick::RunningThread;
use crate::run::{run_vp, Ended};
use hv_core::backend::check_batch;
use hv_core::{
    Canceller, Counters, CpuidResult, Exit, ExitMessage, HostRegion, HvError, RegisterPageMode,
    RegisterPagePtr, RegisterValue, Result, RunLimits, VcpuBackend,
};
use mshv_bindings::*;
use mshv_ioctls::{MshvError, VcpuFd, VmFd};
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::{Arc, Once};

pub struct MshvVcpu {
    index: u32,
    fd: VcpuFd,
    /// Our own mapping of the register page (see [`map_page`]).
    page: Option<(Arc<HostRegion>, RegisterPagePtr)>,
    counters: Counters,
    canceller: Canceller,
    running: RunningThread,
    /// The CPUID answers registered for this vCPU.
    cpuid: Vec<CpuidResult>,
    /// The page was seen with a layout version other than the one this code reads.
    page_unusable: bool,
    /// The partition: the #DB intercept is installed on it.
    vm: Arc<VmFd>,
    /// A debug state with breakpoints or a step is set.
    pub(crate) debugging: bool,
    /// The last run stopped at a breakpoint: the next resumes past it.
    at_breakpoint: bool,
    /// Debug slots the watchpoints take (the first ones): a stop at a later slot is a
    /// breakpoint's.
    pub(crate) watch_slots: usize,
}

/// Refuses the limits the hypervisor cannot honour, rather than running without them:
/// MSHV counts no guest instructions and keeps no guest clock apart from the host's.
/// (A deadline it can honour: a timer signals the run.) `block_on_halt` needs no check:
/// a halted vCPU always blocks in the hypervisor until an interrupt (the kernel's
/// `mshv_root_main.c` returns from `MSHV_RUN_VP` only with an intercept message).
pub fn check_limits(limits: &RunLimits) -> Result<()> {
    if limits.max_instructions.is_some() {
        return Err(HvError::Unsupported(
            "maxInstructions (an instruction budget) needs the sim backend: MSHV does not count guest instructions".into(),
        ));
    }
    if limits.guest_deadline.is_some() {
        return Err(HvError::Unsupported(
            "guestDeadlineNs (a guest-time deadline) needs the sim backend: MSHV's guest time is the host's, use timeoutMs".into(),
        ));
    }
    Ok(())
}

/// Translates `gva` on VP `index`: `MSHV_VP_TRANSLATE_GVA` until the kernel refuses it
/// (ENOTTY), then `HVCALL_TRANSLATE_VIRTUAL_ADDRESS` through `MSHV_ROOT_HVCALL` for good,
/// the refusal kept in `memo` (the process's, [`TRANSLATE`]). mshv-ioctls'
/// `VcpuFd::translate_gva` (rust-vmm/mshv mshv-ioctls/src/ioctls/vcpu.rs) asks the ioctl
/// first at every call, and mainline's `mshv_vp_ioctl` (torvalds/linux
/// drivers/hv/mshv_root_main.c) lacks it: ENOTTY and a `vp_warn` "Invalid ioctl" line in
/// the kernel log at every translation.
pub fn translate_gva<V: Vp>(
    vp: &V,
    index: u32,
    gva: u64,
    flags: u64,
    memo: &TranslateMemo,
) -> Result<(u64, u32)> {
    if memo.get() != TranslatePath::Hypercall {
        match retry(|| vp.translate_gva_ioctl(gva, flags)) {
            Ok(r) => {
                memo.set(TranslatePath::Ioctl);
                return Ok(r);
            }
            Err(MshvError::Errno(n)) if n.errno() == libc::ENOTTY => {
                memo.set(TranslatePath::Hypercall)
            }
            Err(e) => return Err(map_error("translate GVA (MSHV_VP_TRANSLATE_GVA)", e)),
        }
    }
    retry(|| vp.translate_gva_hvcall(index, gva, flags))
        .map_err(|e| map_error("translate GVA (HVCALL_TRANSLATE_VIRTUAL_ADDRESS)", e))
}

/// Builds the `hv_register_assoc` array for a batch.
pub fn assocs(ids: &[u32], values: Option<&[RegisterValue]>) -> Vec<hv_register_assoc> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let v = values.map_or([0, 0], |v| v[i]);
            hv_register_assoc {
                name: *id,
                value: hv_register_value {
                    reg128: hv_u128 {
                        low_part: v[0],
                        high_part: v[1],
                    },
                },
                ..Default::default()
            }
        })
        .collect()
}

/// Maps the vCPU's register page a second time, into a region we own.
///
/// mshv-ioctls maps the page in `VmFd::create_vcpu` and unmaps it when the `VcpuFd`
/// drops, while a JavaScript `ArrayBuffer` over it may live on. Our own shared mapping
/// of the same page (offset `MSHV_VP_MMAP_OFFSET_REGISTERS` pages, as mshv-ioctls'
/// `create_vcpu` and the kernel's `mshv_vp_mmap` in `drivers/hv/mshv_root_main.c` use)
/// is owned by an `Arc<HostRegion>` that every buffer holds; closing the vCPU retires
/// it (the file reference goes, the address stays mapped to zeros).
fn map_page(fd: &VcpuFd) -> Result<(Arc<HostRegion>, RegisterPagePtr)> {
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGE_SIZE) } as i64;
    let region = Arc::new(HostRegion::map_shared(
        fd.as_raw_fd(),
        MSHV_VP_MMAP_OFFSET_REGISTERS as i64 * page_size,
        hv_core::PAGE_SIZE,
    )?);
    let ptr = NonNull::new(region.as_ptr())
        .ok_or_else(|| HvError::ioctl("mmap the register page", libc::ENOMEM))?;
    // SAFETY: the region is a live 4 KiB shared mapping kept next to the pointer.
    Ok((region, unsafe { RegisterPagePtr::new(ptr) }))
}

impl MshvVcpu {
    pub fn new(index: u32, fd: VcpuFd, vm: Arc<VmFd>, mode: RegisterPageMode) -> Self {
        // mshv-ioctls reports a page only where its own mmap worked.
        let page = match (mode, fd.get_vp_reg_page().map(|_| map_page(&fd))) {
            (RegisterPageMode::Off, _) => None,
            (_, Some(Ok(p))) => Some(p),
            (_, _) => {
                static WARN: Once = Once::new();
                WARN.call_once(|| {
                    eprintln!(
                        "mshv: the VP register page could not be mapped; using register hypercalls"
                    );
                });
                None
            }
        };
        let running = RunningThread::default();
        let kick_target = running.clone();
        MshvVcpu {
            index,
            fd,
            page,
            counters: Counters::default(),
            canceller: Canceller::with_kick(Arc::new(move || kick_target.kick())),
            running,
            cpuid: Vec::new(),
            page_unusable: false,
            vm,
            debugging: false,
            at_breakpoint: false,
            watch_slots: 0,
        }
    }

    pub(crate) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The next run resumes as from a breakpoint stop (RFLAGS.RF set first).
    pub(crate) fn set_at_breakpoint(&mut self) {
        self.at_breakpoint = true;
    }

    /// A #DB intercept while debugging: DR6 (read by hypercall, as Hyperlight's
    /// `get_debug_regs` does) goes into the message's exception parameter, so the VMM
    /// reads what stopped the vCPU there on both backends; a breakpoint's stop is
    /// remembered for the resume.
    fn debug_stop(&mut self, msg: &mut ExitMessage) -> Result<()> {
        let mut dr6 = [[0u64; 2]];
        self.get_registers(&[hv_register_name_HV_X64_REGISTER_DR6], &mut dr6)?;
        let mut m: hv_x64_exception_intercept_message = msg.payload();
        m.exception_parameter = dr6[0][0];
        msg.write(hv_core::message::HVMSG_X64_EXCEPTION_INTERCEPT, &m);
        // A breakpoint's stop (a fault: RIP on it) resumes past it; a watchpoint's is a
        // trap (RIP past the access), and RF then would hide a breakpoint at the next one.
        self.at_breakpoint = (dr6[0][0] & 0xf) >> self.watch_slots != 0;
        // DR6's status bits are sticky (SDM vol 3 18.2.3): cleared for the next stop.
        self.set_registers(&[hv_register_name_HV_X64_REGISTER_DR6], &[[0, 0]])
    }

    /// A valid page of a layout version other than `HV_VP_REGISTER_PAGE_VERSION_1` (the
    /// one mshv-bindings describes, and rust-vmm's mshv-ioctls test asserts) must not
    /// be read through our offsets: it is marked invalid at every exit, so the register
    /// cache goes through hypercalls, and a warning says so once.
    fn check_page_version(&mut self) {
        let Some((_, page)) = &self.page else { return };
        if !page.is_valid() {
            return;
        }
        let version = page.read_u16(hv_core::page::VERSION);
        if !self.page_unusable && version != HV_VP_REGISTER_PAGE_VERSION_1 as u16 {
            self.page_unusable = true;
            eprintln!("mshv: the VP register page has layout version {version}, not 1; using register hypercalls");
        }
        if self.page_unusable {
            page.write_u8(hv_core::page::ISVALID, 0);
        }
    }
}

impl VcpuBackend for MshvVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn lapic(&mut self) -> Result<Vec<u8>> {
        crate::state::lapic_page(&self.fd)
    }

    fn set_lapic(&mut self, lapic: &[u8]) -> Result<()> {
        crate::state::set_lapic_page(&self.fd, lapic)
    }

    fn run(&mut self, msg: &mut ExitMessage, limits: &RunLimits) -> Result<Exit> {
        check_limits(limits)?;
        if std::mem::take(&mut self.at_breakpoint) {
            self.resume_past_breakpoint()?;
        }
        self.counters.runs += 1;
        let page = self.page.as_ref().map(|(_, p)| *p);
        let ended = run_vp(
            &self.fd,
            page,
            &self.running,
            &self.canceller,
            limits.deadline,
        )
        .map_err(|e| map_error("run vCPU", e))?;
        match ended {
            Ended::Done(m) => {
                msg.set(&m);
                if self.debugging
                    && msg.message_type() == hv_core::message::HVMSG_X64_EXCEPTION_INTERCEPT
                {
                    self.debug_stop(msg)?;
                }
                self.check_page_version();
                self.counters.count_exit(msg.message_type());
                Ok(Exit::Message)
            }
            Ended::Cancelled => Ok(Exit::Cancelled),
            Ended::Timeout => Ok(Exit::Timeout),
        }
    }

    fn get_registers(&mut self, ids: &[u32], out: &mut [RegisterValue]) -> Result<()> {
        check_batch(ids, out.len())?;
        let mut a = assocs(ids, None);
        self.counters.get_registers += 1;
        let fd = &self.fd;
        retry(|| fd.get_reg(&mut a)).map_err(|e| map_error("get registers", e))?;
        for (slot, assoc) in out.iter_mut().zip(&a) {
            // SAFETY: the hypervisor filled the value; the u128 view is valid for any bits.
            let v = unsafe { assoc.value.reg128 };
            *slot = [v.low_part, v.high_part];
        }
        self.counters.registers_read += ids.len() as u64;
        Ok(())
    }

    fn set_registers(&mut self, ids: &[u32], values: &[RegisterValue]) -> Result<()> {
        check_batch(ids, values.len())?;
        self.counters.set_registers += 1;
        let a = assocs(ids, Some(values));
        retry(|| self.fd.set_reg(&a)).map_err(|e| map_error("set registers", e))?;
        self.counters.registers_written += ids.len() as u64;
        Ok(())
    }

    fn translate_gva(&mut self, gva: u64, flags: u64) -> Result<(u64, u32)> {
        self.counters.translate_gva += 1;
        translate_gva(&self.fd, self.index, gva, flags, &TRANSLATE)
    }

    fn set_cpuid_results(&mut self, results: &[CpuidResult]) -> Result<()> {
        // A registered answer cannot be unregistered: one no longer wanted is registered
        // again with nothing overridden.
        let withdrawn: Vec<CpuidResult> = self
            .cpuid
            .iter()
            .filter(|old| {
                !results
                    .iter()
                    .any(|r| r.leaf == old.leaf && r.subleaf == old.subleaf)
            })
            .map(CpuidResult::withdrawn)
            .collect();
        for r in withdrawn.iter().chain(results) {
            cpuid::register(&self.fd, self.index, r)?;
        }
        self.cpuid = results.to_vec();
        Ok(())
    }

    fn register_page(&self) -> Option<RegisterPagePtr> {
        self.page.as_ref().map(|(_, p)| *p)
    }

    fn register_page_region(&self) -> Option<Arc<HostRegion>> {
        self.page.as_ref().map(|(r, _)| Arc::clone(r))
    }

    fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn reset_counters(&mut self) {
        self.counters = Counters::default();
    }

    fn state(&mut self) -> Result<hv_core::VcpuState> {
        self.save_state()
    }

    fn set_state(&mut self, state: &hv_core::VcpuState) -> Result<()> {
        self.restore_state(state)
    }

    fn set_debug_state(&mut self, debug: &hv_core::DebugState) -> Result<()> {
        let vm = Arc::clone(&self.vm);
        self.debug(&vm, debug)
    }
}

impl Drop for MshvVcpu {
    /// Our page mapping holds the vCPU file open; retiring it lets the VP go with the fd
    /// even while JavaScript still holds a buffer over the page.
    fn drop(&mut self) {
        if let Some((region, _)) = &self.page {
            region.retire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instruction_budget_is_refused_and_a_deadline_is_honoured() {
        assert!(check_limits(&RunLimits::default()).is_ok());
        let budget = RunLimits {
            max_instructions: Some(1),
            deadline: None,
            ..RunLimits::default()
        };
        let e = check_limits(&budget).unwrap_err();
        assert_eq!(e.code(), "ENOTSUP");
        assert!(e.to_string().contains("maxInstructions"), "{e}");
        let timeout = RunLimits {
            max_instructions: None,
            deadline: Some(std::time::Instant::now()),
            ..RunLimits::default()
        };
        assert!(
            check_limits(&timeout).is_ok(),
            "a timer signals the run at its deadline"
        );
        let guest_time = RunLimits {
            guest_deadline: Some(1),
            ..RunLimits::default()
        };
        let e = check_limits(&guest_time).unwrap_err();
        assert!(e.to_string().contains("guestDeadlineNs"), "{e}");
    }

    #[test]
    fn assocs_carry_ids_and_both_halves() {
        let a = assocs(&[hv_register_name_HV_X64_REGISTER_XMM0], Some(&[[1, 2]]));
        assert_eq!({ a[0].name }, hv_register_name_HV_X64_REGISTER_XMM0);
        // SAFETY: reading the u128 view written above.
        let v = unsafe { a[0].value.reg128 };
        assert_eq!((v.low_part, v.high_part), (1, 2));
    }

    #[test]
    fn user_regions_carry_pfn_flags_and_host_address() {
        let region = std::sync::Arc::new(hv_core::HostRegion::new(8192).unwrap());
        let m = hv_core::MemoryMapping {
            gpa: 0x10_0000,
            region: region.clone(),
            writable: true,
            executable: false,
        };
        let r = crate::vm::user_region(&m, false);
        assert_eq!(({ r.guest_pfn }, { r.size }), (0x100, 8192));
        assert_eq!(r.flags, 1 << MSHV_SET_MEM_BIT_WRITABLE);
        assert_eq!({ r.userspace_addr }, region.as_ptr() as u64);
        let u = crate::vm::user_region(&m, true);
        assert_eq!(
            u.flags & (1 << MSHV_SET_MEM_BIT_UNMAP),
            1 << MSHV_SET_MEM_BIT_UNMAP
        );
    }

    use crate::kernel::fake::{errno, status, Kernel, Op};

    /// torvalds/linux drivers/hv/mshv_root_main.c `mshv_vp_ioctl`: no
    /// MSHV_VP_TRANSLATE_GVA case, so `-ENOTTY` and a kernel log line.
    #[test]
    fn mainline_mshv_vp_ioctl_refuses_translate_gva_once_then_the_hypercall_is_used_alone() {
        let k = Kernel::default();
        k.answer(Op::TranslateIoctl, Err(errno(libc::ENOTTY)))
            .answer(Op::TranslateHvcall, Ok(0x5000))
            .answer(Op::TranslateHvcall, Ok(0x6000));
        let memo = TranslateMemo::new();
        assert_eq!(translate_gva(&k, 0, 0x1000, 1, &memo).unwrap(), (0x5000, 0));
        assert_eq!(memo.get(), TranslatePath::Hypercall);
        assert_eq!(translate_gva(&k, 0, 0x2000, 1, &memo).unwrap(), (0x6000, 0));
        assert_eq!(
            k.count(Op::TranslateIoctl),
            1,
            "the refused ioctl is asked once"
        );
        assert_eq!(k.count(Op::TranslateHvcall), 2);
    }

    #[test]
    fn a_kernel_with_the_translate_ioctl_keeps_using_it() {
        let k = Kernel::default();
        k.answer(Op::TranslateIoctl, Ok(0x7000));
        let memo = TranslateMemo::new();
        assert_eq!(translate_gva(&k, 0, 0x1000, 1, &memo).unwrap(), (0x7000, 0));
        assert_eq!(memo.get(), TranslatePath::Ioctl);
        translate_gva(&k, 0, 0x1000, 1, &memo).unwrap();
        assert_eq!(
            (k.count(Op::TranslateIoctl), k.count(Op::TranslateHvcall)),
            (2, 0)
        );
    }

    #[test]
    fn other_translation_failures_are_errors_and_teach_nothing() {
        let k = Kernel::default();
        k.answer(Op::TranslateIoctl, Err(errno(libc::EFAULT)));
        let memo = TranslateMemo::new();
        let e = translate_gva(&k, 0, 0x1000, 1, &memo).unwrap_err();
        assert!(e.to_string().contains("MSHV_VP_TRANSLATE_GVA"), "{e}");
        assert_eq!(memo.get(), TranslatePath::Untried);
        assert_eq!(k.count(Op::TranslateHvcall), 0);
        memo.set(TranslatePath::Hypercall);
        k.answer(
            Op::TranslateHvcall,
            Err(status(
                HVCALL_TRANSLATE_VIRTUAL_ADDRESS,
                HV_STATUS_INVALID_PARAMETER,
            )),
        );
        let e = translate_gva(&k, 0, 0x1000, 1, &memo).unwrap_err();
        assert_eq!(e.code(), "EHYPERCALL");
        assert!(
            e.to_string().contains("HVCALL_TRANSLATE_VIRTUAL_ADDRESS"),
            "{e}"
        );
    }
}
