//! The seam between the backend and the kernel: the ioctls whose answers differ from one
//! kernel to the next, behind three small traits ([`Device`], [`Partition`], [`Vp`]) that
//! `mshv-ioctls`' `Mshv`, `VmFd` and `VcpuFd` implement and a scripted fake implements
//! in tests (it answers with chosen errnos and hypercall statuses). What the backend
//! learned about this kernel (the partition-creation path, the GVA-translation path,
//! refused intercepts) is kept for the process and read by `mshv doctor`
//! ([`kernel_paths`]).
//!
//! Kernel sources the paths rest on (torvalds/linux, drivers/hv/mshv_root_main.c and
//! include/uapi/linux/mshv.h):
//! - `mshv_dev_ioctl` handles `MSHV_CREATE_PARTITION` only and answers every other
//!   ioctl on `/dev/mshv` (`MSHV_ROOT_HVCALL` among them) with `-ENOTTY`;
//! - `mshv_ioctl_create_partition` answers `-EINVAL` to a `pt_flags` bit outside
//!   `MSHV_PT_FLAGS_MASK`, which has three bits there (LAPIC, X2APIC, GPA_SUPER_PAGES):
//!   `MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES` (bit 3) is refused;
//! - `mshv_vp_ioctl` knows `MSHV_RUN_VP`, `MSHV_GET/SET_VP_STATE` and `MSHV_ROOT_HVCALL`,
//!   and answers anything else (`MSHV_VP_TRANSLATE_GVA` among them) with a `vp_warn`
//!   "Invalid ioctl" line in the kernel log and `-ENOTTY`; `HVCALL_TRANSLATE_VIRTUAL_ADDRESS`
//!   is in `mshv_passthru_hvcalls`, so `MSHV_ROOT_HVCALL` on the VP fd translates.

use hv_core::{HvError, Result};
use mshv_bindings::*;
use mshv_ioctls::{Mshv, MshvError, VcpuFd, VmFd};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// What one kernel call answered: a value, an errno or a hypercall status.
pub type Answer<T> = std::result::Result<T, MshvError>;

/// `/dev/mshv`.
pub trait Device {
    type Partition: Partition;
    /// A property of the host partition: `HVCALL_GET_PARTITION_PROPERTY` through
    /// `MSHV_ROOT_HVCALL` on `/dev/mshv` (mshv-ioctls `Mshv::get_host_partition_property`).
    fn host_property(&self, code: u32) -> Answer<u64>;
    /// `MSHV_CREATE_PARTITION` (mshv-ioctls `Mshv::create_vm_with_args`).
    fn create_partition(&self, args: &mshv_create_partition_v2) -> Answer<Self::Partition>;
    /// The synthetic processor features of the Hyper-V enlightenments.
    fn synthetic_features(&self) -> Result<u64>;
}

/// A partition fd.
pub trait Partition {
    type Vp: Vp;
    /// `HVCALL_SET_PARTITION_PROPERTY` (mshv-ioctls `VmFd::set_partition_property`).
    fn set_property(&self, code: u32, value: u64) -> Answer<()>;
    /// `MSHV_INITIALIZE_PARTITION`.
    fn initialize(&self) -> Answer<()>;
    /// `HVCALL_INSTALL_INTERCEPT` (mshv-ioctls `VmFd::install_intercept`).
    fn install_intercept(&self, intercept: mshv_install_intercept) -> Answer<()>;
    /// `MSHV_CREATE_VP`, then the register page's mmap (mshv-ioctls `VmFd::create_vcpu`).
    fn create_vp(&self, index: u8) -> Answer<Self::Vp>;
}

