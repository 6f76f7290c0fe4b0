//! The traits both backends implement: a hypervisor makes VMs, a VM maps memory and
//! makes vCPUs, a vCPU runs until an intercept and answers register hypercalls.

use crate::counters::Counters;
use crate::error::Result;
use crate::memory::HostRegion;
use crate::message::ExitMessage;
use crate::page::RegisterPagePtr;
use crate::regs::RegisterValue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which hypervisor is underneath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The Microsoft Hypervisor through `/dev/mshv`.
    Mshv,
    /// The built-in software hypervisor.
    Sim,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Mshv => "mshv",
            BackendKind::Sim => "sim",
        }
    }
}

/// Whether vCPUs get a register page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegisterPageMode {
    /// Map it and let the hypervisor mark it valid at each intercept (the default).
    #[default]
    On,
    /// Do not map it: every register goes through hypercalls.
    Off,
    /// Map it but never mark it valid (sim only): exercises the fallback path.
    Invalid,
}

/// Options for a new VM.
#[derive(Debug, Clone, Default)]
pub struct VmConfig {
    pub register_page: RegisterPageMode,
    /// Expose the Hyper-V enlightenments (SynIC, synthetic timers, the hypercall page)
    /// to the guest: off by default, as Hyperlight advises (mshv-ioctls' plain
    /// `create_vm()` turns them on). The sim models none of them and refuses it.
    pub hyperv: bool,
    /// MSRs whose RDMSR/WRMSR exit to the VMM.
    pub intercept_msrs: Vec<u32>,
    /// What an access to an MSR the hypervisor does not implement does.
    pub unknown_msr: UnknownMsr,
    /// How guest time passes: `None` takes the backend's own (the sim's is
    /// deterministic, MSHV's is real time).
    pub clock: Option<ClockMode>,
    /// Which of the sim's tiers executes guest code: `None` takes the backend's own
    /// (the sim's interpreter). MSHV runs guest code on the processor and refuses it.
    pub cpu: Option<CpuTier>,
}

/// Which of the sim's processor tiers executes guest code (issue #31).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuTier {
    /// Every instruction through its interpreter handler.
    Interpreter,
    /// Hot blocks of 64-bit code compiled to host code, the interpreter for the rest;
    /// exits, instruction counts and state are the interpreter's, bit for bit.
    Translator,
}

/// How guest time passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// Guest time is the host's: the TSC and the APIC timer follow the host clock.
    Realtime,
    /// Guest time advances one nanosecond per retired instruction (and leaps over
    /// halts to the next timer): the same guest with the same inputs makes the same
    /// exits, run after run, as QEMU's icount does (sim only).
    Deterministic,
}

/// The hypervisor's answer to RDMSR/WRMSR of an MSR it does not implement (and that is
/// not intercepted by number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownMsr {
    /// Inject #GP(0), as hardware does (MSHV's default).
    #[default]
    Fault,
    /// Reads return 0 and writes are dropped, inside the hypervisor (no exit).
    Ignore,
    /// Exit to the VMM with an MSR intercept message (sim only: MSHV has no such mode).
    Exit,
}

/// Host memory mapped into the guest.
#[derive(Debug, Clone)]
pub struct MemoryMapping {
    pub gpa: u64,
    pub region: Arc<HostRegion>,
    pub writable: bool,
    pub executable: bool,
}

impl MemoryMapping {
    /// One past the last guest physical address.
    pub fn end(&self) -> u64 {
        self.gpa + self.region.len() as u64
    }
}

/// Bounds on one `run()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunLimits {
    /// Stop after this many guest instructions (sim only; the real backend refuses it).
    pub max_instructions: Option<u64>,
    /// Stop at this moment (the sim checks its clock at least every 1,024 guest
    /// instructions or string iterations).
    pub deadline: Option<Instant>,
    /// Stop when guest time (ns) reaches this: a device timer of the VMM is due (sim
    /// only; [`Exit::Clock`]).
    pub guest_deadline: Option<u64>,
    /// Whether a vCPU halted with interrupts enabled may block the calling thread until
    /// an interrupt (as MSHV does); if not, the sim returns [`Exit::Idle`] instead.
    pub block_on_halt: bool,
    /// End the run with [`Exit::InstructionLimit`] soon after the guest executes PAUSE
    /// (a spin-wait) while another vCPU of the partition is executing (sim only): a
    /// turn-by-turn scheduler then hands the turn to the vCPU the spinner waits for,
    /// rather than let it spin out its quantum (pause-loop exiting's idea, at points in
    /// the instruction stream a deterministic replay repeats).
    pub yield_on_pause: bool,
    /// Deterministic clock: when every vCPU waits in a halt, end the run with
    /// [`Exit::Idle`] rather than leap guest time to the next timer, so the VMM can let
    /// that time pass on the host's clock first (QEMU's `-icount sleep=on`) and then
    /// set guest time forward itself (sim only).
    pub idle_sleeps: bool,
}

