//! The translating tier (issue #31): blocks of 64-bit code that ran often are compiled
//! to host code, beside the interpreter, which stays the tier of everything else.
//!
//! A block of the decode cache ([`crate::cache::Block`]) that ran [`Translator::hot`]
//! times on the run loop's plain path is compiled: the longest prefix of its
//! instructions the translator covers ([`cover`]), emitted by [`emit`] and copied into
//! the processor's code area ([`area`]). Its code is entered only while its block
//! lives (a block is dropped when its page is written or its bytes change) and the
//! area has not been flushed since. The compiled prefix runs in place of the interpreter's handlers on the same
//! plain path and leaves the processor's state as they would; an instruction it cannot
//! finish fast (a TLB miss, a page crossing, a fault to come) is left to the
//! interpreter before it changes anything, and the interpreter runs it and the rest of
//! the block, so faults, exits and the slow paths stay the interpreter's and stay
//! precise.
//!
//! The modes: 64-bit code only (CS.L = 1 in IA-32e mode), entered where the run loop's
//! plain path is (no TF, no RF, no interrupt shadow, the whole block within the
//! instruction budget), with no guest breakpoint (DR7) or hypervisor watchpoint or
//! breakpoint set. Everything else stays interpreted.
//!
//! Instruction counts and the TSC: the run loop counts a block's instructions when it
//! ends as it does for the interpreter; no instruction compiled code does itself reads
//! the TSC or RIP, and a handler it calls ([`cover::Kind::Call`]) sees both as the run
//! loop would have set them for it (`call_handler`). A block whose branch leads back to
//! itself loops in host code, and a block that ends at a known RIP goes on into the
//! compiled code of the block linked there ([`chain`]), where the run loop would have
//! followed its link with nothing due: while the next block's instructions fit before
//! the next limit or poll.
//!
//! Events (an interrupt, an INIT or SIPI, a timer re-armed) that arrive while compiled
//! code runs are taken when its budget ends, at the latest [`crate::POLL_INTERVAL`]
//! instructions on, where the interpreter takes them at the next block's start: no
//! instruction compiled code runs or calls raises one (the APIC's registers and MSRs,
//! WRMSR and the port and MMIO exits all end compiled code), so an event arrives only
//! from another thread, at a point no run can repeat, and compiled code spends no
//! instructions looking for it.

#[cfg(target_arch = "x86_64")]
mod area;
mod chain;
mod cover;
#[cfg(target_arch = "x86_64")]
mod emit;
#[cfg(target_arch = "x86_64")]
mod plan;

use crate::cache::Block;
use crate::exec::Exec;
use crate::paging::Access;
use crate::state::Cpu;
use std::cell::Cell;

/// Which tier executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tier {
    /// Every instruction through its handler: the oracle the translator is judged by.
    Interpreter,
    /// Hot blocks of 64-bit code compiled to host code, the interpreter for the rest:
    /// the default, since it gives the interpreter's exits, instruction counts,
    /// registers and memory (its lock-step judges) and is faster (issue #31).
    #[default]
    Translator,
}

impl Tier {
    /// The tier a processor starts with, and the runs that make a block hot: the
    /// translator, or what `MSHV_SIM_CPU` names, which test suites set to run every
    /// test under one tier: 'interpreter', or 'translator' with blocks compiled when
    /// they first run, so that short tests exercise compiled code too.
    pub fn from_env() -> (Tier, u32) {
        match std::env::var("MSHV_SIM_CPU").as_deref() {
            Ok("translator") => (Tier::Translator, 1),
            Ok("interpreter") => (Tier::Interpreter, HOT),
            _ => (Tier::Translator, HOT),
        }
    }
}

/// Plain-path runs of a block before it is compiled: compiling costs about as much as
/// interpreting a block some tens of times (CHANGELOG, the translator's figures).
pub const HOT: u32 = 32;

