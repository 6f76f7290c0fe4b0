//! The processor and its run loop: find the block at CS:RIP, execute its instructions,
//! deliver the exceptions they raise, stop at exits, limits and polls.

use crate::cache::{self, CodeCache};
use crate::decode::Op;
use crate::dr::{Breakpoints, Gate, DR6_B, DR6_BS};
use crate::exec::Exec;
use crate::fault::{Exit, Fault, Stop, DB};
use crate::flags::{RF, TF};
use crate::interrupt::{self, Source};
use crate::paging::{self, Access, PageFault, Privilege};
use crate::phys::PhysMap;
use crate::state::{Cpu, Shadow, CR4_DE, CS};
use crate::tlb::Tlb;
use crate::{Env, Event, EVENT_MASKABLE, EVENT_RESLICE, EVENT_URGENT};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Instructions (or string elements) between two looks at the poll function.
pub const POLL_INTERVAL: u64 = 1024;

/// The instruction an exit happened at: its length and the code bytes at RIP (for
/// the hypervisor's intercept message). Aligned so the bytes move as one aligned
/// 16-byte word on every exit (at an odd offset, copies of it stall on store
/// forwarding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct ExitInstruction {
    pub bytes: [u8; 16],
    pub len: u8,
    /// How many of `bytes` could be fetched (fewer at an unreadable page).
    pub available: u8,
    /// The exit is an access made while delivering an event (reading the IDT or a
    /// descriptor, pushing the frame), not one of the instruction's own: the message's
    /// execution state says `interruption_pending`, and there is nothing to emulate.
    pub in_event_delivery: bool,
}

/// Why [`Processor::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The hypervisor must act on `exit`, raised by the instruction
    /// [`Processor::exit_instruction`] describes.
    Exit(Exit),
    /// `max_instructions` were executed.
    InstructionLimit,
    /// The poll function asked to stop.
    Stopped,
}

/// One x86-64 processor.
pub struct Processor {
    pub cpu: Cpu,
    tlb: Tlb,
    cache: CodeCache,
    /// Instructions retired over the processor's life.
    pub instructions: u64,
    /// The instruction the last run's exit happened at (its length and bytes, for the
    /// intercept message); empty for exits no instruction raised. Kept here rather
    /// than returned: copied out of the run at once, its bytes stall on store
    /// forwarding on every exit.
    pub exit_instruction: ExitInstruction,
    /// Set (`EVENT_*` bits) by whoever makes an event pending for this processor (its
    /// local APIC, from any thread): looked at once per block.
    pub events: Arc<AtomicU32>,
    /// The block the last run ended in, and the link key it was found under: the next
    /// run's first block is its link when the key still holds (a VMM completing an
    /// exit resumes right after the instruction).
    last: LastBlock,
    /// Where the hypervisor's debugger stops this processor (invisible to the guest).
    pub debug: Debug,
    /// The breakpoint the last run stopped at: a run that resumes there runs its
    /// instruction first.
    debug_resume: Option<u64>,
    /// The guest's breakpoints (DR0-DR3 as DR7 enables them) the last run had.
    guest_bps: Breakpoints,
    /// Debug traps (DR6 bits) of an instruction the VMM completes, or owed when the
    /// hypervisor's debugger stopped the run: delivered when the next run starts at
    /// the RIP given (where the VMM leaves a completed instruction), dropped if it
    /// starts elsewhere (see [`Processor::run`]).
    db_resume: Option<(u64, u64)>,
}

/// The hypervisor's own breakpoints and single-step, which the guest cannot see
/// (its DR0-DR7 and RFLAGS.TF are its own): KVM's `KVM_GUESTDBG_*` in a software CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Debug {
    /// Linear addresses: stop before an instruction that starts at one.
    pub breakpoints: Vec<u64>,
    /// Data ranges: stop after an instruction that accessed one (slots 0..).
    pub watchpoints: Vec<hv_core::state::Watchpoint>,
    /// Stop after each instruction (or after an event's delivery).
    pub single_step: bool,
}

impl Debug {
    fn active(&self) -> bool {
        self.single_step || !self.breakpoints.is_empty()
    }

    /// Whether a breakpoint lies in the block's bytes: only such blocks leave the
    /// plain path, so breakpoints cost nothing elsewhere.
    fn hits(&self, block: &cache::Block) -> bool {
        let len = span(block);
        self.breakpoints
            .iter()
            .any(|&b| b.wrapping_sub(block.lin) < len)
    }
}

/// RF set with nothing else keeping a block off the plain path, and no instruction
/// breakpoint that RF could suppress (RF does nothing else: SDM vol 3 18.3.1.1): RF is
/// cleared here, as the block's first instruction would, and the block runs plain.
/// Every fault pushes RF set (`interrupt::Source::Fault`), so each return from a fault
/// handler comes here; without this, the block after it would run one instruction at
/// a time. False (the block runs one instruction at a time) otherwise.
#[cold]
#[inline(never)]
fn rf_alone(x: &mut Exec, ops: u64, left: u64) -> bool {
    let alone = x.cpu.flags.bits & (TF | RF) == RF
        && !x.cpu.shadow.interrupts
        && ops <= left
        && !x.debug_blocks;
    if alone {
        x.cpu.flags.bits &= !RF;
    }
    alone
}