impl RunLimits {
    /// Limits that end `timeout` from now; a timeout too long to represent means none.
    pub fn with_timeout(max_instructions: Option<u64>, timeout: Option<Duration>) -> Self {
        RunLimits {
            max_instructions,
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
            ..RunLimits::default()
        }
    }
}

/// Why `run()` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// An intercept: the message buffer holds the `hv_message`.
    Message,
    /// `cancel()` was called.
    Cancelled,
    /// The instruction budget ran out.
    InstructionLimit,
    /// The deadline passed.
    Timeout,
    /// Guest time reached [`RunLimits::guest_deadline`].
    Clock,
    /// The vCPU is halted with interrupts enabled and nothing can wake it during this
    /// run (sim only, with [`RunLimits::block_on_halt`] off): it resumes waiting at the
    /// next run.
    Idle,
    /// The vCPU is halted with interrupts disabled (sim only, with
    /// [`RunLimits::block_on_halt`] off): only an NMI, INIT or SIPI wakes it, or the VMM
    /// clearing halt suspend in `HV_REGISTER_INTERNAL_ACTIVITY_STATE`. MSHV sends no
    /// intercept for a HLT in a partition with a local APIC: the VP waits in the
    /// hypervisor (there is no HLT intercept type, `hvgdk_mini.h` `hv_intercept_type`;
    /// a `cli; hlt` in a guest "will just hang the guest", qemu-devel, "[PATCH v2 25/27]
    /// target/i386/mshv: Handle HVMSG_X64_HALT vm exit", July 2025). A run that may
    /// not block reports it instead.
    Halted,
}

/// Interrupts a running vCPU from another thread; a cancel issued while the vCPU is
/// not running makes its next `run()` return at once (like KVM's `immediate_exit`).
#[derive(Clone, Default)]
pub struct Canceller {
    flag: Arc<AtomicBool>,
    kick: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Canceller({})", self.flag.load(Ordering::Relaxed))
    }
}

impl Canceller {
    /// A canceller that also calls `kick` to interrupt a blocked run.
    pub fn with_kick(kick: Arc<dyn Fn() + Send + Sync>) -> Self {
        Canceller {
            flag: Arc::default(),
            kick: Some(kick),
        }
    }

    /// Requests the exit.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(kick) = &self.kick {
            kick();
        }
    }

    /// Whether a cancel is pending.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Consumes a pending cancel, returning whether there was one.
    pub fn take(&self) -> bool {
        // Looked at first: the swap is a locked instruction, paid on every run otherwise.
        self.flag.load(Ordering::Relaxed) && self.flag.swap(false, Ordering::SeqCst)
    }
}

/// A hypervisor: the entry point of a backend.
pub trait HvBackend: Send + Sync {
    fn kind(&self) -> BackendKind;
    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn VmBackend>>;
}

/// A partition.
pub trait VmBackend: Send {
    /// Maps host memory at a guest physical address. Rejects overlaps and unaligned maps.
    fn map_memory(&mut self, mapping: MemoryMapping) -> Result<()>;
    /// Unmaps the region that starts at `gpa`, returning it.
    fn unmap_memory(&mut self, gpa: u64) -> Result<MemoryMapping>;
    /// Makes accesses to `[gpa, gpa + size)` exit to the VMM even where RAM is mapped.
    fn intercept_range(&mut self, gpa: u64, size: u64) -> Result<()>;
    /// Creates vCPU `index`; its register page, if any, is mapped after the vCPU exists.
    fn create_vcpu(&mut self, index: u8) -> Result<Box<dyn VcpuBackend>>;
    /// Where interrupt requests for this VM go, from any thread.
    fn interrupts(&self) -> Arc<dyn crate::interrupt::Interrupts>;
    /// Starts logging the pages guest writes reach, every page of every region mapped
    /// now clean (again, when it was logging). The VMM's own writes are its to note.
    fn start_dirty_log(&mut self) -> Result<()>;
    /// The pages of the region mapped at `gpa` that guest writes reached since the log
    /// started or was last taken for it: a bit per 4 KiB page, LSB first in u64 words
    /// (MSHV's `get_dirty_log` bitmap). They are clean again. Taken between runs.
    fn take_dirty_log(&mut self, gpa: u64) -> Result<Vec<u64>>;
    /// Stops logging.
    fn stop_dirty_log(&mut self) -> Result<()>;
}