/// Covered instructions a block's prefix needs to be compiled when the interpreter
/// goes on after it: entering compiled code costs about what interpreting one
/// instruction does, so a prefix of one gains nothing (the recursive-fib loop's blocks,
/// CALL/RET/PUSH/POP around one covered instruction, ran 27% slower compiled before
/// chains). A block covered whole is compiled all the same ([`worth_compiling`]).
pub const MIN_PREFIX: usize = 2;

/// Whether a block's covered prefix `kinds` is worth compiling: [`MIN_PREFIX`]
/// instructions, or the whole block, which chained code goes through without
/// returning to the run loop. Linux's kernel is full of blocks of one instruction: a
/// RET or CALL after a call returns, a JMP to a shared exit, a CALL through a register
/// (the retpoline thunks patched to `jmp *%rax`), an instruction before a page's end;
/// in one boot 22 M of 29 M returns to the run loop were at a block of one branch
/// when those were left interpreted, and 0.34 M more at the others, which were
/// compiled later.
fn worth_compiling(kinds: &[cover::Kind], ops: usize) -> bool {
    kinds.len() >= MIN_PREFIX || !kinds.is_empty() && kinds.len() == ops
}

/// The translator's settings and figures, per processor.
#[derive(Debug, Default)]
pub struct Translator {
    pub tier: Tier,
    /// Runs of a block before it is compiled (at least 1).
    pub hot: u32,
    pub stats: TranslatorStats,
    /// Where compiled code lives, made at the first compilation; its head holds the
    /// routine that computes host flags from a lazy record of unknown kind, at
    /// `routine`.
    #[cfg(target_arch = "x86_64")]
    area: Option<area::CodeArea>,
    /// The jump cache ([`chain::JumpCache`]), made with the area.
    jumps: Option<chain::JumpCache>,
    /// The size of the area to make (0: [`area::SIZE`]).
    pub area_size: usize,
    #[cfg(target_arch = "x86_64")]
    routine: usize,
    /// Where the routine that calls [`check_bytes`] for chained code is, in the head.
    #[cfg(target_arch = "x86_64")]
    check_routine: usize,
    /// The chains' stamp now, and the link key, code area generation and privilege it
    /// stands for ([`chain::stamp`]).
    chain_stamp: u64,
    chained_under: Option<(u64, u32, bool)>,
}

/// What the translator did: hv-core's type, which backends report (one definition).
pub use chain::link;
pub use hv_core::TranslatorStats;

/// Why a block could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("cannot map memory for compiled code: {0}")]
    Map(#[from] std::io::Error),
    #[error("cannot assemble compiled code: {0}")]
    Assemble(String),
    #[error("a block's code ({0} bytes) does not fit in an empty code area")]
    TooBig(usize),
}

/// A block's translation state.
#[derive(Debug, Clone, Copy, Default)]
enum Code {
    /// Not compiled (yet).
    #[default]
    Cold,
    /// Never compiled: too little of it is covered, or compiling failed.
    Never,
    /// Compiled into the code area at `offset`, in its generation `generation`; its
    /// chain entry ([`chain`]) `chain` bytes further. `user`: compiled for CPL 3 (its
    /// memory accesses test the TLB's user grants) or for CPL 0-2 (the supervisor's);
    /// entered, and gone on into, only at such a CPL.
    At {
        offset: u32,
        generation: u32,
        chain: u16,
        user: bool,
    },
}

/// Idle entries in a row ([`idle_entry`]) before compiled code is passed over for
/// [`REST`] runs; after a rest, the first idle entry starts the next.
const IDLE_ENTRIES: u8 = 4;

/// Runs of a block the interpreter does alone after [`IDLE_ENTRIES`] idle entries.
const REST: u8 = 64;

/// Instructions an entry of compiled code retires before a VM exit ends it, below which
/// the entry was not worth its cost ([`idle_entry`]).
const SHORT_EXIT: u64 = 8;