/// The bytes a block's instructions take.
fn span(block: &cache::Block) -> u64 {
    block
        .ops
        .last()
        .map_or(0, |op| op.next.wrapping_sub(block.ip))
}

/// Whether a block must run one instruction at a time for a breakpoint in it or the
/// hypervisor's single-step. Asked only while some breakpoint or step is on
/// ([`Exec::debug_blocks`]): blocks pay for breakpoints only then.
#[cold]
#[inline(never)]
fn needs_single(x: &Exec, debug: Option<&DebugRun>, block: &cache::Block) -> bool {
    debug.is_some_and(|d| d.debug.single_step || d.debug.hits(block))
        || x.bps.exec != 0 && x.bps.exec_within(block.lin, span(block))
}

/// A run's view of [`Debug`]. `skip`: the breakpoint the last run stopped at, when
/// this one resumes there: it does not fire before the run's first instruction
/// (RFLAGS.RF's rule, SDM vol 3 18.3.1.1), so the VMM resumes from a stop without
/// removing the breakpoint. `stopped_at`: the breakpoint this run stops at.
struct DebugRun<'a> {
    debug: &'a Debug,
    skip: Option<u64>,
    stopped_at: Option<u64>,
}

/// A block pointer kept between runs, with the link key that says whether it is alive.
#[derive(Clone, Copy)]
struct LastBlock {
    block: *const cache::Block,
    key: u64,
}

// SAFETY: the pointer is only dereferenced by the processor owning the cache it points
// into, while the cache's link key is `key` (no block has been dropped since).
unsafe impl Send for LastBlock {}

impl Processor {
    /// A processor in its RESET state.
    pub fn new(bsp: bool) -> Self {
        Processor {
            cpu: Cpu::reset(crate::cpuid::SIGNATURE, bsp),
            tlb: Tlb::default(),
            cache: {
                let mut cache = CodeCache::default();
                let (tier, hot) = crate::jit::Tier::from_env();
                cache.translator.tier = tier;
                cache.translator.hot = hot;
                cache
            },
            instructions: 0,
            exit_instruction: ExitInstruction::default(),
            events: Arc::default(),
            last: LastBlock {
                block: std::ptr::null(),
                key: 0,
            },
            debug: Debug::default(),
            debug_resume: None,
            guest_bps: Breakpoints::default(),
            db_resume: None,
        }
    }

    /// Chooses the tier that executes guest code from now on (blocks compiled so far
    /// are kept, and used again if the translator comes back).
    pub fn set_tier(&mut self, tier: crate::Tier) {
        self.cache.translator.tier = tier;
    }

    /// The tier that executes guest code.
    pub fn tier(&self) -> crate::Tier {
        self.cache.translator.tier
    }

    /// Runs of a block before the translator compiles it (1: at its first run; the
    /// default is [`crate::HOT`]).
    pub fn set_hot(&mut self, runs: u32) {
        self.cache.translator.hot = runs.max(1);
    }

    /// Sets the size of the code area the translator compiles into, made at its first
    /// compilation (64 MiB by default): a small one fills and is flushed often, which
    /// tests use.
    pub fn set_code_area_size(&mut self, bytes: usize) {
        self.cache.translator.area_size = bytes;
    }

    /// What the translator compiled, and the time it took.
    pub fn translator_stats(&self) -> crate::TranslatorStats {
        self.cache.translator.stats
    }

    /// Sets where the hypervisor's debugger stops this processor. Translations are
    /// forgotten: a watched page must not be reached through the TLB.
    pub fn set_debug(&mut self, debug: Debug) {
        self.debug = debug;
        self.tlb.flush();
    }

    /// The next run resumes at linear address `at` as from a stop there: a breakpoint
    /// at it does not fire before its first instruction (a restored state resumes).
    pub fn resume_at(&mut self, at: u64) {
        self.debug_resume = Some(at);
    }

    /// Forgets cached translations and code: after the hypervisor changed registers
    /// the caches depend on (control registers, EFER, segments) or guest memory.
    pub fn state_changed(&mut self, mem: &PhysMap) {
        self.tlb.flush();
        self.cache.new_epoch();
        if self.cpu.paging()
            && !self.cpu.long_mode_active()
            && self.cpu.cr4 & crate::state::CR4_PAE != 0
        {
            crate::paging::load_pdptes(&mut self.cpu, mem);
        }
    }

    /// Translates `gva` as the processor would for `access` (a VMM's translation
    /// hypercall), optionally setting the accessed and dirty bits.
    pub fn translate(
        &self,
        mem: &PhysMap,
        gva: u64,
        access: Access,
        user: bool,
        set_bits: bool,
    ) -> Result<u64, PageFault> {
        let who = if user {
            Privilege::User
        } else {
            Privilege::Supervisor { ac: true }
        };
        paging::walk(&self.cpu, mem, gva, access, who, set_bits).map(|t| t.gpa)
    }

