//! An MSHV partition.

use crate::errors::{map_error, retry};
use crate::kernel::{describe, record_partition_path, record_refused, Partition, RefusedIntercept};
use crate::partition;
use crate::vcpu::MshvVcpu;
use hv_core::backend::check_mapping;
use hv_core::{
    HvError, MemoryMapping, RegisterPageMode, Result, UnknownMsr, VcpuBackend, VmBackend, VmConfig,
};
use mshv_bindings::*;
use mshv_ioctls::{Mshv, MshvError, VmFd};
use std::sync::Arc;
use std::time::Instant;

pub struct MshvVm {
    fd: Arc<VmFd>,
    config: VmConfig,
    mappings: Vec<MemoryMapping>,
    /// When the partition was made: guest time counts from here.
    created: Instant,
    /// Guest time minus host time since `created`, shared by every interrupts handle.
    offset: Arc<std::sync::atomic::AtomicI64>,
}

/// The `mshv_user_mem_region` for a mapping.
pub fn user_region(m: &MemoryMapping, unmap: bool) -> mshv_user_mem_region {
    let mut flags = 0u8;
    if m.writable {
        flags |= 1 << MSHV_SET_MEM_BIT_WRITABLE;
    }
    if m.executable {
        flags |= 1 << MSHV_SET_MEM_BIT_EXECUTABLE;
    }
    if unmap {
        flags |= 1 << MSHV_SET_MEM_BIT_UNMAP;
    }
    mshv_user_mem_region {
        size: m.region.len() as u64,
        guest_pfn: m.gpa >> 12,
        userspace_addr: m.region.as_ptr() as u64,
        flags,
        rsvd: [0; 7],
    }
}

/// The intercept of RDMSR and WRMSR of `msr` (`HV_INTERCEPT_TYPE_X64_MSR_INDEX`, the
/// MSR number as the parameter): as Hyperlight's mshv driver installed its IA32_APIC_BASE
/// write intercept (hyperlight-dev/hyperlight commit 7f5d0bc2,
/// `src/hyperlight_host/src/hypervisor/virtual_machine/mshv/x86_64.rs`, `MshvVm::new`)
/// and OpenVMM's mshv backend (`msr_index_intercept`) installs its own.
pub fn msr_intercept(msr: u32) -> mshv_install_intercept {
    mshv_install_intercept {
        access_type_mask: HV_INTERCEPT_ACCESS_MASK_READ | HV_INTERCEPT_ACCESS_MASK_WRITE,
        intercept_type: hv_intercept_type_HV_INTERCEPT_TYPE_X64_MSR_INDEX,
        intercept_parameter: hv_intercept_parameters {
            as_uint64: msr as u64,
        },
    }
}

/// Whether the hypervisor refused an intercept: `HV_STATUS_ACCESS_DENIED`, which the
/// kernel passes back in the hvcall's status (torvalds/linux drivers/hv/mshv_root_main.c
/// `mshv_ioctl_passthru_hvcall`: "Always return the status ... regardless of result") and
/// mshv-ioctls reports as `MshvError::Hypercall` (`from_hvcall`), or EACCES alone.
fn intercept_refused(e: &MshvError) -> bool {
    match e {
        MshvError::Hypercall { status_raw, .. } => *status_raw as u32 == HV_STATUS_ACCESS_DENIED,
        MshvError::Errno(n) => n.errno() == libc::EACCES,
    }
}

/// Installs the MSR intercepts; those the hypervisor refuses are left out and returned,
/// the partition made without them. Hyperlight met the refusal: "This may fail with
/// AccessDenied on some kernel versions" of its IA32_APIC_BASE intercept, and went on
/// without it (hyperlight-dev/hyperlight commit 7f5d0bc2,
/// `src/hyperlight_host/src/hypervisor/virtual_machine/mshv/x86_64.rs`, `MshvVm::new`,
/// `let _ = vm_fd.install_intercept(..)`; commit 1bc420ba then removed the intercept).
/// Any other failure is an error.
pub fn install_msr_intercepts<P: Partition>(pt: &P, msrs: &[u32]) -> Result<Vec<RefusedIntercept>> {
    let mut refused = Vec::new();
    for &msr in msrs {
        match retry(|| pt.install_intercept(msr_intercept(msr))) {
            Ok(()) => {}
            Err(e) if intercept_refused(&e) => refused.push(RefusedIntercept {
                msr,
                reason: format!(
                    "the hypervisor refused the intercept ({}): the guest's RDMSR and WRMSR of it do not exit",
                    describe(&e)
                ),
            }),
            Err(e) => return Err(map_error("install MSR intercept", e)),
        }
    }
    Ok(refused)
}