/// Whether an entry of compiled code was idle: it did nothing (its first instruction
/// bailed: an MMIO access, a TLB miss each time), or a VM exit ended it within
/// [`SHORT_EXIT`] instructions (a guest's port or MMIO exit loop: `out; dec; jnz`).
/// Entering and leaving compiled code costs host work the interpreter does not do, so
/// such an exit loop (a driver polling or writing a device register, a virtio notify),
/// left to the interpreter, runs as fast as under it (issue #31: the exit path must not
/// slow down).
fn idle_entry(ran: &Ran) -> bool {
    let instructions = ran.retired + ran.done as u64;
    match ran.end {
        None => instructions == 0,
        Some(End::Stopped(crate::fault::Stop::Exit)) => instructions < SHORT_EXIT,
        Some(_) => false,
    }
}

/// A block's translation state: its plain-path runs, then where its code is, and how
/// its last entries went.
#[derive(Default)]
pub struct Slot {
    runs: Cell<u32>,
    code: Cell<Code>,
    /// Idle entries in a row.
    idle: Cell<u8>,
    /// Runs left to the interpreter before the code is entered again.
    rest: Cell<u8>,
    /// The successors its code may go on to ([`chain`]), and which of them the next
    /// new one replaces; none, when `fixed`: each chain then holds the one RIP its
    /// compiled code leaves at, for the block's life (`emit::Exits`).
    chains: [chain::Chain; 2],
    next_chain: Cell<u8>,
    fixed: Cell<bool>,
}

/// What compiled code reads and writes besides the processor's state: `repr(C)`, its
/// fields up to `block` are at offsets the emitted code has; the rest are the
/// handler calls' ([`call_handler`]).
#[repr(C)]
pub struct Frame {
    cpu: *mut Cpu,
    tlb: *const crate::tlb::Entry,
    /// The jump cache's chains.
    jumps: *const chain::Chain,
    /// Instructions the blocks (and passes of a self-looping block) after the first may
    /// retire still (see the module): compiled code keeps it in a register and takes
    /// each one's instructions off it as it goes on into it.
    budget: u64,
    /// The budget and the block's instruction count at the entry, and what handlers
    /// took off the budget (`call_handler`): the instructions retired follow
    /// ([`Frame::retired`]).
    start_budget: u64,
    start_len: u64,
    cut: u64,
    /// The stamp chains are followed under ([`chain::stamp`]).
    stamp: u64,
    /// The code cache's epoch: a block's bytes compared in it may run ([`check_bytes`]).
    epoch: u64,
    /// The block running now (its instructions are the handlers' and its count the
    /// budget's: [`Frame::retired`]).
    block: *const Block,
    /// The run loop's `Exec` (erased: it has lifetimes), for the handlers called.
    exec: *mut std::ffi::c_void,
    /// The TSC at the block's start (compiled code leaves it there).
    t0: u64,
    /// How a handler called ended the run of compiled code, if it did.
    end: Option<End>,
}

impl Frame {
    /// The block running now.
    fn block(&self) -> &Block {
        // SAFETY: `enter` made the frame for a block alive for the run, and compiled
        // code names another only through a chain whose stamp and serial say it is
        // alive (`chain`); no block is dropped while compiled code runs.
        unsafe { &*self.block }
    }

    /// Instructions of the whole blocks and passes run before the current one: the
    /// budget taken by the blocks gone on into, less the current one's, plus the first.
    fn retired(&self) -> u64 {
        self.start_budget
            .wrapping_sub(self.cut)
            .wrapping_sub(self.budget)
            .wrapping_add(self.start_len)
            .wrapping_sub(self.block().ops.len() as u64)
    }
}

/// How a handler called from compiled code ended its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The instruction completed and the block must end after it (`Exec::end_block`).
    Ended,
    /// The instruction stopped (a fault or an exit), as the interpreter's would.
    Stopped(crate::fault::Stop),
}

/// What running a translation did: `retired` instructions of whole blocks and passes,
/// then `done` of the instructions of `block`, the block it ended in (all of them: the
/// block ran to its end; fewer: the interpreter goes on at that one, unless `end` says
/// a handler called for it ended the run). `block` is alive under the link key the run
/// was entered with.
pub struct Ran {
    pub retired: u64,
    pub done: usize,
    pub end: Option<End>,
    pub block: *const Block,
}