    /// Delivers an event now, as the hypervisor does with a pending event at resume.
    /// `Err(Exit::Shutdown)` when it cannot be delivered (a triple fault).
    pub fn inject(
        &mut self,
        mem: &PhysMap,
        env: &mut dyn Env,
        vector: u8,
        error_code: Option<u32>,
    ) -> Result<(), Exit> {
        self.tlb.sync_generation(mem.generation);
        let mut x = Exec {
            cpu: &mut self.cpu,
            tlb: &mut self.tlb,
            mem,
            env,
            cache: &mut self.cache,
            fault: Fault::default(),
            exit: Exit::None,
            work: 0,
            end_block: false,
            watches: &self.debug.watchpoints,
            watch_hit: None,
            exit_in_delivery: false,
            bps: self.guest_bps,
            db_traps: 0,
            db_at: None,
            gate: Gate::None,
            debug_blocks: false,
        };
        let rip = x.cpu.rip;
        let f = Fault {
            vector,
            error_code,
            cr2: None,
        };
        match interrupt::raise(&mut x, f, rip, Source::External) {
            Ok(()) => Ok(()),
            Err(_) => Err(x.exit),
        }
    }

    /// Runs until an exit, `max_instructions`, or `poll` returning true (it is called
    /// every [`POLL_INTERVAL`] instructions or string elements).
    pub fn run(
        &mut self,
        mem: &PhysMap,
        env: &mut dyn Env,
        max_instructions: u64,
        poll: &mut dyn FnMut() -> bool,
    ) -> RunEnd {
        self.tlb.sync_generation(mem.generation);
        self.cache.new_epoch();
        self.exit_instruction = ExitInstruction::default();
        if self.cpu.dr[7] & 0xff != 0 || self.guest_bps.any() {
            // DR7 or DR0-DR3 may have changed since (the VMM sets them too): a page that
            // now holds a data breakpoint must leave the TLB.
            let bps = Breakpoints::new(&self.cpu.dr);
            if bps != self.guest_bps {
                if bps.data() {
                    self.tlb.flush();
                }
                self.guest_bps = bps;
            }
        }
        let info = &mut self.exit_instruction;
        let mut x = Exec {
            cpu: &mut self.cpu,
            tlb: &mut self.tlb,
            mem,
            env,
            cache: &mut self.cache,
            fault: Fault::default(),
            exit: Exit::None,
            work: 0,
            end_block: false,
            watches: &self.debug.watchpoints,
            watch_hit: None,
            exit_in_delivery: false,
            bps: self.guest_bps,
            db_traps: 0,
            db_at: None,
            gate: Gate::None,
            debug_blocks: self.debug.active() || self.guest_bps.exec != 0,
        };
        if let Some((at, traps)) = self.db_resume.take() {
            // The VMM completed the instruction that exited and resumes after it: its
            // traps come before anything else (SDM vol 3 6.9, priority 4), as KVM's
            // kvm_skip_emulated_instruction -> kvm_vcpu_do_singlestep queues a
            // single-step #DB (SDM vol 3 18.3.1.4) for an instruction it emulated. A
            // VMM that resumes elsewhere (it injected an event, or re-runs the
            // instruction) did not complete it: nothing is owed.
            if at == x.cpu.rip {
                x.db_traps = traps;
            }
        }
        let mut executed = 0u64;
        let start = x.cpu.seg[CS].base.wrapping_add(x.cpu.rip);
        let resume = self.debug_resume.take().filter(|&b| b == start);
        let mut debug = self.debug.active().then_some(DebugRun {
            debug: &self.debug,
            skip: resume,
            stopped_at: None,
        });
        let mut next_poll = POLL_INTERVAL;
        // The next instruction count at which the limit or the poll is due.
        let mut check_at = next_poll.min(max_instructions);
        let events = &*self.events;
        // The block that ran last, and the link key it was found under.
        let LastBlock {
            block: mut prev,
            key: mut prev_key,
        } = self.last;
        let end = 'run: loop {
            if let Some(slot) = x.watch_hit.take() {
                break watched(&mut x, slot, info);
            }
            if x.db_traps != 0 {
                // Debug traps of the last instruction (data breakpoints), or of one the
                // VMM completed.
                if let Some(end) = owed_traps(&mut x) {
                    break end;
                }
            }
            if executed > 0 {
                // The breakpoint the run started on is passed once an instruction ran.
                if let Some(d) = debug.as_mut() {
                    d.skip = None;
                }
            }
            if executed >= check_at || x.work >= POLL_INTERVAL {
                if executed >= max_instructions {
                    break RunEnd::InstructionLimit;
                }
                if executed >= next_poll || x.work >= POLL_INTERVAL {
                    next_poll = executed + POLL_INTERVAL;
                    x.work = 0;
                    if poll() {
                        break RunEnd::Stopped;
                    }
                }
                check_at = next_poll.min(max_instructions);
            }
            let e = events.load(Ordering::Relaxed);
            if e != 0 {
                if e & EVENT_RESLICE != 0 {
                    break RunEnd::InstructionLimit;
                }
                let interruptible =
                    x.cpu.flags.bits & crate::flags::IF != 0 && !x.cpu.shadow.interrupts;
                if e & EVENT_URGENT != 0 || e & EVENT_MASKABLE != 0 && interruptible {
                    if let Some(end) = take_event(&mut x, interruptible) {
                        break end;
                    }
                }
            }
            // Chaining: the block that ran last remembers the block found after it;
            // while the RIP and the link key (the cache's generation and the mode) are
            // the same, that is what `find` would return. Else look it up, and
            // remember it there.
            let stamp = cache::stamp(&x);
            let key = x.cache.link_key(stamp);
            // SAFETY: `prev` was cached when it ran; no block has left the cache since
            // when the key (which covers the generation) is the same.
            let prev_block = (!prev.is_null() && prev_key == key).then(|| unsafe { &*prev });
            let linked = prev_block.and_then(|p| p.linked(x.cpu.rip, key));
            let found = match linked {
                // SAFETY: `b` was cached when the link was made, under this key: alive.
                Some(b) if unsafe { (*b).checked } == x.cache.epoch => Ok(b),
                // Checked as `find` would (the first blocks of every run: a new epoch),
                // without looking it up.
                Some(b) if matches!(cache::revalidate(&mut x, b), Ok(true)) => Ok(b),
                _ => {
                    let found = cache::find(&mut x);
                    if let (Some(p), Ok(b)) = (prev_block, &found) {
                        // `find` drops blocks only into the graveyard, freed at its next
                        // call: `p` is memory still, and the link carries the key of the
                        // generation `find` left.
                        p.remember(cache::Link {
                            ip: x.cpu.rip,
                            next: *b,
                            key: x.cache.link_key(stamp),
                            // SAFETY: `find` returned it: in its slot.
                            serial: unsafe { (**b).serial },
                        });
                    }
                    found
                }
            };
            let block = match found {
                Ok(b) => {
                    prev = b;
                    // `find` may have dropped a block: the key is the generation's now.
                    prev_key = x.cache.link_key(stamp);
                    b
                }
                Err(Stop::Fault) => {
                    // The fetch of the instruction at RIP faulted.
                    let f = x.fault;
                    let rip = x.cpu.rip;
                    match interrupt::raise(&mut x, f, rip, Source::Fault) {
                        Ok(()) => {
                            executed += 1;
                            continue;
                        }
                        Err(_) => break RunEnd::Exit(x.exit),
                    }
                }
                Err(Stop::Exit) => {
                    // Code in MMIO (an execute intercept) or an unusable page.
                    break RunEnd::Exit(x.exit);
                }
            };
            // SAFETY: `find` returned a block alive until its next call.
            let mut block = unsafe { &*block };
            // Blocks run back to back from here while nothing needs the checks above.
            loop {
                let ops = &block.ops[..];
                // The plain path: no single-step trap, no RF to clear, no interrupt
                // shadow to end, and the whole block within the instruction budget.
                // Nothing in a block can change that before its last instruction:
                // POPF, STI, MOV SS and POP SS end blocks, IRET and the far transfers
                // are branches.
                let plain = x.cpu.flags.bits & (TF | RF) == 0
                    && !x.cpu.shadow.interrupts
                    && ops.len() as u64 <= max_instructions - executed
                    && (!x.debug_blocks || !needs_single(&x, debug.as_ref(), block));
                if !plain && !rf_alone(&mut x, ops.len() as u64, max_instructions - executed) {
                    let outcome = run_single(
                        &mut x,
                        block,
                        max_instructions,
                        &mut executed,
                        info,
                        debug.as_mut(),
                    );
                    x.end_block = false;
                    match outcome {
                        Some(e) => break 'run e,
                        None => continue 'run,
                    }
                }
                // Compiled code may go on into the blocks linked after this one (or
                // loop in it) while the checks below would let them run: instructions
                // that fit before `check_at`.
                let budget = if x.work < POLL_INTERVAL && block.keeps_mode {
                    check_at.saturating_sub(executed + ops.len() as u64)
                } else {
                    0
                };
                let (outcome, whole, last) =
                    run_plain(&mut x, block, &mut executed, info, budget, prev_key);
                x.end_block = false;
                // Compiled code may have gone on into other blocks: the last one ran is
                // the one the checks below follow on from.
                block = last;
                prev = last;
                if let Some(e) = outcome {
                    break 'run e;
                }
                // The next block follows straight on when this one ran to its end
                // without changing the mode (so the key is still current: no block
                // was dropped either, which ends a block), nothing is due, and it is
                // linked.
                if !whole
                    || !block.keeps_mode
                    || executed >= check_at
                    || x.work >= POLL_INTERVAL
                    || events.load(Ordering::Relaxed) != 0
                {
                    continue 'run;
                }
                debug_assert!(cache::stamp(&x) == stamp, "a block changed the mode");
                let Some(next) = block.linked(x.cpu.rip, prev_key) else {
                    continue 'run;
                };
                // SAFETY: linked under the current key: `next` is alive.
                let next = unsafe { &*next };
                if next.checked != x.cache.epoch {
                    continue 'run;
                }
                if x.cache.translator.tier == crate::Tier::Translator {
                    crate::jit::link(&mut x, block, next, prev_key);
                }
                prev = next;
                block = next;
            }
        };
        info.in_event_delivery = matches!(end, RunEnd::Exit(_)) && x.exit_in_delivery;
        self.debug_resume = debug.and_then(|d| d.stopped_at);
        self.guest_bps = x.bps;
        self.db_resume = (x.db_traps != 0).then(|| (x.db_at.unwrap_or(x.cpu.rip), x.db_traps));
        self.last = LastBlock {
            block: prev,
            key: prev_key,
        };
        self.instructions += executed;
        end
    }
}