/// A VP fd.
pub trait Vp {
    /// `MSHV_RUN_VP` (mshv-ioctls `VcpuFd::run`).
    fn run(&self) -> Answer<hv_message>;
    /// `MSHV_VP_TRANSLATE_GVA`: the GPA and the `hv_translate_gva_result_code`.
    fn translate_gva_ioctl(&self, gva: u64, flags: u64) -> Answer<(u64, u32)>;
    /// `HVCALL_TRANSLATE_VIRTUAL_ADDRESS` through `MSHV_ROOT_HVCALL` on the VP fd, for VP
    /// `index`: the GPA and the result code.
    fn translate_gva_hvcall(&self, index: u32, gva: u64, flags: u64) -> Answer<(u64, u32)>;
    /// `MSHV_GET_VP_STATE` with `MSHV_VP_STATE_LAPIC` (mshv-ioctls `VcpuFd::get_lapic`).
    fn get_lapic(&self) -> Answer<LapicState>;
    /// `MSHV_SET_VP_STATE` with `MSHV_VP_STATE_LAPIC` (mshv-ioctls `VcpuFd::set_lapic`).
    fn set_lapic(&self, lapic: &LapicState) -> Answer<()>;
}

impl Device for Mshv {
    type Partition = VmFd;

    fn host_property(&self, code: u32) -> Answer<u64> {
        self.get_host_partition_property(code)
    }

    fn create_partition(&self, args: &mshv_create_partition_v2) -> Answer<VmFd> {
        self.create_vm_with_args(args)
    }

    /// mshv-ioctls' default mask, which `unwrap()`s a capability query through
    /// `MSHV_ROOT_HVCALL` on `/dev/mshv` (ENOTTY on mainline): its panic becomes an error.
    fn synthetic_features(&self) -> Result<u64> {
        catch_unwind(AssertUnwindSafe(|| self.make_default_synthetic_features_mask())).map_err(
            |_| {
                HvError::Unsupported(
                    "hyperv: this host does not report its VMM capabilities, so the Hyper-V enlightenments cannot be offered"
                        .into(),
                )
            },
        )
    }
}

impl Partition for VmFd {
    type Vp = VcpuFd;

    fn set_property(&self, code: u32, value: u64) -> Answer<()> {
        self.set_partition_property(code, value)
    }

    fn initialize(&self) -> Answer<()> {
        VmFd::initialize(self)
    }

    fn install_intercept(&self, intercept: mshv_install_intercept) -> Answer<()> {
        VmFd::install_intercept(self, intercept)
    }

    fn create_vp(&self, index: u8) -> Answer<VcpuFd> {
        self.create_vcpu(index)
    }
}

impl Vp for VcpuFd {
    fn run(&self) -> Answer<hv_message> {
        VcpuFd::run(self)
    }

    /// The ioctl alone: mshv-ioctls' `VcpuFd::translate_gva` tries it at every call and
    /// falls back to the hypercall on ENOTTY, a kernel log line each time on mainline.
    fn translate_gva_ioctl(&self, gva: u64, flags: u64) -> Answer<(u64, u32)> {
        let mut result = hv_translate_gva_result::default();
        let mut gpa = 0u64;
        let mut args = mshv_translate_gva {
            gva,
            flags,
            result: &mut result,
            gpa: &mut gpa,
        };
        // SAFETY: the VP fd is open; `args` and the two outputs it points to live across
        // the call, with the types `MSHV_VP_TRANSLATE_GVA` is declared with.
        let ret = unsafe {
            libc::ioctl(
                self.as_raw_fd(),
                mshv_ioctls::MSHV_VP_TRANSLATE_GVA() as _,
                &mut args as *mut mshv_translate_gva,
            )
        };
        if ret != 0 {
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            return Err(MshvError::from(errno));
        }
        // SAFETY: the kernel filled the result; its u32 view is valid for any bits.
        Ok((gpa, unsafe { result.__bindgen_anon_1.result_code }))
    }

    /// As mshv-ioctls' private `hvcall_translate_gva` and QEMU's mshv accelerator issue it.
    fn translate_gva_hvcall(&self, index: u32, gva: u64, flags: u64) -> Answer<(u64, u32)> {
        let input = hv_input_translate_virtual_address {
            vp_index: index,
            control_flags: flags,
            gva_page: gva >> HV_HYP_PAGE_SHIFT,
            // The kernel fills partition_id (mshv_ioctl_passthru_hvcall).
            ..Default::default()
        };
        let mut output = hv_output_translate_virtual_address::default();
        let mut args = mshv_bindings::make_args!(HVCALL_TRANSLATE_VIRTUAL_ADDRESS, input, output);
        self.hvcall(&mut args)?;
        let gpa = (output.gpa_page << HV_HYP_PAGE_SHIFT) | (gva & !(HV_HYP_PAGE_MASK as u64));
        // SAFETY: the hypervisor filled the result; its u32 view is valid for any bits.
        Ok((gpa, unsafe {
            output.translation_result.__bindgen_anon_1.result_code
        }))
    }