/// Runs the interpreter's handler for instruction `i` of the block, as the run loop's
/// plain path does (RIP the next instruction's, the TSC this instruction's); returns
/// 0 when compiled code goes on, 1 when it must return (`Frame::end` says why).
///
/// # Safety
/// `frame` is the frame `enter` made for this run of compiled code: its `exec` is the
/// run loop's `Exec`, not otherwise in use while compiled code runs, and its block's
/// instructions hold `i`.
#[cfg(target_arch = "x86_64")]
unsafe extern "sysv64" fn call_handler(frame: *mut Frame, i: u32) -> u32 {
    // SAFETY: see the function's contract: the frame lives on `enter`'s stack, the
    // `Exec` in the caller of `enter`, which passed it here to be used while the
    // compiled code (which touches only the `Cpu`, the TLB and guest RAM, none of them
    // while this runs) calls back.
    let (f, x, op) = unsafe {
        let f = &mut *frame;
        let x = &mut *f.exec.cast::<Exec<'_>>();
        let ops: &[crate::decode::Op] = &(*f.block).ops;
        let op = ops.get_unchecked(i as usize);
        (f, x, op)
    };
    let t = x.cpu.tsc;
    x.cpu.rip = op.next;
    x.cpu.tsc = f.t0.wrapping_add(f.retired()).wrapping_add(i as u64);
    match (op.exec)(x, op) {
        Ok(()) if !x.end_block => {
            x.cpu.tsc = t;
            if x.work >= crate::run::POLL_INTERVAL {
                // The run loop would poll after this block: no more blocks here.
                f.cut += f.budget;
                f.budget = 0;
            }
            0
        }
        Ok(()) => {
            f.end = Some(End::Ended);
            1
        }
        Err(stop) => {
            f.end = Some(End::Stopped(stop));
            1
        }
    }
}