/// Runs a block's instructions one after another with nothing to look at between
/// them but the block's end. Each sees the TSC it would one instruction at a time.
/// Also says whether every instruction ran and none ended the block early, and the
/// block it ended in: compiled code may go on into the blocks linked after it (under
/// `key`, the link key `block` was found under), as the run loop would.
#[inline(always)]
fn run_plain<'b>(
    x: &mut Exec,
    mut block: &'b cache::Block,
    executed: &mut u64,
    info: &mut ExitInstruction,
    budget: u64,
    key: u64,
) -> (Option<RunEnd>, bool, &'b cache::Block) {
    let mut from = 0;
    if x.cache.translator.tier == crate::Tier::Translator {
        if let Some(ran) = crate::jit::run(x, block, budget, key) {
            // SAFETY: the block compiled code ended in was `block` or one linked after
            // it under `key`, which no block has left since (compiled code ends the
            // moment a block is dropped): alive as `block` is.
            block = unsafe { &*ran.block };
            let ops = &block.ops[..];
            // Whole blocks and passes, then `done` instructions of the last: counted,
            // and the TSC moved, as the interpreter would have.
            *executed += ran.retired;
            match ran.end {
                // A handler compiled code called ended the block after instruction
                // `done`, or stopped at it: as the loop below ends (the handler left
                // the TSC at that instruction's).
                Some(crate::jit::End::Ended) => {
                    *executed += ran.done as u64 + 1;
                    x.cpu.tsc = x.cpu.tsc.wrapping_add(1);
                    return (None, false, block);
                }
                Some(crate::jit::End::Stopped(stop)) => {
                    let op = &ops[ran.done];
                    *executed += ran.done as u64;
                    return (stopped(x, block, op, stop, executed, info, 0), false, block);
                }
                None => {}
            }
            x.cpu.tsc = x.cpu.tsc.wrapping_add(ran.retired);
            if ran.done == ops.len() {
                *executed += ops.len() as u64;
                x.cpu.tsc = x.cpu.tsc.wrapping_add(ops.len() as u64);
                return (None, true, block);
            }
            from = ran.done;
        }
    }
    let ops = &block.ops[..];
    let t0 = x.cpu.tsc;
    for (i, op) in ops.iter().enumerate().skip(from) {
        x.cpu.rip = op.next;
        x.cpu.tsc = t0.wrapping_add(i as u64);
        if let Err(stop) = (op.exec)(x, op) {
            *executed += i as u64;
            return (stopped(x, block, op, stop, executed, info, 0), false, block);
        }
        if x.end_block {
            *executed += i as u64 + 1;
            // After the instruction's own TSC (WRMSR may have set it).
            x.cpu.tsc = x.cpu.tsc.wrapping_add(1);
            return (None, false, block);
        }
    }
    *executed += ops.len() as u64;
    if !ops.is_empty() {
        x.cpu.tsc = x.cpu.tsc.wrapping_add(1);
    }
    (None, true, block)
}