/// A virtual processor.
pub trait VcpuBackend: Send {
    fn index(&self) -> u32;
    /// The local APIC's state page ([`crate::state::LAPIC_STATE_SIZE`] bytes, the APIC's
    /// MMIO layout): MSHV's `MSHV_GET_VP_STATE` with `MSHV_VP_STATE_LAPIC`. Between runs.
    /// The default takes it from [`VcpuBackend::state`].
    fn lapic(&mut self) -> Result<Vec<u8>> {
        Ok(self.state()?.lapic)
    }
    /// Replaces the local APIC's state page (`MSHV_SET_VP_STATE`), the rest of the vCPU
    /// as it is: what CH's and QEMU's `set_lint` write (see [`crate::lapic`]). The
    /// default goes through [`VcpuBackend::state`] and [`VcpuBackend::set_state`].
    fn set_lapic(&mut self, lapic: &[u8]) -> Result<()> {
        crate::state::check_lapic(lapic)?;
        let mut state = self.state()?;
        state.lapic = lapic.to_vec();
        self.set_state(&state)
    }
    /// Runs until an intercept, a cancel or the budget; fills `msg` on [`Exit::Message`].
    fn run(&mut self, msg: &mut ExitMessage, limits: &RunLimits) -> Result<Exit>;
    /// One batched get-register hypercall.
    fn get_registers(&mut self, ids: &[u32], out: &mut [RegisterValue]) -> Result<()>;
    /// One batched set-register hypercall.
    fn set_registers(&mut self, ids: &[u32], values: &[RegisterValue]) -> Result<()>;
    /// One GVA translation hypercall: (gpa, `hv_translate_gva_result_code`).
    fn translate_gva(&mut self, gva: u64, flags: u64) -> Result<(u64, u32)>;
    /// Replaces the CPUID answers registered for this vCPU: the guest's CPUID is then
    /// answered from them by the hypervisor, without an exit.
    fn set_cpuid_results(&mut self, results: &[crate::CpuidResult]) -> Result<()>;
    /// The register page, when mapped: a pointer for this thread's own accesses.
    fn register_page(&self) -> Option<RegisterPagePtr>;
    /// The mapping behind [`VcpuBackend::register_page`], for holders that may outlive
    /// the vCPU (a JavaScript `ArrayBuffer`): it stays mapped while any holder has it,
    /// and the vCPU retires it when it goes.
    fn register_page_region(&self) -> Option<Arc<HostRegion>>;
    /// A handle that interrupts `run()` from any thread.
    fn canceller(&self) -> Canceller;
    fn counters(&self) -> &Counters;
    fn reset_counters(&mut self);
    /// The vCPU's whole state (every register, the MSRs of
    /// [`crate::state::STATE_MSRS`], the local APIC, XSAVE where the backend has more
    /// than the registers carry, and what the backend needs to resume exactly). Taken
    /// between runs.
    fn state(&mut self) -> Result<crate::state::VcpuState>;
    /// Replaces the vCPU's whole state with one [`VcpuBackend::state`] returned (on this
    /// backend kind); a state that does not fit changes nothing.
    fn set_state(&mut self, state: &crate::state::VcpuState) -> Result<()>;
    /// Sets where the vCPU stops for the VMM and whether it steps (see
    /// [`crate::state::DebugState`]); the default state debugs nothing.
    fn set_debug_state(&mut self, debug: &crate::state::DebugState) -> Result<()>;
    /// Guest instructions retired so far (sim; 0 where not counted).
    fn instructions(&self) -> u64 {
        0
    }
    /// The exceptions behind the last run's unrecoverable-exception exit, when the
    /// backend saw them (the sim); None otherwise (see [`crate::TripleFault`]).
    fn triple_fault(&self) -> Option<crate::TripleFault> {
        None
    }
    /// What the sim's translating tier did on this vCPU; None where there is none.
    fn translator_stats(&self) -> Option<TranslatorStats> {
        None
    }
    /// Starts (clearing what was recorded) or stops recording a digest of each run's
    /// end ([`VcpuBackend::exit_digests`]): the sim's judge of its execution tiers,
    /// which must end every run alike. Unsupported where runs are not deterministic.
    fn record_exits(&mut self, on: bool) -> Result<()> {
        let _ = on;
        Err(crate::error::HvError::Unsupported(
            "exit digests are recorded by the sim only".into(),
        ))
    }
    /// The digests recorded since [`VcpuBackend::record_exits`], one per run's end:
    /// pairs of (instructions retired, a hash of the end, the message and the
    /// registers).
    fn exit_digests(&self) -> Vec<[u64; 2]> {
        Vec::new()
    }
}