/// Creates VP `index`, once: no retry. The kernel keeps a VP from the `MSHV_CREATE_VP`
/// that made it until the partition goes (torvalds/linux drivers/hv/mshv_root_main.c:
/// `mshv_partition_ioctl_create_vp` answers `-EEXIST` once `pt_vp_array[vp_index]` is set,
/// and `mshv_vp_release` leaves the VP to `destroy_partition`), while mshv-ioctls'
/// `VmFd::create_vcpu` can fail after it (the register page's mmap, any errno but
/// ENODEV) and closes the new fd: a retry then meets EEXIST. QEMU
/// (`mshv_create_vcpu`, target/i386/mshv/mshv-cpu.c) and Cloud Hypervisor
/// (`MshvVm::create_vcpu`, hypervisor/src/mshv/mod.rs) call it once too.
pub fn create_vp<P: Partition>(pt: &P, index: u8) -> Result<P::Vp> {
    pt.create_vp(index).map_err(|e| match e {
        MshvError::Errno(n) if n.errno() == libc::EEXIST => HvError::Ioctl {
            op: "create vCPU",
            errno: libc::EEXIST,
            reason: format!(
                "vCPU {index} exists in this partition already: the kernel keeps a VP from its first MSHV_CREATE_VP, \
                 even when the creation failed after it (mapping the register page), so each index is created once"
            ),
        },
        e => map_error("create vCPU (MSHV_CREATE_VP, then the register page's mmap)", e),
    })
}

/// Rejects settings MSHV cannot honour, before any partition exists.
pub fn check_config(config: &VmConfig) -> Result<()> {
    if config.unknown_msr == UnknownMsr::Exit {
        return Err(HvError::Unsupported(
            "unknownMsr 'exit' is sim-only: MSHV either faults (#GP) or ignores unimplemented MSRs; \
             intercept the MSRs you handle by number instead"
                .into(),
        ));
    }
    if let Some(cpu) = config.cpu {
        // Neither tier exists here: the processor runs guest code itself.
        return Err(HvError::Unsupported(format!(
            "cpu {cpu:?} is sim-only: MSHV runs guest code on the processor itself"
        )));
    }
    if config.clock == Some(hv_core::ClockMode::Deterministic) {
        return Err(HvError::Unsupported(
            "clock 'deterministic' is sim-only: MSHV's guests run on real time".into(),
        ));
    }
    if config.register_page == RegisterPageMode::Invalid {
        return Err(HvError::Unsupported(
            "registerPage 'invalid' is sim-only: MSHV marks the page valid at every intercept; \
             use 'off' to run without it"
                .into(),
        ));
    }
    Ok(())
}

impl MshvVm {
    pub fn create(mshv: &Mshv, config: &VmConfig) -> Result<Self> {
        check_config(config)?;
        let (fd, path) = partition::create(mshv, config.hyperv)?;
        record_partition_path(&path);
        if config.unknown_msr == UnknownMsr::Ignore {
            retry(|| {
                fd.set_partition_property(
                    hv_partition_property_code_HV_PARTITION_PROPERTY_UNIMPLEMENTED_MSR_ACTION,
                    hv_unimplemented_msr_action_HV_UNIMPLEMENTED_MSR_ACTION_IGNORE_WRITE_READ_ZERO
                        as u64,
                )
            })
            .map_err(|e| map_error("set the unimplemented-MSR action", e))?;
        }
        for r in install_msr_intercepts(&fd, &config.intercept_msrs)? {
            if record_refused(&r) {
                eprintln!("mshv: {r}; the partition runs without it");
            }
        }
        Ok(MshvVm {
            fd: Arc::new(fd),
            config: config.clone(),
            mappings: Vec::new(),
            created: Instant::now(),
            offset: Arc::default(),
        })
    }
}

/// Interrupt requests through `HVCALL_ASSERT_VIRTUAL_INTERRUPT`
/// (`VmFd::request_virtual_interrupt`), as OpenVMM's `virt_mshv` (`request_msi`) and
/// Cloud Hypervisor (`nmi`) send them; the hypervisor's local APIC takes them.
struct MshvInterrupts {
    fd: Arc<VmFd>,
    created: Instant,
    /// Guest time minus host time since `created` (a restored snapshot's).
    offset: Arc<std::sync::atomic::AtomicI64>,
}

impl hv_core::Interrupts for MshvInterrupts {
    fn request(&self, r: &hv_core::InterruptRequest) -> Result<()> {
        r.check()?;
        let req = mshv_ioctls::InterruptRequest {
            interrupt_type: r.kind.hv_type(),
            apic_id: r.destination as u64,
            vector: r.vector as u32,
            level_triggered: r.level,
            logical_destination_mode: r.logical,
            long_mode: false,
        };
        retry(|| self.fd.request_virtual_interrupt(&req))
            .map_err(|e| map_error("request a virtual interrupt", e))
    }