    fn get_lapic(&self) -> Answer<LapicState> {
        VcpuFd::get_lapic(self)
    }

    fn set_lapic(&self, lapic: &LapicState) -> Answer<()> {
        VcpuFd::set_lapic(self, lapic)
    }
}

/// How partitions were created on this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionPath {
    /// `mshv_create_partition_v2` with `MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES` and the host's
    /// processor features, as mshv-ioctls' `make_default_partition_create_arg` builds it.
    HostFeatures,
    /// The arguments QEMU's `create_partition()` (accel/mshv/mshv-all.c) passes: LAPIC,
    /// X2APIC and GPA super pages, the kernel choosing the processor features.
    Basic {
        /// Why the host-features path was not taken.
        reason: String,
    },
}

impl std::fmt::Display for PartitionPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionPath::HostFeatures => f.write_str(
                "the host's processor features (MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES, read through MSHV_ROOT_HVCALL on /dev/mshv)",
            ),
            PartitionPath::Basic { reason } => write!(
                f,
                "QEMU's arguments (LAPIC, X2APIC, GPA super pages; the kernel's processor features), since {reason}"
            ),
        }
    }
}

/// How GVAs are translated on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TranslatePath {
    /// No translation has been asked for yet in this process.
    #[default]
    Untried,
    /// `MSHV_VP_TRANSLATE_GVA`.
    Ioctl,
    /// `HVCALL_TRANSLATE_VIRTUAL_ADDRESS` through `MSHV_ROOT_HVCALL`: the kernel refused
    /// `MSHV_VP_TRANSLATE_GVA` (ENOTTY), and it is not asked again.
    Hypercall,
}

impl std::fmt::Display for TranslatePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TranslatePath::Untried => "not tried yet",
            TranslatePath::Ioctl => "MSHV_VP_TRANSLATE_GVA",
            TranslatePath::Hypercall => {
                "HVCALL_TRANSLATE_VIRTUAL_ADDRESS through MSHV_ROOT_HVCALL (this kernel answers MSHV_VP_TRANSLATE_GVA with ENOTTY)"
            }
        })
    }
}

/// The translation path learned, shared by every vCPU: one atomic load per translation.
#[derive(Debug, Default)]
pub struct TranslateMemo(AtomicU8);

impl TranslateMemo {
    pub const fn new() -> Self {
        TranslateMemo(AtomicU8::new(0))
    }

    pub fn get(&self) -> TranslatePath {
        match self.0.load(Ordering::Relaxed) {
            1 => TranslatePath::Ioctl,
            2 => TranslatePath::Hypercall,
            _ => TranslatePath::Untried,
        }
    }

    pub fn set(&self, path: TranslatePath) {
        let v = match path {
            TranslatePath::Untried => 0,
            TranslatePath::Ioctl => 1,
            TranslatePath::Hypercall => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

/// An intercept the hypervisor refused, the partition created without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedIntercept {
    pub msr: u32,
    pub reason: String,
}

impl std::fmt::Display for RefusedIntercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MSR {:#x}: {}", self.msr, self.reason)
    }
}

/// What this process learned about the kernel's mshv interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPaths {
    /// How the last partition was created; `None` before the first.
    pub partition: Option<PartitionPath>,
    pub translate_gva: TranslatePath,
    /// MSR intercepts refused, each once.
    pub refused_intercepts: Vec<RefusedIntercept>,
}

static PARTITION_PATH: Mutex<Option<PartitionPath>> = Mutex::new(None);
static REFUSED: Mutex<Vec<RefusedIntercept>> = Mutex::new(Vec::new());
/// The translation path of this process's kernel.
pub static TRANSLATE: TranslateMemo = TranslateMemo::new();