/// Compares the bytes of `block`, which a chain names, with its memory for the current
/// epoch (`cache::revalidate`, in place): 0 when they are the same (the block is
/// marked checked and compiled code goes on into it), 1 when they are not or the
/// block crosses a page (compiled code returns to the run loop, which looks at it
/// and drops it if it must).
///
/// # Safety
/// As [`call_handler`]'s: `frame` is the frame `enter` made for this run of compiled
/// code; `block` is alive (a chain under the frame's stamp names it with its serial).
#[cfg(target_arch = "x86_64")]
unsafe extern "sysv64" fn check_bytes(frame: *mut Frame, block: *const Block) -> u32 {
    // SAFETY: see the function's contract (and `call_handler`'s).
    let (x, b) = unsafe {
        let f = &mut *frame;
        (&mut *f.exec.cast::<Exec<'_>>(), &*block)
    };
    u32::from(!crate::cache::same_page_bytes_checked(x, b))
}

/// Runs `block`'s translation on the plain path, compiling it when it became hot;
/// `None` when the interpreter runs it all. `budget`: instructions that blocks and
/// passes after the first may retire (0 when something is due after this block);
/// `key`: the link key the block was found under.
#[inline]
pub fn run(x: &mut Exec, block: &Block, budget: u64, key: u64) -> Option<Ran> {
    // First, as it is the cheapest: a port exit loop's blocks rest at each exit.
    let rest = block.jit.rest.get();
    if rest > 0 {
        block.jit.rest.set(rest - 1);
        return None;
    }
    if block.bits != 64 || x.debug_blocks || !x.watches.is_empty() || x.bps.any() {
        return None;
    }
    let user = x.cpu.cpl() == 3;
    let at = match block.jit.code.get() {
        Code::At {
            offset,
            generation,
            user: u,
            ..
        } if Some(generation) == generation_of(x) => {
            if u != user {
                // Compiled for the other privilege: the interpreter runs it at this
                // one (code that runs at both, rare, is compiled for the first).
                return None;
            }
            code_address(x, offset)
        }
        Code::Never => return None,
        Code::At { .. } => compile(x, block)?,
        Code::Cold => {
            let runs = block.jit.runs.get() + 1;
            block.jit.runs.set(runs);
            if runs < x.cache.translator.hot {
                return None;
            }
            compile(x, block)?
        }
    };
    let ran = enter(x, at, block, budget, key)?;
    if idle_entry(&ran) {
        let idle = block.jit.idle.get() + 1;
        if idle >= IDLE_ENTRIES {
            block.jit.rest.set(REST);
            block.jit.idle.set(IDLE_ENTRIES - 1);
        } else {
            block.jit.idle.set(idle);
        }
    } else {
        block.jit.idle.set(0);
    }
    Some(ran)
}

/// Compiles `block` and records where its code is (or that it has none): the address
/// to enter it at.
fn compile(x: &mut Exec, block: &Block) -> Option<usize> {
    let code = translate(x, block).unwrap_or(Code::Never);
    block.jit.code.set(code);
    match code {
        Code::At { offset, .. } => Some(code_address(x, offset)),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
fn generation_of(x: &Exec) -> Option<u32> {
    x.cache
        .translator
        .area
        .as_ref()
        .map(area::CodeArea::generation)
}

#[cfg(target_arch = "x86_64")]
fn code_address(x: &Exec, offset: u32) -> usize {
    x.cache
        .translator
        .area
        .as_ref()
        .map_or(0, |a| a.address(offset))
}

#[cfg(target_arch = "x86_64")]
fn enter(x: &mut Exec, at: usize, block: &Block, budget: u64, key: u64) -> Option<Ran> {
    let t0 = x.cpu.tsc;
    let stamp = chain::stamp(x, key);
    let tr = &x.cache.translator;
    let jumps = tr.jumps.as_ref()?;
    if let Code::At { chain, .. } = block.jit.code.get() {
        chain::remember(jumps, block, at + chain as usize, stamp);
    }
    let jumps = jumps.as_ptr();
    let cpu: *mut Cpu = &mut *x.cpu;
    let tlb = x.tlb.entries_ptr();
    let mut frame = Frame {
        cpu,
        tlb,
        jumps,
        budget,
        start_budget: budget,
        start_len: block.ops.len() as u64,
        cut: 0,
        stamp,
        epoch: x.cache.epoch,
        block,
        exec: (x as *mut Exec<'_>).cast(),
        t0,
        end: None,
    };
    // SAFETY: `at` is the entry of code `emit::compile` made for this block's
    // instructions, copied into the processor's code area in its current generation
    // (nothing has been written over it since); it follows the System V ABI and
    // accesses the `Cpu` and the TLB entries the frame points to (both alive and not
    // otherwise borrowed while it runs: `x` is held mutably here), the frame, and guest
    // RAM only at host addresses a TLB entry maps (whole pages of RAM kept alive by the
    // memory map for the run); the handlers it calls get `x` through the frame
    // (`call_handler`), while it waits for them.
    let done = unsafe {
        let f: emit::Entry = std::mem::transmute(at);
        f(&mut frame)
    };
    Some(Ran {
        retired: frame.retired(),
        done: done as usize,
        end: frame.end,
        block: frame.block,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn generation_of(_x: &Exec) -> Option<u32> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn code_address(_x: &Exec, _offset: u32) -> usize {
    0
}

#[cfg(not(target_arch = "x86_64"))]
fn enter(_x: &mut Exec, _at: usize, _block: &Block, _budget: u64, _key: u64) -> Option<Ran> {
    None
}

/// The processor's code area, made (with the flags routine and the check routine in its
/// head) at the first compilation.
#[cfg(target_arch = "x86_64")]
fn code_area(tr: &mut Translator) -> Result<&mut area::CodeArea, TranslateError> {
    if tr.area.is_none() {
        let size = match tr.area_size {
            0 => area::SIZE,
            n => n.next_multiple_of(4096),
        };
        let mut a = area::CodeArea::new(size)?;
        let routine = emit::flags_routine()?;
        let check = emit::check_routine(check_bytes as *const () as usize)?;
        let mut head = [0usize; 2];
        for (code, at) in [&routine, &check].into_iter().zip(&mut head) {
            if !a.fits(code.len()) {
                return Err(TranslateError::TooBig(code.len()));
            }
            let offset = a.put(code);
            *at = a.address(offset);
        }
        [tr.routine, tr.check_routine] = head;
        a.seal_head();
        tr.area = Some(a);
        tr.jumps = Some(chain::JumpCache::new());
    }
    tr.area
        .as_mut()
        .ok_or(TranslateError::Assemble("no code area".into()))
}

/// Compiles `block`'s covered prefix into the code area; `None` when there is none or
/// compiling failed (the block stays interpreted either way).
#[cfg(target_arch = "x86_64")]
fn translate(x: &mut Exec, block: &Block) -> Option<Code> {
    let start = std::time::Instant::now();
    let kinds: Vec<cover::Kind> = block.ops.iter().map_while(cover::classify).collect();
    let user = x.cpu.cpl() == 3;
    let tr = &mut x.cache.translator;
    if !worth_compiling(&kinds, block.ops.len()) {
        tr.stats.uncovered += 1;
        return None;
    }
    let made = code_area(tr).map(|_| ()).and_then(|()| {
        emit::compile(
            &block.ops,
            &kinds,
            emit::Context {
                block_ip: block.ip,
                routine: tr.routine,
                handler: call_handler as *const () as usize,
                check_routine: tr.check_routine,
                need_read: crate::tlb::need(Access::Read, user),
                need_write: crate::tlb::need(Access::Write, user),
                // A block that may change the mode ends the run loop's chaining too.
                chains: block
                    .keeps_mode
                    .then_some(block.jit.chains.as_ptr() as usize),
            },
        )
    });
    let (Ok((code, chain, exits)), Some(area)) = (made, tr.area.as_mut()) else {
        tr.stats.failed += 1;
        return None;
    };
    if !area.fits(code.len()) {
        // Full: everything compiled so far goes (blocks compile again when they run).
        area.flush();
        tr.stats.flushes += 1;
        if !area.fits(code.len()) {
            tr.stats.failed += 1;
            return None;
        }
    }
    let offset = area.put(&code);
    chain::fix(block, exits);
    tr.stats.blocks += 1;
    tr.stats.instructions += kinds.len() as u64;
    tr.stats.bytes += code.len() as u64;
    tr.stats.nanos += start.elapsed().as_nanos() as u64;
    Some(Code::At {
        offset,
        generation: area.generation(),
        chain,
        user,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn translate(_x: &mut Exec, _block: &Block) -> Option<Code> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Stop;

    fn ran(retired: u64, done: usize, end: Option<End>) -> Ran {
        Ran {
            retired,
            done,
            end,
            block: std::ptr::null(),
        }
    }

    #[test]
    fn an_entry_that_did_nothing_or_exited_at_once_is_idle() {
        assert!(idle_entry(&ran(0, 0, None)), "the first instruction bailed");
        let exit = Some(End::Stopped(Stop::Exit));
        assert!(idle_entry(&ran(0, 0, exit)), "an OUT first");
        assert!(
            idle_entry(&ran(2, 0, exit)),
            "dec; jnz, then the OUT's block"
        );
        assert!(
            idle_entry(&ran(4, 3, exit)),
            "seven instructions, then an exit"
        );
    }

    #[test]
    fn an_entry_that_ran_code_or_faulted_is_not_idle() {
        assert!(!idle_entry(&ran(0, 1, None)), "an instruction done");
        assert!(!idle_entry(&ran(500, 2, None)), "blocks, then a bail");
        let exit = Some(End::Stopped(Stop::Exit));
        assert!(
            !idle_entry(&ran(6, 2, exit)),
            "eight instructions before the exit"
        );
        assert!(
            !idle_entry(&ran(0, 0, Some(End::Stopped(Stop::Fault)))),
            "a #PF is the guest's"
        );
        assert!(
            !idle_entry(&ran(0, 0, Some(End::Ended))),
            "a handler ended the block"
        );
    }
}