    /// The guest's clocks follow the host's on MSHV (the partition's reference time
    /// and TSC run in real time), so host time since creation is guest time.
    fn guest_time(&self) -> u64 {
        (self.created.elapsed().as_nanos() as i64)
            .saturating_add(self.offset.load(std::sync::atomic::Ordering::Acquire))
            .max(0) as u64
    }

    /// The VMM's view of guest time only: the partition's own reference time (the
    /// `HV_PARTITION_PROPERTY_REFERENCE_TIME` Cloud Hypervisor saves) is not moved.
    fn set_guest_time(&self, ns: u64) {
        let elapsed = self.created.elapsed().as_nanos() as i64;
        self.offset.store(
            (ns as i64).saturating_sub(elapsed),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// The hypervisor keeps no VMM deadline: the VMM's event loop fires its timers on
    /// the host clock (mshv's runs are on worker threads).
    fn set_device_deadline(&self, _deadline: Option<u64>) {}
}

impl VmBackend for MshvVm {
    fn map_memory(&mut self, mapping: MemoryMapping) -> Result<()> {
        check_mapping(&mapping, &self.mappings)?;
        // The kernel pins every page of the region now (pin_user_pages_fast with
        // FOLL_LONGTERM in mshv_region_populate_pages, drivers/hv/mshv_root_main.c): the
        // whole region is committed here, whatever the guest later touches.
        retry(|| self.fd.map_user_memory(user_region(&mapping, false))).map_err(|e| {
            map_error(
                "map guest memory (the kernel pins all of it at map time)",
                e,
            )
        })?;
        self.mappings.push(mapping);
        Ok(())
    }

    fn unmap_memory(&mut self, gpa: u64) -> Result<MemoryMapping> {
        let i = self
            .mappings
            .iter()
            .position(|m| m.gpa == gpa)
            .ok_or(HvError::NotMapped(gpa))?;
        retry(|| {
            self.fd
                .unmap_user_memory(user_region(&self.mappings[i], true))
        })
        .map_err(|e| map_error("unmap guest memory", e))?;
        Ok(self.mappings.remove(i))
    }

    fn intercept_range(&mut self, gpa: u64, size: u64) -> Result<()> {
        // Every unmapped GPA already exits with HVMSG_UNMAPPED_GPA; intercepting mapped
        // RAM would need host-access changes this backend does not make.
        let end = gpa.checked_add(size).ok_or_else(|| {
            HvError::InvalidArgument(format!("range {gpa:#x} (+{size:#x}) overflows"))
        })?;
        match self.mappings.iter().find(|m| gpa < m.end() && m.gpa < end) {
            Some(m) => Err(HvError::Unsupported(format!(
                "the mshv backend intercepts only unmapped ranges; {gpa:#x} (+{size:#x}) overlaps RAM at {:#x}",
                m.gpa
            ))),
            None => Ok(()),
        }
    }

    fn create_vcpu(&mut self, index: u8) -> Result<Box<dyn VcpuBackend>> {
        // mshv-ioctls maps the register page right after MSHV_CREATE_VP returns the fd.
        let fd = create_vp(self.fd.as_ref(), index)?;
        Ok(Box::new(MshvVcpu::new(
            index as u32,
            fd,
            Arc::clone(&self.fd),
            self.config.register_page,
        )))
    }

    /// The hypervisor's page-access tracking (`HV_PARTITION_PROPERTY_GPA_PAGE_ACCESS_TRACKING`,
    /// mshv-ioctls' `enable_dirty_page_tracking`), every region's bits then cleared, as
    /// Cloud Hypervisor's `start_dirty_log` does.
    fn start_dirty_log(&mut self) -> Result<()> {
        let fd = &self.fd;
        retry(|| fd.enable_dirty_page_tracking())
            .map_err(|e| map_error("enable dirty page tracking", e))?;
        for m in &self.mappings {
            let (pfn, len) = (m.gpa >> 12, m.region.len());
            retry(|| fd.get_dirty_log(pfn, len, MSHV_GPAP_ACCESS_OP_CLEAR as u8))
                .map_err(|e| map_error("clear the dirty log", e))?;
        }
        Ok(())
    }

    /// `get_dirty_log` with `MSHV_GPAP_ACCESS_OP_CLEAR`: the bits, cleared in the same hypercall.
    fn take_dirty_log(&mut self, gpa: u64) -> Result<Vec<u64>> {
        let m = self
            .mappings
            .iter()
            .find(|m| m.gpa == gpa)
            .ok_or(HvError::NotMapped(gpa))?;
        let (pfn, len) = (m.gpa >> 12, m.region.len());
        let fd = &self.fd;
        retry(|| fd.get_dirty_log(pfn, len, MSHV_GPAP_ACCESS_OP_CLEAR as u8))
            .map_err(|e| map_error("get the dirty log", e))
    }

    /// mshv-ioctls: disabling needs every bit set first (`disable_dirty_page_tracking`'s
    /// prerequisite; Cloud Hypervisor's `stop_dirty_log` sets them with OP_SET).
    fn stop_dirty_log(&mut self) -> Result<()> {
        let fd = &self.fd;
        for m in &self.mappings {
            let (pfn, len) = (m.gpa >> 12, m.region.len());
            retry(|| fd.get_dirty_log(pfn, len, MSHV_GPAP_ACCESS_OP_SET as u8))
                .map_err(|e| map_error("set the dirty log's bits", e))?;
        }
        retry(|| fd.disable_dirty_page_tracking())
            .map_err(|e| map_error("disable dirty page tracking", e))
    }

    fn interrupts(&self) -> Arc<dyn hv_core::Interrupts> {
        Arc::new(MshvInterrupts {
            fd: Arc::clone(&self.fd),
            created: self.created,
            offset: Arc::clone(&self.offset),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_msr_exit_is_refused_before_any_partition_exists() {
        let exit = VmConfig {
            unknown_msr: UnknownMsr::Exit,
            ..Default::default()
        };
        let err = check_config(&exit).unwrap_err();
        assert_eq!(err.code(), "ENOTSUP");
        assert!(err.to_string().contains("'exit' is sim-only"), "{err}");
        for ok in [UnknownMsr::Fault, UnknownMsr::Ignore] {
            let c = VmConfig {
                unknown_msr: ok,
                ..Default::default()
            };
            assert!(check_config(&c).is_ok());
        }
    }

    use crate::kernel::fake::{errno, status, Kernel, Op};

    /// hyperlight-dev/hyperlight commit 7f5d0bc2, `MshvVm::new`: the IA32_APIC_BASE
    /// intercept "may fail with AccessDenied on some kernel versions".
    #[test]
    fn an_apic_base_intercept_the_hypervisor_refuses_is_left_out_not_fatal() {
        let k = Kernel::default();
        k.answer(
            Op::InstallIntercept,
            Err(status(HVCALL_INSTALL_INTERCEPT, HV_STATUS_ACCESS_DENIED)),
        );
        let refused = install_msr_intercepts(&k, &[0x1b, 0x277]).unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].msr, 0x1b);
        assert!(refused[0].reason.contains("AccessDenied"), "{}", refused[0]);
        assert!(refused[0].to_string().starts_with("MSR 0x1b: "));
        assert_eq!(
            k.calls(),
            [(Op::InstallIntercept, 0x1b), (Op::InstallIntercept, 0x277)],
            "the next intercept is still installed"
        );
        let k = Kernel::default();
        k.answer(Op::InstallIntercept, Err(errno(libc::EACCES)));
        assert_eq!(install_msr_intercepts(&k, &[0x1b]).unwrap().len(), 1);
    }

    #[test]
    fn other_intercept_failures_still_fail_creation() {
        let k = Kernel::default();
        k.answer(
            Op::InstallIntercept,
            Err(status(
                HVCALL_INSTALL_INTERCEPT,
                HV_STATUS_INVALID_PARAMETER,
            )),
        );
        let e = install_msr_intercepts(&k, &[0x1b]).unwrap_err();
        assert_eq!(e.code(), "EHYPERCALL");
        let k = Kernel::default();
        k.answer(Op::InstallIntercept, Err(errno(libc::EFAULT)));
        assert!(install_msr_intercepts(&k, &[0x1b]).is_err());
    }

    /// torvalds/linux drivers/hv/mshv_root_main.c `mshv_partition_ioctl_create_vp`:
    /// `-EEXIST` once the index has a VP, which the kernel keeps until the partition goes.
    #[test]
    fn create_vcpu_is_asked_once_and_eexist_says_the_kernel_kept_the_vp() {
        let k = Kernel::default();
        k.answer(Op::CreateVp, Err(errno(libc::EAGAIN)));
        let e = create_vp(&k, 2).err().unwrap();
        assert_eq!(k.count(Op::CreateVp), 1, "not retried after a failure");
        assert!(e.to_string().contains("register page"), "{e}");
        k.answer(Op::CreateVp, Err(errno(libc::EEXIST)));
        let e = create_vp(&k, 2).err().unwrap();
        assert!(
            matches!(
                &e,
                HvError::Ioctl {
                    op: "create vCPU",
                    errno: libc::EEXIST,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("vCPU 2 exists in this partition already"),
            "{e}"
        );
        assert!(create_vp(&k, 3).is_ok());
    }
}
