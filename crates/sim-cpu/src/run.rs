//! The processor and its run loop: find the block at CS:RIP, execute its instructions,
//! deliver the exceptions they raise, stop at exits, limits and polls.

use crate::cache::{self, CodeCache};
use crate::decode::Op;
use crate::exec::Exec;
use crate::fault::{Exit, Fault, Stop, DB};
use crate::flags::{RF, TF};
use crate::interrupt::{self, Source};
use crate::paging::{self, Access, PageFault, Privilege};
use crate::phys::PhysMap;
use crate::state::{Cpu, CS};
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
        let len = block
            .ops
            .last()
            .map_or(0, |op| op.next.wrapping_sub(block.ip));
        self.breakpoints
            .iter()
            .any(|&b| b.wrapping_sub(block.lin) < len)
    }
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
            cache: CodeCache::default(),
            instructions: 0,
            exit_instruction: ExitInstruction::default(),
            events: Arc::default(),
            last: LastBlock {
                block: std::ptr::null(),
                key: 0,
            },
            debug: Debug::default(),
            debug_resume: None,
        }
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
        };
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
                    && debug
                        .as_ref()
                        .is_none_or(|d| !d.debug.single_step && !d.debug.hits(block));
                if !plain {
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
                let (outcome, whole) = run_plain(&mut x, block, &mut executed, info);
                x.end_block = false;
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
                prev = next;
                block = next;
            }
        };
        info.in_event_delivery = matches!(end, RunEnd::Exit(_)) && x.exit_in_delivery;
        self.debug_resume = debug.and_then(|d| d.stopped_at);
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
/// Also says whether every instruction ran and none ended the block early.
#[inline(always)]
fn run_plain(
    x: &mut Exec,
    block: &cache::Block,
    executed: &mut u64,
    info: &mut ExitInstruction,
) -> (Option<RunEnd>, bool) {
    let ops = &block.ops[..];
    let t0 = x.cpu.tsc;
    for (i, op) in ops.iter().enumerate() {
        x.cpu.rip = op.next;
        x.cpu.tsc = t0.wrapping_add(i as u64);
        if let Err(stop) = (op.exec)(x, op) {
            *executed += i as u64;
            return (stopped(x, block, op, stop, executed, info), false);
        }
        if x.end_block {
            *executed += i as u64 + 1;
            // After the instruction's own TSC (WRMSR may have set it).
            x.cpu.tsc = x.cpu.tsc.wrapping_add(1);
            return (None, false);
        }
    }
    *executed += ops.len() as u64;
    if !ops.is_empty() {
        x.cpu.tsc = x.cpu.tsc.wrapping_add(1);
    }
    (None, true)
}

/// Runs a block one instruction at a time, looking after each at what the plain path
/// leaves out: the single-step trap (TF), RF, the interrupt shadow, the budget.
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
        if let Some(d) = debug.as_deref_mut() {
            let lin = block.cs_base.wrapping_add(op.ip);
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
        x.cpu.shadow.interrupts = false;
        x.cpu.rip = op.next;
        if let Err(stop) = (op.exec)(x, op) {
            let end = stopped(x, block, op, stop, executed, info);
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
        if debug.as_ref().is_some_and(|d| d.debug.single_step) {
            // The hypervisor's step comes first: the guest's own TF trap (below) is
            // still owed, and is taken when the run resumes.
            if rf {
                x.cpu.flags.bits &= !RF;
            }
            return Some(stepped(x, info));
        }
        if tf {
            // Single-step: #DB after the instruction, DR6.BS set.
            x.cpu.dr[6] |= 1 << 14;
            let f = Fault {
                vector: DB,
                error_code: None,
                cr2: None,
            };
            let rip = x.cpu.rip;
            if interrupt::raise(x, f, rip, Source::Exception).is_err() {
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
/// run goes on) or the exit the run ends with.
#[cold]
#[inline(never)]
fn stopped(
    x: &mut Exec,
    block: &cache::Block,
    op: &Op,
    stop: Stop,
    executed: &mut u64,
    info: &mut ExitInstruction,
) -> Option<RunEnd> {
    match stop {
        Stop::Fault => {
            // A faulting instruction did not complete: no data breakpoint is reported.
            x.watch_hit = None;
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
            if retired
                || matches!(
                    exit,
                    Exit::Io { .. }
                        | Exit::Msr { .. }
                        | Exit::Mmio {
                            access: Access::Read | Access::Write,
                            ..
                        }
                )
            {
                // HLT retires here; an access retires when the VMM completes it.
                *executed += 1;
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
    let event = x
        .env
        .take_event(interruptible, x.cpu.nmi_blocked, x.cpu.tsc)?;
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