/// Runs a block one instruction at a time, looking after each at what the plain path
/// leaves out: the single-step trap (TF), RF, the interrupt shadow, breakpoints, the
/// budget.
fn run_single(
    x: &mut Exec,
    block: &cache::Block,
    max_instructions: u64,
    executed: &mut u64,
    info: &mut ExitInstruction,
    mut debug: Option<&mut DebugRun>,
) -> Option<RunEnd> {
    let ops = &block.ops[..];
    let single = x.cpu.flags.bits & TF != 0 || x.cpu.shadow.interrupts;
    // Within the instruction budget: a block may hold more than is left.
    let left = (max_instructions - *executed).min(usize::MAX as u64) as usize;
    for op in ops.iter().take(left) {
        let lin = block.cs_base.wrapping_add(op.ip);
        if let Some(d) = debug.as_deref_mut() {
            let skip = d.skip.take() == Some(lin);
            if let Some(i) = d.debug.breakpoints.iter().position(|&b| b == lin) {
                if !skip {
                    d.stopped_at = Some(lin);
                    capture(x, block, op, info);
                    x.exit = Exit::Debug {
                        dr6: hv_core::state::dr6_for_slot(d.debug.watchpoints.len() + i),
                    };
                    return Some(RunEnd::Exit(x.exit));
                }
            }
        }
        let tf = x.cpu.flags.bits & TF != 0;
        let rf = x.cpu.flags.bits & RF != 0;
        // The blocking a MOV SS or POP SS left: this instruction ends it.
        let held = x.cpu.shadow;
        let blocked = held.blocks_debug();
        if x.bps.exec != 0 && !rf && !blocked {
            let hits = x.bps.exec_hits(lin);
            if hits != 0 {
                return match instruction_breakpoint(x, op, hits, executed) {
                    None if debug.is_some_and(|d| d.debug.single_step) => Some(stepped(x, info)),
                    end => end,
                };
            }
        }
        x.cpu.shadow = Shadow::default();
        x.gate = Gate::None;
        x.cpu.rip = op.next;
        // Traps owed after this instruction: its single-step trap (SDM vol 3 18.3.1.4),
        // and the data breakpoints of a MOV SS or POP SS before it (SDM vol 3 6.8.3).
        let mut owed = if tf { DR6_BS } else { 0 };
        if blocked {
            owed |= held.pending_db as u64;
        }
        if let Err(stop) = (op.exec)(x, op) {
            let end = stopped(x, block, op, stop, executed, info, owed);
            // A step ends at an exception's handler, as the hardware's does.
            return match end {
                None if debug.is_some_and(|d| d.debug.single_step) => Some(stepped(x, info)),
                end => end,
            };
        }
        *executed += 1;
        x.cpu.tsc = x.cpu.tsc.wrapping_add(1);
        if rf {
            x.cpu.flags.bits &= !RF;
        }
        if x.gate != Gate::None {
            // INT n, INT3, INTO and INT1 entered a handler through a gate, which cleared
            // TF: no single-step trap follows (SDM vol 3 18.3.1.4), not even on the
            // handler's first instruction. SYSCALL and SYSRET owe theirs by TF as they
            // leave it (`Gate::Syscall`), among their own traps.
            owed &= !DR6_BS;
        }
        let mut traps = std::mem::take(&mut x.db_traps) | owed;
        if x.cpu.shadow.blocks_debug() {
            // A MOV SS or POP SS: its single-step trap is suppressed and its data
            // breakpoints wait for the next instruction boundary (SDM vol 3 6.8.3).
            x.cpu.shadow.pending_db |= (traps & DR6_B) as u8;
            traps = 0;
        }
        if x.gate == Gate::Icebp && traps != 0 {
            // One #DB: the one INT1 delivered reports the breakpoints owed.
            x.cpu.dr[6] = (x.cpu.dr[6] & !DR6_B) | (traps & DR6_B);
            traps = 0;
        }
        if debug.as_ref().is_some_and(|d| d.debug.single_step) {
            // The hypervisor's step comes first: the guest's own traps are still owed,
            // and are taken when the run resumes here.
            x.db_traps = traps;
            x.db_at = None;
            return Some(stepped(x, info));
        }
        if traps != 0 {
            if deliver_db(x, traps).is_err() {
                return Some(RunEnd::Exit(x.exit));
            }
            return None;
        }
        if x.end_block || single {
            return None;
        }
    }
    None
}

