//! A simulated vCPU: the processor (`sim-cpu`) run until an intercept, with MSHV's
//! semantics around it (register page, exit messages, counters, cancel, deadlines).

use crate::apic::bus::ApicBus;
use crate::apic::LocalApic;
use crate::clock::Clock;
use crate::env::SimEnv;
use crate::exec_lock::{ExecLock, Held};
use crate::{exits, pagesync, registers, SimConfig};
use hv_core::backend::check_batch;
use hv_core::{
    Canceller, Counters, Exit, ExitMessage, HostRegion, HvError, RegisterPageMode, RegisterPagePtr,
    RegisterValue, Result, RunLimits, VcpuBackend,
};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use mshv_bindings::*;
use sim_cpu::paging::Access;
use sim_cpu::phys::{PhysMap, Target};
use sim_cpu::{Cpu, ExitInstruction, Processor, RunEnd, EVENT_MASKABLE, EVENT_URGENT};
use std::ops::ControlFlow;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub struct SimVcpu {
    index: u32,
    pub(crate) processor: Processor,
    config: Arc<SimConfig>,
    memory: Arc<crate::vm::SharedMap>,
    snapshot: Arc<PhysMap>,
    page: Option<(Arc<HostRegion>, RegisterPagePtr)>,
    counters: Counters,
    canceller: Canceller,
    pub(crate) flush_pending: bool,
    /// CPUID answers the VMM registered (HVCALL_REGISTER_INTERCEPT_RESULT's model).
    cpuid: Vec<hv_core::CpuidResult>,
    /// The local APIC the hypervisor emulates for this VP, and the partition's bus.
    pub(crate) apic: Arc<LocalApic>,
    bus: Arc<ApicBus>,
    pub(crate) clock: Arc<Clock>,
    /// The partition's execution lock: one vCPU executes at a time (see `exec_lock`).
    exec: Arc<ExecLock>,
    /// The guest's TSC minus guest time (a WRMSR to IA32_TSC moves it).
    pub(crate) tsc_offset: i64,
    /// PAE PDPTEs a restored state had loaded: the next flush keeps them rather than
    /// reading them from memory again.
    pub(crate) restore_pdptes: Option<[u64; 4]>,
    /// The exceptions behind the last run's triple fault ([`VcpuBackend::triple_fault`]).
    triple_fault: Option<hv_core::TripleFault>,
    /// Digests of each run's end while recorded ([`VcpuBackend::record_exits`]).
    exit_digests: Option<Vec<[u64; 2]>>,
}

impl SimVcpu {
    pub(crate) fn new(
        index: u32,
        config: Arc<SimConfig>,
        memory: Arc<crate::vm::SharedMap>,
        bus: Arc<ApicBus>,
        clock: Arc<Clock>,
        exec: Arc<ExecLock>,
    ) -> Result<Self> {
        // The page exists only once the vCPU does, as with the real driver's mmap.
        let page = match config.register_page {
            RegisterPageMode::Off => None,
            RegisterPageMode::On | RegisterPageMode::Invalid => {
                let region = Arc::new(HostRegion::new(hv_core::PAGE_SIZE)?);
                let ptr = NonNull::new(region.as_ptr())
                    .ok_or_else(|| HvError::ioctl("map register page", ENOMEM))?;
                // SAFETY: the region is a live, page-aligned 4 KiB mapping owned next to the
                // pointer in `self.page`, so it outlives every use of the pointer.
                let ptr = unsafe { RegisterPagePtr::new(ptr) };
                Some((region, ptr))
            }
        };
        let mut processor = Processor::new(index == 0);
        if let Some(cpu) = config.cpu {
            processor.set_tier(match cpu {
                hv_core::CpuTier::Interpreter => sim_cpu::Tier::Interpreter,
                hv_core::CpuTier::Translator => sim_cpu::Tier::Translator,
            });
        }
        let apic = Arc::new(LocalApic::new(index, Arc::clone(&processor.events)));
        bus.add(Arc::clone(&apic));
        // A cancel wakes a vCPU blocked in a halt, as the driver's signal does.
        let kicked = Arc::clone(&apic);
        let canceller = Canceller::with_kick(Arc::new(move || kicked.kick()));
        Ok(SimVcpu {
            index,
            processor,
            config,
            memory,
            snapshot: Arc::new(PhysMap::default()),
            page,
            counters: Counters::default(),
            canceller,
            flush_pending: true,
            cpuid: Vec::new(),
            apic,
            bus,
            clock,
            exec,
            tsc_offset: 0,
            restore_pdptes: None,
            triple_fault: None,
            exit_digests: None,
        })
    }