/// The kernel paths this process has taken so far.
pub fn kernel_paths() -> KernelPaths {
    KernelPaths {
        partition: PARTITION_PATH
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        translate_gva: TRANSLATE.get(),
        refused_intercepts: REFUSED.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

pub(crate) fn record_partition_path(path: &PartitionPath) {
    *PARTITION_PATH.lock().unwrap_or_else(|p| p.into_inner()) = Some(path.clone());
}

/// Records a refused intercept; true the first time this MSR is refused.
pub(crate) fn record_refused(r: &RefusedIntercept) -> bool {
    let mut all = REFUSED.lock().unwrap_or_else(|p| p.into_inner());
    if all.iter().any(|o| o.msr == r.msr) {
        return false;
    }
    all.push(r.clone());
    true
}

/// An errno as its name and text: "ENOTTY (Inappropriate ioctl for device)".
pub fn describe(e: &MshvError) -> String {
    match e {
        MshvError::Errno(errno) => {
            let n = errno.errno();
            let name = match n {
                libc::ENOTTY => "ENOTTY",
                libc::EINVAL => "EINVAL",
                libc::EEXIST => "EEXIST",
                libc::EACCES => "EACCES",
                _ => "errno",
            };
            format!("{name} {n}: {}", std::io::Error::from_raw_os_error(n))
        }
        other => other.to_string(),
    }
}

/// A scripted kernel for tests: each call takes the next answer queued for its
/// operation (success when none is), and every call is logged.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::{HashMap, VecDeque};
    use std::rc::Rc;

    /// The operations a fake answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Op {
        HostProperty,
        CreatePartition,
        SetProperty,
        Initialize,
        InstallIntercept,
        CreateVp,
        Run,
        TranslateIoctl,
        TranslateHvcall,
        GetLapic,
        SetLapic,
    }

    type Hook = Box<dyn FnMut() -> Answer<()>>;

    #[derive(Default)]
    struct State {
        answers: HashMap<Op, VecDeque<Answer<u64>>>,
        calls: Vec<(Op, u64)>,
        run_hook: Option<Hook>,
        /// The VP's LAPIC state page: what `get_lapic` answers and `set_lapic` replaces.
        lapic: Option<LapicState>,
    }

    /// The device; its partitions and VPs share its script and log.
    #[derive(Clone, Default)]
    pub struct Kernel(Rc<RefCell<State>>);

    impl std::fmt::Debug for Kernel {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_tuple("Kernel").field(&self.calls()).finish()
        }
    }

    /// An errno answer.
    pub fn errno(n: i32) -> MshvError {
        MshvError::from(n)
    }

    /// A hypercall answered with `status` (as `MshvError::from_hvcall` reports one).
    pub fn status(code: u32, status: u32) -> MshvError {
        MshvError::Hypercall {
            code: code as u16,
            status_raw: status as u16,
            status: mshv_bindings::HvError::try_from(status as u16).ok(),
        }
    }

    impl Kernel {
        /// Queues `answer` for the next call of `op`.
        pub fn answer(&self, op: Op, answer: Answer<u64>) -> &Self {
            self.0
                .borrow_mut()
                .answers
                .entry(op)
                .or_default()
                .push_back(answer);
            self
        }

        /// Runs `hook` inside every `run`: its error is the run's answer, else the
        /// run answers as queued.
        pub fn on_run(&self, hook: impl FnMut() -> Answer<()> + 'static) {
            self.0.borrow_mut().run_hook = Some(Box::new(hook));
        }

        /// The calls made, with their argument of interest (flags, MSR, index, GVA).
        pub fn calls(&self) -> Vec<(Op, u64)> {
            self.0.borrow().calls.clone()
        }

        /// The LAPIC state page the VP holds (zeros until one is set).
        pub fn lapic(&self) -> LapicState {
            self.0.borrow().lapic.unwrap_or_default()
        }

        /// Gives the VP a LAPIC state page, as the hypervisor's reset would.
        pub fn set_lapic_page(&self, lapic: LapicState) {
            self.0.borrow_mut().lapic = Some(lapic);
        }

        pub fn count(&self, op: Op) -> usize {
            self.0
                .borrow()
                .calls
                .iter()
                .filter(|(o, _)| *o == op)
                .count()
        }

        fn call(&self, op: Op, arg: u64) -> Answer<u64> {
            let mut s = self.0.borrow_mut();
            s.calls.push((op, arg));
            s.answers
                .get_mut(&op)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Ok(0))
        }
    }

    impl Device for Kernel {
        type Partition = Kernel;

        fn host_property(&self, code: u32) -> Answer<u64> {
            self.call(Op::HostProperty, code as u64)
        }

        fn create_partition(&self, args: &mshv_create_partition_v2) -> Answer<Kernel> {
            self.call(Op::CreatePartition, args.pt_flags)
                .map(|_| self.clone())
        }

        fn synthetic_features(&self) -> Result<u64> {
            Ok(0)
        }
    }

    impl Partition for Kernel {
        type Vp = Kernel;

        fn set_property(&self, code: u32, _value: u64) -> Answer<()> {
            self.call(Op::SetProperty, code as u64).map(drop)
        }

        fn initialize(&self) -> Answer<()> {
            self.call(Op::Initialize, 0).map(drop)
        }

        fn install_intercept(&self, intercept: mshv_install_intercept) -> Answer<()> {
            // SAFETY: the MSR-index intercepts the backend installs use the u64 view.
            let msr = unsafe { intercept.intercept_parameter.as_uint64 };
            self.call(Op::InstallIntercept, msr).map(drop)
        }

        fn create_vp(&self, index: u8) -> Answer<Kernel> {
            self.call(Op::CreateVp, index as u64).map(|_| self.clone())
        }
    }

    impl Vp for Kernel {
        fn run(&self) -> Answer<hv_message> {
            let queued = self.call(Op::Run, 0);
            let hook = self.0.borrow_mut().run_hook.take();
            if let Some(mut hook) = hook {
                let r = hook();
                self.0.borrow_mut().run_hook = Some(hook);
                r?;
            }
            queued.map(|_| hv_message::default())
        }

        fn translate_gva_ioctl(&self, gva: u64, _flags: u64) -> Answer<(u64, u32)> {
            self.call(Op::TranslateIoctl, gva).map(|gpa| (gpa, 0))
        }

        fn translate_gva_hvcall(&self, _index: u32, gva: u64, _flags: u64) -> Answer<(u64, u32)> {
            self.call(Op::TranslateHvcall, gva).map(|gpa| (gpa, 0))
        }

        /// The call's argument is LVT LINT0 as read.
        fn get_lapic(&self) -> Answer<LapicState> {
            let page = self.lapic();
            self.call(Op::GetLapic, lint0(&page)).map(|_| page)
        }

        /// The call's argument is LVT LINT0 as written.
        fn set_lapic(&self, lapic: &LapicState) -> Answer<()> {
            self.call(Op::SetLapic, lint0(lapic))?;
            self.set_lapic_page(*lapic);
            Ok(())
        }
    }

    /// LVT LINT0 (offset 0x350) of a LAPIC state page.
    pub fn lint0(page: &LapicState) -> u64 {
        let b = |i: usize| page.regs[0x350 + i] as u8 as u64;
        b(0) | b(1) << 8 | b(2) << 16 | b(3) << 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_translation_memo_starts_untried_and_keeps_what_it_learned() {
        let m = TranslateMemo::new();
        assert_eq!(m.get(), TranslatePath::Untried);
        m.set(TranslatePath::Hypercall);
        assert_eq!(m.get(), TranslatePath::Hypercall);
        m.set(TranslatePath::Ioctl);
        assert_eq!(m.get(), TranslatePath::Ioctl);
    }

    #[test]
    fn a_refused_intercept_is_recorded_once_per_msr() {
        let r = RefusedIntercept {
            msr: 0xdead_0001,
            reason: "AccessDenied".into(),
        };
        assert!(record_refused(&r));
        assert!(!record_refused(&r));
        let seen = kernel_paths().refused_intercepts;
        assert_eq!(seen.iter().filter(|o| o.msr == r.msr).count(), 1);
    }

    #[test]
    fn errnos_are_described_by_name_and_text() {
        let d = describe(&MshvError::from(libc::ENOTTY));
        assert!(d.starts_with("ENOTTY 25: "), "{d}");
        let h = describe(&fake::status(
            HVCALL_INSTALL_INTERCEPT,
            HV_STATUS_ACCESS_DENIED,
        ));
        assert!(h.contains("AccessDenied"), "{h}");
    }
}