/// Delivers the #DB trap for the debug conditions in `traps` (DR6 bits) with RIP after
/// the instruction: B0-B3 say which breakpoints matched, replacing the ones DR6 held;
/// BS adds to it; the other bits stay (SDM vol 3 18.2.3: "certain debug exceptions may
/// clear bits 0-3. The remaining contents of the DR6 register are never cleared by
/// the processor"). `Err` (Exit::Shutdown in `x.exit`) when it cannot be delivered.
fn deliver_db(x: &mut Exec, traps: u64) -> Result<(), Stop> {
    x.cpu.dr[6] = (x.cpu.dr[6] & !DR6_B) | traps;
    let f = Fault {
        vector: DB,
        error_code: None,
        cr2: None,
    };
    let rip = x.cpu.rip;
    interrupt::raise(x, f, rip, Source::Exception)
}

/// Traps owed at the top of the run loop: data breakpoints the last instruction hit on
/// the plain path, or the traps of an instruction the VMM completed. Those of a MOV
/// SS or POP SS wait for the next instruction (its single-step trap is suppressed).
#[cold]
#[inline(never)]
fn owed_traps(x: &mut Exec) -> Option<RunEnd> {
    let traps = std::mem::take(&mut x.db_traps);
    if x.cpu.shadow.blocks_debug() {
        x.cpu.shadow.pending_db |= (traps & DR6_B) as u8;
        return None;
    }
    deliver_db(x, traps).err().map(|_| RunEnd::Exit(x.exit))
}