    /// The architectural state (for tests and diagnostics).
    pub fn cpu(&self) -> &Cpu {
        &self.processor.cpu
    }

    fn page_valid_mode(&self) -> Option<RegisterPagePtr> {
        match (&self.page, self.config.register_page) {
            (Some((_, p)), RegisterPageMode::On) => Some(*p),
            _ => None,
        }
    }

    /// Fills the register page, when it is on, with the VP's state (CR8 from the APIC).
    fn fill_page(&self) {
        if let Some(p) = self.page_valid_mode() {
            pagesync::fill(&p, &self.processor.cpu, self.apic.lock().cr8());
        }
    }

    /// A register the vCPU keeps outside its processor's state, or None for the
    /// processor's own ([`registers::get`]): the internal activity state, and CR8,
    /// which is the local APIC's TPR[7:4] (SDM vol 3 11.8.6): one register, so a TPR
    /// the guest wrote on the APIC page reads back here, as on MSHV.
    pub(crate) fn outside_register(&self, id: u32) -> Option<RegisterValue> {
        if id == hv_register_name_HV_REGISTER_INTERNAL_ACTIVITY_STATE {
            Some([self.activity_state(), 0])
        } else if id == hv_register_name_HV_X64_REGISTER_CR8 {
            Some([self.apic.lock().cr8(), 0])
        } else {
            None
        }
    }

    /// Writes the exit's message; `from_run`: the processor's last run raised it (its
    /// instruction is [`Processor::exit_instruction`]), else no instruction did: the
    /// delivery of a pending event the VMM wrote did.
    fn finish(&mut self, msg: &mut ExitMessage, exit: &sim_cpu::Exit, from_run: bool) {
        let none = ExitInstruction {
            in_event_delivery: true,
            ..ExitInstruction::default()
        };
        let ins = if from_run {
            &self.processor.exit_instruction
        } else {
            &none
        };
        if let sim_cpu::Exit::Shutdown(cause) = exit {
            let first = cause.first;
            self.triple_fault = Some(hv_core::TripleFault {
                vectors: cause.vectors().to_vec(),
                error_code: first.error_code,
                cr2: first.cr2,
            });
        }
        let cr8 = self.apic.lock().cr8();
        let t = exits::build(msg, &self.processor.cpu, cr8, self.index, exit, ins);
        self.fill_page();
        self.counters.count_exit(t);
        // The exit takes guest time, as on hardware (see EXIT_COST_NS); the stops of the
        // hypervisor's own debugger (exception intercepts) take none: the guest must not
        // see time pass because someone is stepping through it.
        if self.clock.deterministic() && t != hv_core::message::HVMSG_X64_EXCEPTION_INTERCEPT {
            self.processor.cpu.tsc += crate::clock::EXIT_COST_NS;
            self.clock.advance_to(self.index, self.processor.cpu.tsc);
        }
    }