/// The sim's translating tier's figures for one vCPU (sim-cpu's translator keeps them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranslatorStats {
    /// Blocks compiled.
    pub blocks: u64,
    /// Guest instructions those blocks' compiled code covers.
    pub instructions: u64,
    /// Host code bytes emitted.
    pub bytes: u64,
    /// Time spent compiling, in nanoseconds.
    pub nanos: u64,
    /// Hot blocks left interpreted: too few of their leading instructions are covered.
    pub uncovered: u64,
    /// Compilations that failed (no executable memory); those blocks stay interpreted.
    pub failed: u64,
    /// Times the code area filled up and all compiled code was dropped.
    pub flushes: u64,
}

/// Checks the batch arguments every backend's register calls share.
pub fn check_batch(ids: &[u32], values: usize) -> Result<()> {
    use crate::error::HvError;
    if ids.is_empty() {
        return Err(HvError::InvalidArgument("register batch is empty".into()));
    }
    if ids.len() != values {
        return Err(HvError::InvalidArgument(format!(
            "register batch has {} ids but room for {} values",
            ids.len(),
            values
        )));
    }
    // Unknown ids fail here, before any hypercall, on every backend alike.
    if let Some(id) = ids.iter().find(|id| crate::regs::info(**id).is_none()) {
        return Err(HvError::UnknownRegister(*id));
    }
    Ok(())
}

/// Checks that a new mapping is page-aligned and overlaps none of `existing`.
pub fn check_mapping<'a>(
    new: &MemoryMapping,
    existing: impl IntoIterator<Item = &'a MemoryMapping>,
) -> Result<()> {
    use crate::error::HvError;
    use crate::page::PAGE_SIZE;
    if !new.gpa.is_multiple_of(PAGE_SIZE as u64) {
        return Err(HvError::InvalidArgument(format!(
            "guest physical address {:#x} is not 4 KiB aligned",
            new.gpa
        )));
    }
    if new
        .gpa
        .checked_add(new.region.len() as u64)
        .is_none_or(|end| end > MAX_GPA)
    {
        return Err(HvError::InvalidArgument(format!(
            "region at {:#x} (+{:#x}) goes beyond the guest physical address space ({MAX_GPA:#x})",
            new.gpa,
            new.region.len()
        )));
    }
    for m in existing {
        if new.gpa < m.end() && m.gpa < new.end() {
            return Err(HvError::MemoryOverlap {
                gpa: new.gpa,
                size: new.region.len() as u64,
                other: m.gpa,
                other_size: m.region.len() as u64,
            });
        }
    }
    Ok(())
}

/// The guest physical address space both backends accept: 52 bits.
pub const MAX_GPA: u64 = 1 << 52;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_batches_are_checked_before_any_hypercall() {
        let rax = crate::regs::REGISTERS[0].id;
        assert!(check_batch(&[rax], 1).is_ok());
        assert_eq!(check_batch(&[], 0).unwrap_err().code(), "EINVAL");
        assert_eq!(check_batch(&[rax], 2).unwrap_err().code(), "EINVAL");
        let e = check_batch(&[rax, 0xdead_beef], 2).unwrap_err();
        assert_eq!(e.code(), "EINVAL_REGISTER");
        assert!(e.to_string().contains("0xdeadbeef"), "{e}");
    }
}