/// An instruction breakpoint (DR7 R/W = 00) at `op`, which has not executed: a #DB
/// fault with RIP on it and DR6.B0-B3 the matching slots (SDM vol 3 18.2.5). RF is
/// pushed as it is (clear: the breakpoint fires only then); the handler sets it in the
/// image to execute the instruction on return (SDM vol 3 18.3.1.1).
#[cold]
#[inline(never)]
fn instruction_breakpoint(x: &mut Exec, op: &Op, hits: u64, executed: &mut u64) -> Option<RunEnd> {
    x.cpu.rip = op.ip;
    x.cpu.dr[6] = (x.cpu.dr[6] & !DR6_B) | hits;
    let f = Fault {
        vector: DB,
        error_code: None,
        cr2: None,
    };
    match interrupt::raise(x, f, op.ip, Source::Exception) {
        Ok(()) => {
            *executed += 1;
            None
        }
        Err(_) => Some(RunEnd::Exit(x.exit)),
    }
}

/// The debug traps of an instruction that exited and completes (the VMM completes an
/// I/O, MSR or MMIO access; HLT and an EOI write retired here): `owed` (its
/// single-step trap, what a MOV SS before it held off), its data breakpoints, and its
/// I/O breakpoints (DR7 R/W = 10 with CR4.DE, SDM vol 3 18.2.4). They are due when the
/// run resumes after it; true for HLT with traps, which are delivered now instead of
/// halting (the trap is taken at the boundary after HLT, as KVM's
/// kvm_skip_emulated_instruction delivers it before kvm_emulate_halt blocks).
#[cold]
#[inline(never)]
fn owe_after_exit(x: &mut Exec, op: &Op, exit: Exit, owed: u64) -> bool {
    let mut traps = std::mem::take(&mut x.db_traps) | owed;
    if let Exit::Io { port, size, .. } = exit {
        if x.cpu.cr4 & CR4_DE != 0 {
            traps |= x.bps.io_hits(port, size);
        }
    }
    if traps == 0 {
        return false;
    }
    x.db_traps = traps;
    if exit == Exit::Halt {
        // The trap is taken at the boundary after HLT: the processor does not halt.
        x.cpu.halted = false;
        x.db_at = None;
        return true;
    }
    x.db_at = Some(op.next);
    false
}

/// The hypervisor's single-step stop after an instruction (no instruction bytes: the
/// next one has not been fetched).
fn stepped(x: &mut Exec, info: &mut ExitInstruction) -> RunEnd {
    *info = ExitInstruction::default();
    let watched = x.watch_hit.take().map_or(0, hv_core::state::dr6_for_slot);
    x.exit = Exit::Debug {
        dr6: hv_core::state::DR6_BS | watched,
    };
    RunEnd::Exit(x.exit)
}

/// The stop after an instruction that accessed a watched range (a trap: RIP is past it).
#[cold]
fn watched(x: &mut Exec, slot: usize, info: &mut ExitInstruction) -> RunEnd {
    *info = ExitInstruction::default();
    x.exit = Exit::Debug {
        dr6: hv_core::state::dr6_for_slot(slot),
    };
    RunEnd::Exit(x.exit)
}

/// What instruction `op` stopping with `stop` comes to: an exception delivered (the
/// run goes on) or the exit the run ends with. `owed`: the debug traps (DR6 bits) due
/// after the instruction if it completes (its single-step trap, and the data
/// breakpoints a MOV SS or POP SS before it held off).
#[cold]
#[inline(never)]
fn stopped(
    x: &mut Exec,
    block: &cache::Block,
    op: &Op,
    stop: Stop,
    executed: &mut u64,
    info: &mut ExitInstruction,
    owed: u64,
) -> Option<RunEnd> {
    match stop {
        Stop::Fault => {
            // A faulting instruction did not complete: no data breakpoint is reported,
            // and the traps owed go with it (the guest's GD #DB, a fault, reports BD
            // alone: kvm-unit-tests debug "Single-step #DB w/ MOVSS blocking and
            // DR7.GD=1").
            x.watch_hit = None;
            x.db_traps = 0;
            x.cpu.rip = op.ip;
            // Every exception a handler returns is a fault: RIP stays on the
            // instruction (traps like INT3 are delivered by their handlers), and the
            // image pushed has RF set (SDM vol 3 18.3.1.1).
            let f = x.fault;
            match interrupt::raise(x, f, op.ip, Source::Fault) {
                Ok(()) => {
                    *executed += 1;
                    None
                }
                Err(_) => {
                    capture(x, block, op, info);
                    Some(RunEnd::Exit(x.exit))
                }
            }
        }
        Stop::Exit => {
            let exit = x.exit;
            // HLT and an EOI write retire; the other exits leave RIP on the
            // instruction for the VMM to complete it.
            let retired = matches!(exit, Exit::Halt | Exit::ApicEoi(_));
            if !retired {
                x.cpu.rip = op.ip;
            }
            let completes = retired
                || matches!(
                    exit,
                    Exit::Io { .. }
                        | Exit::Msr { .. }
                        | Exit::Mmio {
                            access: Access::Read | Access::Write,
                            ..
                        }
                );
            if completes {
                // HLT retires here; an access retires when the VMM completes it.
                *executed += 1;
                if (owed != 0 || x.db_traps != 0 || x.bps.io != 0)
                    && owe_after_exit(x, op, exit, owed)
                {
                    // HLT with a debug trap: the run goes on to deliver it.
                    return None;
                }
            } else {
                x.db_traps = 0;
            }
            if retired {
                info.len = op.len;
            } else {
                capture(x, block, op, info);
            }
            Some(RunEnd::Exit(exit))
        }
    }
}