    /// The error for an instruction the processor lacks, naming it and its address.
    fn unsupported(&self, ins: &ExitInstruction) -> HvError {
        let cpu = &self.processor.cpu;
        let bytes = &ins.bytes[..ins.available as usize];
        let mut decoder = Decoder::with_ip(cpu.bitness(), bytes, cpu.rip, DecoderOptions::NONE);
        let i = decoder.decode();
        let mut text = String::new();
        IntelFormatter::new().format(&i, &mut text);
        let len = (i.len()).min(bytes.len());
        HvError::UnsupportedInstruction {
            rip: cpu.rip,
            text,
            bytes: bytes[..len]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Delivers the event the VMM left in `HV_REGISTER_PENDING_EVENT0`, as the hypervisor
/// does at resume; a triple fault is an unrecoverable exception. An ExtINT waits until
/// the guest takes interrupts (IF set, no interrupt shadow) at the start of a later run,
/// as an external interrupt does (OpenHCL writes one only when its
/// InterruptionDeliverable notification said it can be taken). A halted vCPU stays
/// halted with its event pending, as the hypervisor delays it (OpenVMM's WHP
/// `inject_extint` clears the halt for that reason).
fn deliver_pending(
    processor: &mut Processor,
    mem: &PhysMap,
    env: &mut SimEnv,
) -> Option<sim_cpu::Exit> {
    let raw = processor.cpu.pending_event;
    // Only valid events are ever stored (set_registers checks them).
    let event = match hv_core::PendingEvent::decode(raw) {
        Ok(Some(e)) => e,
        _ => return None,
    };
    let (vector, error_code) = match event {
        hv_core::PendingEvent::Exception(e) => (e.vector, e.error_code),
        hv_core::PendingEvent::ExtInt { vector } => {
            let cpu = &processor.cpu;
            if cpu.flags.bits & sim_cpu::flags::IF == 0 || cpu.shadow.interrupts {
                return None;
            }
            (vector, None)
        }
    };
    processor.cpu.pending_event = [0, 0];
    processor.inject(mem, env, vector, error_code).err()
}

/// Why the processor's run in a slice of [`SimVcpu::run`] stopped early.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Cancelled,
    Timeout,
    /// Real time reached a timer or the VMM's guest deadline: look again.
    Due,
    /// The slice is over and another vCPU waits for the execution lock.
    HandOver,
    /// The guest spins (PAUSE) while another vCPU executes: its turn is over
    /// ([`RunLimits::yield_on_pause`]).
    Yield,
}

impl SimVcpu {
    /// Guest time for this vCPU now (what its APIC timer counts against).
    pub(crate) fn now(&self) -> u64 {
        if self.clock.deterministic() {
            self.processor.cpu.tsc
        } else {
            self.clock.now()
        }
    }

    /// INIT (SDM vol 3 10.4.2, Table 10-1): the processor to its INIT state — the x87,
    /// SSE, MTRR and APIC-base state kept — and its APIC reset but for the id; an AP then
    /// waits for a start-up IPI, the BSP starts at the reset vector.
    fn init(&mut self) {
        let old = self.processor.cpu.clone();
        let bsp = old.apic_base & (1 << 8) != 0;
        let mut cpu = Cpu::reset(sim_cpu::cpuid::SIGNATURE, bsp);
        cpu.fpu = old.fpu;
        cpu.xmm = old.xmm;
        cpu.mxcsr = old.mxcsr;
        // PKRU is XSAVE-managed user state like them, which INIT leaves alone (KVM's
        // kvm_vcpu_reset zeroes no such component on INIT); IA32_PKRS, an MSR, resets.
        cpu.pkru = old.pkru;
        cpu.apic_base = old.apic_base;
        cpu.msr.mtrr_def_type = old.msr.mtrr_def_type;
        cpu.msr.mtrr_fixed = old.msr.mtrr_fixed;
        cpu.msr.mtrr_var = old.msr.mtrr_var;
        cpu.msr.pat = old.msr.pat;
        cpu.tsc = old.tsc;
        self.processor.cpu = cpu;
        let mut s = self.apic.lock();
        let id = s.id;
        // A start-up IPI that came with the INIT stays for the wait it begins.
        let sipi = s.sipi_pending;
        let enabled = s.apic_enabled;
        *s = crate::apic::ApicState::reset(id);
        s.apic_enabled = enabled;
        s.startup_suspend = !bsp;
        s.sipi_pending = sipi.filter(|_| !bsp);
        self.apic.events.store(s.events(), Ordering::Release);
        drop(s);
        self.flush_pending = true;
    }

    /// `HV_REGISTER_INTERNAL_ACTIVITY_STATE`: waiting for SIPI, halted.
    pub(crate) fn activity_state(&self) -> u64 {
        let mut v = 0;
        if self.apic.lock().startup_suspend {
            v |= ACTIVITY_STARTUP_SUSPEND;
        }
        if self.processor.cpu.halted {
            v |= ACTIVITY_HALT_SUSPEND;
        }
        v
    }

    /// A start-up IPI: real mode at `vector` << 12 (SDM vol 3 10.4.4.1, 11.6.1).
    fn sipi(&mut self, vector: u8) {
        let cpu = &mut self.processor.cpu;
        cpu.seg[sim_cpu::state::CS] = sim_cpu::Segment::real((vector as u16) << 8, 0x9b);
        cpu.rip = 0;
        cpu.halted = false;
        let mut s = self.apic.lock();
        s.startup_suspend = false;
        self.apic.events.store(s.events(), Ordering::Release);
        drop(s);
        self.flush_pending = true;
    }

    /// Blocks the calling thread until the APIC has news, `until` (host time) comes, or
    /// a cancel.
    fn block(&self, until: Option<Instant>) {
        let guard = self.apic.sleep.lock().unwrap_or_else(|p| p.into_inner());
        if self.processor.events.load(Ordering::Acquire) != 0 || self.canceller.is_cancelled() {
            return;
        }
        match until {
            Some(t) => {
                let wait = t.saturating_duration_since(Instant::now());
                drop(self.apic.wake.wait_timeout(guard, wait));
            }
            None => drop(self.apic.wake.wait(guard)),
        }
    }

    /// A cancel or the run's deadline, as the run looks at them between slices and halts.
    fn stop_requested(&self, limits: &RunLimits) -> Option<Exit> {
        if self.canceller.take() {
            return Some(Exit::Cancelled);
        }
        limits
            .deadline
            .is_some_and(|d| Instant::now() >= d)
            .then_some(Exit::Timeout)
    }

    /// The run itself: processor slices between timers, halts that wait or leap, the
    /// hypervisor's own INIT and SIPI handling; returns at the first exit for the VMM.
    /// Its steps are named so that another execution tier (a translator) can share all
    /// but the slice's execution: [`Self::apply_state_changes`], [`Self::guest_deadline`],
    /// [`Self::tick_apic`], [`Self::wait_in_halt`], the slice, [`Self::after_slice`].
    fn run_slices(
        &mut self,
        msg: &mut ExitMessage,
        limits: &RunLimits,
        cpuid: &[hv_core::CpuidResult],
        held: &mut Held<'_>,
    ) -> Result<Exit> {
        let det = self.clock.deterministic();
        if det {
            // Catch up with the partition's time (another vCPU may have run or leapt).
            let t = self.clock.now().max(self.processor.cpu.tsc);
            self.processor.cpu.tsc = t;
        }
        let mut budget = limits.max_instructions.unwrap_or(u64::MAX);
        let mut first = true;
        let paused = std::cell::Cell::new(false);
        let due = std::cell::Cell::new(false);
        loop {
            self.apply_state_changes();
            let now = self.now();
            let guest_deadline = self.guest_deadline(limits);
            if guest_deadline.is_some_and(|d| now >= d) {
                return Ok(Exit::Clock);
            }
            let (timer, asleep) = self.tick_apic(now);
            if let Some(flow) = self.wait_in_halt(limits, held, now, timer, asleep, guest_deadline)
            {
                match flow {
                    ControlFlow::Continue(()) => continue,
                    ControlFlow::Break(r) => return r,
                }
            }
            self.apic
                .wake_at
                .store(crate::apic::RUNNING, Ordering::Release);
            // A slice: up to the next timer or guest deadline on the deterministic clock.
            let mut slice = budget;
            let next = [timer, guest_deadline].into_iter().flatten().min();
            if det {
                if let Some(n) = next {
                    slice = slice.min(n.saturating_sub(now).max(1));
                }
            }
            // The slice's execution: the one step an execution tier does its own way.
            // Borrowed, not cloned: an Arc's count is an atomic, paid on every exit.
            let clock = &*self.clock;
            due.set(false);
            let mut env = SimEnv {
                paused: &paused,
                slice_end: if det { next } else { None },
                due: &due,
                config: &self.config,
                cpuid,
                apic_id: self.index,
                apic: &self.apic,
                bus: &self.bus,
                clock: &self.clock,
                tsc_offset: &mut self.tsc_offset,
            };
            let snapshot = &*self.snapshot;
            if first {
                first = false;
                if let Some(exit) = deliver_pending(&mut self.processor, snapshot, &mut env) {
                    self.finish(msg, &exit, false);
                    return Ok(Exit::Message);
                }
            }
            let canceller = &self.canceller;
            let deadline = limits.deadline;
            let rt_due = if det { None } else { next };
            let mut stopped = None;
            let hand_over = &*held;
            let yield_on_pause = limits.yield_on_pause;
            let (bus, me) = (&self.bus, self.index);
            let mut poll = || {
                if canceller.is_cancelled() {
                    stopped = Some(Stopped::Cancelled);
                    return true;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    stopped = Some(Stopped::Timeout);
                    return true;
                }
                // Real time reached a timer; or (deterministic) PAUSEs carried the TSC to it.
                if rt_due.is_some_and(|d| clock.now() >= d) || due.get() {
                    stopped = Some(Stopped::Due);
                    return true;
                }
                // A guest spinning (PAUSE) while another vCPU waits for the lock hands it
                // over at once, as pause-loop exiting lets a hypervisor reschedule; a
                // busy one at the end of its slice.
                let spun = paused.replace(false);
                if spun && hand_over.contended() || hand_over.should_hand_over() {
                    stopped = Some(Stopped::HandOver);
                    return true;
                }
                if spun && yield_on_pause && bus.another_running(me) {
                    stopped = Some(Stopped::Yield);
                    return true;
                }
                false
            };
            let before = self.processor.instructions;
            let end = self.processor.run(snapshot, &mut env, slice, &mut poll);
            budget = budget.saturating_sub(self.processor.instructions - before);
            if det {
                self.clock.advance_to(self.index, self.processor.cpu.tsc);
            }
            if let ControlFlow::Break(r) = self.after_slice(end, stopped, budget, msg, limits, held)
            {
                return r;
            }
        }
    }

    /// Step: what the VMM changed since the last slice (registers the caches depend on,
    /// a restored state's PDPTEs) reaches the processor's caches.
    fn apply_state_changes(&mut self) {
        if self.flush_pending {
            self.flush_pending = false;
            self.processor.state_changed(&self.snapshot);
            if let Some(p) = self.restore_pdptes.take() {
                self.processor.cpu.pdpte = p;
            }
        }
    }

    /// Step: the run's own guest deadline, or the VMM's next device timer, if sooner.
    fn guest_deadline(&self, limits: &RunLimits) -> Option<u64> {
        [limits.guest_deadline, self.clock.device_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Step: the local APIC's timers at guest time `now`: when its next timer is due,
    /// and whether the vCPU waits for a start-up IPI.
    fn tick_apic(&self, now: u64) -> (Option<u64>, bool) {
        match self.apic.quiet(now) {
            // The common case between two exits: nothing pending, nothing due.
            Some(timer) => (timer, false),
            None => {
                let mut s = self.apic.lock();
                let t = s.tick(now);
                s.reslice = false;
                self.apic.events.store(s.events(), Ordering::Release);
                (t, s.startup_suspend)
            }
        }
    }

    /// Step: a vCPU halted (or waiting for SIPI) with nothing to wake it waits: leaps
    /// (deterministic, every vCPU waiting), blocks, or ends the run. `None`: it runs.
    fn wait_in_halt(
        &mut self,
        limits: &RunLimits,
        held: &mut Held<'_>,
        now: u64,
        timer: Option<u64>,
        asleep: bool,
        guest_deadline: Option<u64>,
    ) -> Option<ControlFlow<Result<Exit>>> {
        let cpu = &self.processor.cpu;
        let events = self.processor.events.load(Ordering::Acquire);
        let interruptible = cpu.flags.bits & sim_cpu::flags::IF != 0;
        let wake = events & EVENT_URGENT != 0 || events & EVENT_MASKABLE != 0 && interruptible;
        if !(cpu.halted || asleep) || wake {
            return None;
        }
        if let Some(stop) = self.stop_requested(limits) {
            return Some(ControlFlow::Break(Ok(stop)));
        }
        if !interruptible && !asleep && !limits.block_on_halt {
            // Halted with interrupts disabled: only an NMI, INIT or SIPI ends it, which
            // no timer of this partition sends by itself. A run that may not block says
            // so now, rather than leap from one device timer to the next for ever. The
            // page shows the halted state, as at an intercept (MSHV never reports this
            // stop: there the run waits, and the page is stale after its timeout).
            self.fill_page();
            return Some(ControlFlow::Break(Ok(Exit::Halted)));
        }
        // With interrupts disabled no timer of the APIC can wake it (only the VMM's
        // device timers may send an NMI): it waits for those alone.
        let next = if interruptible || asleep {
            [timer, guest_deadline].into_iter().flatten().min()
        } else {
            guest_deadline
        };
        let det = self.clock.deterministic();
        if det {
            // Deterministic time leaps over a halt only when every vCPU of the partition
            // waits, and then to the earliest wake of any of them (as QEMU's icount skips
            // to the next timer when all CPUs idle): while another executes, this one's
            // time follows it instead.
            self.apic
                .wake_at
                .store(next.unwrap_or(u64::MAX), Ordering::Release);
            if let Some(t) = self.bus.earliest_wake().filter(|_| !limits.idle_sleeps) {
                if t != u64::MAX && t > now {
                    self.processor.cpu.tsc = t;
                    self.clock.advance_to(self.index, t);
                    return Some(ControlFlow::Continue(()));
                }
            }
        }
        if !limits.block_on_halt && (det || next.is_none()) {
            return Some(ControlFlow::Break(Ok(Exit::Idle)));
        }
        let until = [next.map(|n| self.clock.instant_of(n)), limits.deadline]
            .into_iter()
            .flatten()
            .min();
        // Halted: others execute meanwhile (one of them may send the wake-up IPI).
        held.released(|| self.block(until));
        Some(ControlFlow::Continue(()))
    }

    /// Step: what a slice's end means: an exit for the VMM, the run's end (a cancel,
    /// the budget, the deadline), a halt, INIT or SIPI handled here, or another slice.
    fn after_slice(
        &mut self,
        end: RunEnd,
        stopped: Option<Stopped>,
        budget: u64,
        msg: &mut ExitMessage,
        limits: &RunLimits,
        held: &mut Held<'_>,
    ) -> ControlFlow<Result<Exit>> {
        let stop = |this: &Self| match this.stop_requested(limits) {
            Some(stop) => ControlFlow::Break(Ok(stop)),
            None => ControlFlow::Continue(()),
        };
        match end {
            RunEnd::Stopped => match stopped {
                Some(Stopped::Cancelled) => {
                    self.canceller.take();
                    ControlFlow::Break(Ok(Exit::Cancelled))
                }
                Some(Stopped::Yield) => ControlFlow::Break(Ok(Exit::InstructionLimit)),
                Some(Stopped::HandOver) => {
                    held.hand_over();
                    stop(self)
                }
                // Real time reached a timer: the same look as at a slice's end below.
                Some(Stopped::Due) => stop(self),
                _ => ControlFlow::Break(Ok(Exit::Timeout)),
            },
            RunEnd::InstructionLimit => {
                if budget == 0 {
                    return ControlFlow::Break(Ok(Exit::InstructionLimit));
                }
                // A slice cut at a timer: a timer due every few hundred instructions ends
                // every slice before the processor's own poll (every 1,024) looks at
                // cancel and the deadline, so they are looked at here too (QEMU's TCG
                // looks for an exit request at every block).
                stop(self)
            }
            RunEnd::Exit(sim_cpu::Exit::Halt) => {
                // HLT waits inside the hypervisor, with interrupts enabled for an
                // interrupt, disabled for an NMI, INIT or SIPI: MSHV has no HLT intercept
                // for a partition with a local APIC (see Exit::Halted), and
                // mshv_root_main.c's run ioctl returns only for an intercept, waiting for
                // the hypervisor's kick while the VP is blocked.
                self.processor.cpu.halted = true;
                ControlFlow::Continue(())
            }
            RunEnd::Exit(sim_cpu::Exit::Init) => {
                self.init();
                ControlFlow::Continue(())
            }
            RunEnd::Exit(sim_cpu::Exit::Sipi(v)) => {
                self.sipi(v);
                ControlFlow::Continue(())
            }
            RunEnd::Exit(sim_cpu::Exit::Unsupported) => {
                self.fill_page();
                ControlFlow::Break(Err(self.unsupported(&self.processor.exit_instruction)))
            }
            RunEnd::Exit(exit) => {
                self.finish(msg, &exit, true);
                ControlFlow::Break(Ok(Exit::Message))
            }
        }
    }
}

const ENOMEM: i32 = 12;

/// `HvInternalActivityRegister` (OpenVMM hvdef): startup suspend, halt suspend.
pub(crate) const ACTIVITY_STARTUP_SUSPEND: u64 = 1 << 0;
pub(crate) const ACTIVITY_HALT_SUSPEND: u64 = 1 << 1;
pub(crate) const ACTIVITY_KNOWN: u64 = ACTIVITY_STARTUP_SUSPEND | ACTIVITY_HALT_SUSPEND;

impl VcpuBackend for SimVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn lapic(&mut self) -> Result<Vec<u8>> {
        Ok(self.lapic_page())
    }

    fn set_lapic(&mut self, lapic: &[u8]) -> Result<()> {
        self.set_lapic_page(lapic)
    }

    fn run(&mut self, msg: &mut ExitMessage, limits: &RunLimits) -> Result<Exit> {
        self.counters.runs += 1;
        self.triple_fault = None;
        if self.canceller.take() {
            return Ok(Exit::Cancelled);
        }
        if let Some(p) = self.page_valid_mode() {
            // Dirty classes are applied after this exit's set-register hypercalls, which
            // already changed the VP: a stale dirty class on the page wins, as on MSHV.
            if p.is_valid() && pagesync::apply_dirty(&p, &mut self.processor.cpu) {
                self.flush_pending = true;
            }
            p.write_u8(hv_core::page::ISVALID, 0);
        }
        // The map changes rarely: its generation says whether to take the lock (an
        // Arc clone is an atomic, paid on every exit otherwise).
        if self.memory.generation.load(Ordering::Acquire) != self.snapshot.generation {
            if let Ok(m) = self.memory.map.lock() {
                self.snapshot = Arc::clone(&m);
            }
        }
        let cpuid = std::mem::take(&mut self.cpuid);
        // Held while this run executes (and let go in its halts): vCPUs whose runs
        // overlap on host threads execute one at a time.
        let exec = Arc::clone(&self.exec);
        let mut held = exec.enter();
        let r = self.run_slices(msg, limits, &cpuid, &mut held);
        drop(held);
        self.cpuid = cpuid;
        if let (Some(log), Ok(exit)) = (self.exit_digests.as_mut(), &r) {
            log.push([
                self.processor.instructions,
                digest(exit, msg, &self.processor.cpu),
            ]);
        }
        r
    }

    fn get_registers(&mut self, ids: &[u32], out: &mut [RegisterValue]) -> Result<()> {
        check_batch(ids, out.len())?;
        self.counters.get_registers += 1;
        for (id, slot) in ids.iter().zip(out.iter_mut()) {
            *slot = match self.outside_register(*id) {
                Some(v) => v,
                None => registers::get(&self.processor.cpu, *id)?,
            };
        }
        self.counters.registers_read += ids.len() as u64;
        Ok(())
    }

    fn set_registers(&mut self, ids: &[u32], values: &[RegisterValue]) -> Result<()> {
        check_batch(ids, values.len())?;
        // Validate the whole batch first: a rejected batch changes nothing.
        let mut scratch = self.processor.cpu.clone();
        let mut flush = false;
        let mut startup_suspend = None;
        let mut cr8 = None;
        for (id, v) in ids.iter().zip(values) {
            if *id == hv_register_name_HV_X64_REGISTER_CR8 {
                cr8 = Some(v[0]);
                continue;
            }
            if *id == hv_register_name_HV_REGISTER_INTERNAL_ACTIVITY_STATE {
                if v[0] & !ACTIVITY_KNOWN != 0 || v[1] != 0 {
                    return Err(HvError::InvalidArgument(format!(
                        "internalActivityState {:#x}: only bits 0 (startup suspend) and 1 (halt suspend) exist",
                        v[0]
                    )));
                }
                startup_suspend = Some(v[0] & ACTIVITY_STARTUP_SUSPEND != 0);
                scratch.halted = v[0] & ACTIVITY_HALT_SUSPEND != 0;
                continue;
            }
            flush |= registers::set(&mut scratch, *id, *v)?;
        }
        if startup_suspend.is_some() || cr8.is_some() {
            let mut s = self.apic.lock();
            if let Some(suspend) = startup_suspend {
                s.startup_suspend = suspend;
            }
            if let Some(v) = cr8 {
                // CR8 is the APIC's TPR (SDM vol 3 11.8.6): a lower one may unmask an
                // interrupt waiting in the IRR.
                s.set_cr8(v);
            }
            self.apic.events.store(s.events(), Ordering::Release);
        }
        let (old_base, new_base) = (self.processor.cpu.apic_base, scratch.apic_base);
        if new_base != old_base {
            // The VMM's write is the architectural one (a guest's WRMSR): the APIC's
            // mode (x2APIC, the IPI destinations it matches) and ID follow it.
            self.apic.set_base(old_base, new_base);
        }
        self.counters.set_registers += 1;
        self.counters.registers_written += ids.len() as u64;
        self.processor.cpu = scratch;
        self.flush_pending |= flush;
        if flush {
            // Control registers set after a restore load their own PDPTEs.
            self.restore_pdptes = None;
        }
        Ok(())
    }

    fn translate_gva(&mut self, gva: u64, flags: u64) -> Result<(u64, u32)> {
        self.counters.translate_gva += 1;
        let access = if flags & HV_TRANSLATE_GVA_VALIDATE_WRITE as u64 != 0 {
            Access::Write
        } else if flags & HV_TRANSLATE_GVA_VALIDATE_EXECUTE as u64 != 0 {
            Access::Execute
        } else {
            Access::Read
        };
        let user = flags & HV_TRANSLATE_GVA_USER_ACCESS as u64 != 0;
        let set_bits = flags & HV_TRANSLATE_GVA_SET_PAGE_TABLE_BITS as u64 != 0;
        let mem = self
            .memory
            .map
            .lock()
            .map(|m| Arc::clone(&m))
            .unwrap_or_default();
        if std::mem::take(&mut self.flush_pending) {
            // Control registers set since the last run (PAE's PDPTEs load with them).
            self.processor.state_changed(&mem);
            if let Some(p) = self.restore_pdptes.take() {
                self.processor.cpu.pdpte = p;
            }
        }
        match self.processor.translate(&mem, gva, access, user, set_bits) {
            Ok(gpa) => {
                let code = match mem.lookup(gpa) {
                    Target::Ram { .. } => hv_translate_gva_result_code_HV_TRANSLATE_GVA_SUCCESS,
                    _ => hv_translate_gva_result_code_HV_TRANSLATE_GVA_GPA_UNMAPPED,
                };
                Ok((gpa, code))
            }
            Err(pf) if pf.error_code & 1 != 0 => Ok((
                0,
                hv_translate_gva_result_code_HV_TRANSLATE_GVA_PRIVILEGE_VIOLATION,
            )),
            Err(_) => Ok((
                0,
                hv_translate_gva_result_code_HV_TRANSLATE_GVA_PAGE_NOT_PRESENT,
            )),
        }
    }

    fn set_cpuid_results(&mut self, results: &[hv_core::CpuidResult]) -> Result<()> {
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

    fn instructions(&self) -> u64 {
        self.processor.instructions
    }

    fn triple_fault(&self) -> Option<hv_core::TripleFault> {
        self.triple_fault.clone()
    }

    fn state(&mut self) -> Result<hv_core::VcpuState> {
        self.save_state()
    }

    fn set_state(&mut self, state: &hv_core::VcpuState) -> Result<()> {
        self.restore_state(state)
    }

    fn set_debug_state(&mut self, debug: &hv_core::DebugState) -> Result<()> {
        self.debug(debug)
    }

    fn translator_stats(&self) -> Option<hv_core::TranslatorStats> {
        Some(self.processor.translator_stats())
    }

    fn record_exits(&mut self, on: bool) -> Result<()> {
        self.exit_digests = on.then(Vec::new);
        Ok(())
    }

    fn exit_digests(&self) -> Vec<[u64; 2]> {
        self.exit_digests.clone().unwrap_or_default()
    }
}

/// A run's end as the execution tiers must agree on it: how it ended, the message
/// (on an intercept), and the architectural registers a VMM or the guest can see
/// (RFLAGS as the lazy record gives it, not the record; the TSC, which the
/// deterministic clock ties to the instructions retired). SipHash with its fixed keys:
/// the same in every process.
fn digest(exit: &Exit, msg: &ExitMessage, cpu: &sim_cpu::Cpu) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::mem::discriminant(exit).hash(&mut h);
    if *exit == Exit::Message {
        msg.bytes.hash(&mut h);
    }
    cpu.gpr.hash(&mut h);
    cpu.rip.hash(&mut h);
    cpu.rflags().hash(&mut h);
    for s in cpu.seg.iter().chain([&cpu.tr, &cpu.ldtr]) {
        (s.base, s.limit, s.selector, s.attributes).hash(&mut h);
    }
    (cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.cr8, cpu.efer).hash(&mut h);
    (cpu.tsc, cpu.halted, cpu.pending_event, cpu.mxcsr).hash(&mut h);
    cpu.xmm.hash(&mut h);
    h.finish()
}

impl Drop for SimVcpu {
    /// The page's memory goes with the vCPU, even where JavaScript still holds a buffer.
    fn drop(&mut self) {
        if let Some((region, _)) = &self.page {
            region.retire();
        }
    }
}