/// Delivers the event the environment has for the processor now, if any. INIT and
/// SIPI end the run: the hypervisor changes the processor's state for them.
fn take_event(x: &mut Exec, interruptible: bool) -> Option<RunEnd> {
    // An NMI waits for the end of an interrupt shadow too: STI's ("NMIs ... may be
    // inhibited on the instruction boundary following an execution of STI that begins
    // with IF = 0", SDM vol 2 STI), as KVM's `vmx_nmi_blocked` has it and kvm-unit-tests
    // apic "nmi-after-sti" expects; and MOV SS's and POP SS's, whose purpose is a stack
    // switch no event interrupts (SDM vol 3 6.8.3).
    let nmi_blocked = x.cpu.nmi_blocked || x.cpu.shadow.interrupts;
    let event = x.env.take_event(interruptible, nmi_blocked, x.cpu.tsc)?;
    let rip = x.cpu.rip;
    let (vector, nmi) = match event {
        Event::Interrupt(v) => (v, false),
        Event::Nmi => (crate::fault::NMI, true),
        Event::Init => return Some(RunEnd::Exit(Exit::Init)),
        Event::Sipi(v) => return Some(RunEnd::Exit(Exit::Sipi(v))),
    };
    // An interrupt ends a halt; the processor resumes after the HLT (RIP is past it).
    x.cpu.halted = false;
    let f = Fault {
        vector,
        error_code: None,
        cr2: None,
    };
    match interrupt::raise(x, f, rip, Source::External) {
        Ok(()) => {
            if nmi {
                x.cpu.nmi_blocked = true;
            }
            None
        }
        Err(_) => Some(RunEnd::Exit(x.exit)),
    }
}

/// The bytes at CS:RIP for an exit message: up to 16, through the next page when it
/// is readable RAM. `op` of `block` is the instruction that exited.
fn capture(x: &mut Exec, block: &cache::Block, op: &Op, info: &mut ExitInstruction) {
    info.len = op.len;
    let rip = x.cpu.rip;
    // Usually all 16 are in the block's first page, which the block has just been
    // checked against: read there, without the TLB (cold after the VMM ran).
    let off = op.ip.wrapping_sub(block.ip) as usize;
    if rip == op.ip
        && x.cpu.seg[CS].base == block.cs_base
        && x.cpu.mode64() == (block.bits == 64)
        && (block.lin & 0xfff) as usize + off + 16 <= 0x1000
    {
        // SAFETY: `block.host` maps the block's first page of RAM from its first byte;
        // the 16 bytes at `off` stay inside that page.
        let bytes = unsafe { hv_core::shared::load16(block.host.add(off), 16) };
        info.bytes = bytes.to_le_bytes();
        info.available = 16;
        return;
    }
    let lin = if x.cpu.mode64() {
        rip
    } else {
        x.cpu.seg[CS].base.wrapping_add(rip) & 0xffff_ffff
    };
    let who = if x.cpu.cpl() == 3 {
        Privilege::User
    } else {
        Privilege::Supervisor { ac: true }
    };
    let (saved_fault, saved_exit) = (x.fault, x.exit);
    // Built in a register, stored once: byte copies into the message and the 16-byte
    // loads that move it on would stall on store forwarding.
    let mut bytes = 0u128;
    let mut got = 0usize;
    while got < 16 {
        let at = lin.wrapping_add(got as u64);
        let fast = x.tlb.lookup(
            at,
            crate::tlb::need(Access::Execute, who == Privilege::User),
        );
        let (p, left) = match fast {
            Some(p) => (p, 0x1000 - (at & 0xfff) as usize),
            None => match x.translate(at, Access::Execute, who) {
                Ok(v) => v,
                Err(_) => break,
            },
        };
        let n = left.min(16 - got);
        // SAFETY: `p` starts `left` >= `n` bytes of plain RAM (whole pages).
        bytes |= unsafe { hv_core::shared::load16(p, n) } << (8 * got);
        got += n;
    }
    info.bytes = bytes.to_le_bytes();
    (x.fault, x.exit) = (saved_fault, saved_exit);
    info.available = got as u8;
}
