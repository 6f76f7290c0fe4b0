//! A simulated vCPU: runs guest code until an intercept, with MSHV's semantics.

use crate::access::Ctx;
use crate::cpu::Cpu;
use crate::decode::{DecodeCache, Fetched};
use crate::exception::Delivery;
use crate::memmap::MemMap;
use crate::mmu::{walk_with, Access, Tlb};
use crate::stop::Stop;
use crate::{exits, pagesync, registers, SimConfig};
use hv_core::backend::check_batch;
use hv_core::{
    Canceller, Counters, Exit, ExitMessage, HostRegion, HvError, RegisterPageMode, RegisterPagePtr,
    RegisterValue, Result, RunLimits, VcpuBackend,
};
use iced_x86::{Formatter, IntelFormatter};
use mshv_bindings::*;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Units of work (instructions, string iterations) between checks of the cancel flag
/// and the clock: about ten microseconds of guest time, so a deadline or a cancel is
/// honoured well within a millisecond whatever the guest executes.
const POLL_INTERVAL: u64 = 1024;

pub struct SimVcpu {
    index: u32,
    cpu: Cpu,
    config: Arc<SimConfig>,
    memory: Arc<Mutex<Arc<MemMap>>>,
    snapshot: Arc<MemMap>,
    tlb: Tlb,
    cache: DecodeCache,
    page: Option<(Arc<HostRegion>, RegisterPagePtr)>,
    counters: Counters,
    canceller: Canceller,
    flush_pending: bool,
    /// CPUID answers the VMM registered (HVCALL_REGISTER_INTERCEPT_RESULT's model).
    cpuid: Vec<hv_core::CpuidResult>,
    /// Guest instructions retired, over the vCPU's life.
    pub instructions: u64,
}

impl SimVcpu {
    pub(crate) fn new(
        index: u32,
        config: Arc<SimConfig>,
        memory: Arc<Mutex<Arc<MemMap>>>,
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
        Ok(SimVcpu {
            index,
            cpu: Cpu::reset(index),
            config,
            memory,
            snapshot: Arc::new(MemMap::default()),
            tlb: Tlb::default(),
            cache: DecodeCache::default(),
            page,
            counters: Counters::default(),
            canceller: Canceller::default(),
            flush_pending: true,
            cpuid: Vec::new(),
            instructions: 0,
        })
    }

    /// The architectural state (for tests and diagnostics).
    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }

    fn page_valid_mode(&self) -> Option<RegisterPagePtr> {
        match (&self.page, self.config.register_page) {
            (Some((_, p)), RegisterPageMode::On) => Some(*p),
            _ => None,
        }
    }

    fn finish(&mut self, msg: &mut ExitMessage, stop: &Stop, fetched: Option<&Fetched>) {
        let t = exits::build(msg, &self.cpu, self.index, stop, fetched);
        if let Some(p) = self.page_valid_mode() {
            pagesync::fill(&p, &self.cpu);
        }
        self.counters.count_exit(t);
    }

    fn unsupported(&self, f: &Fetched) -> HvError {
        let mut text = String::new();
        IntelFormatter::new().format(&f.ins, &mut text);
        let bytes = f.bytes[..f.ins.len()]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        HvError::UnsupportedInstruction {
            rip: self.cpu.rip,
            text,
            bytes,
        }
    }
}

const ENOMEM: i32 = 12;

impl VcpuBackend for SimVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn run(&mut self, msg: &mut ExitMessage, limits: &RunLimits) -> Result<Exit> {
        self.counters.runs += 1;
        if self.canceller.take() {
            return Ok(Exit::Cancelled);
        }
        if let Some(p) = self.page_valid_mode() {
            // Dirty classes are applied after this exit's set-register hypercalls, which
            // already changed the VP: a stale dirty class on the page wins, as on MSHV.
            if p.is_valid() && pagesync::apply_dirty(&p, &mut self.cpu) {
                self.flush_pending = true;
            }
            p.write_u8(hv_core::page::ISVALID, 0);
        }
        if let Ok(m) = self.memory.lock() {
            self.snapshot = Arc::clone(&m);
        }
        self.tlb.sync_generation(self.snapshot.generation);
        if std::mem::take(&mut self.flush_pending) {
            self.tlb.flush();
        }
        self.cpu.halted = false;
        match self.execute(limits) {
            Outcome::Stop(stop, fetched) => {
                self.finish(msg, &stop, fetched.as_ref());
                Ok(Exit::Message)
            }
            Outcome::Cancelled => {
                self.canceller.take();
                Ok(Exit::Cancelled)
            }
            Outcome::InstructionLimit => Ok(Exit::InstructionLimit),
            Outcome::Timeout => Ok(Exit::Timeout),
            Outcome::Unsupported(fetched) => {
                if let Some(p) = self.page_valid_mode() {
                    pagesync::fill(&p, &self.cpu);
                }
                Err(self.unsupported(&fetched))
            }
        }
    }

    fn get_registers(&mut self, ids: &[u32], out: &mut [RegisterValue]) -> Result<()> {
        check_batch(ids, out.len())?;
        self.counters.get_registers += 1;
        for (id, slot) in ids.iter().zip(out.iter_mut()) {
            *slot = registers::get(&self.cpu, *id)?;
        }
        self.counters.registers_read += ids.len() as u64;
        Ok(())
    }

    fn set_registers(&mut self, ids: &[u32], values: &[RegisterValue]) -> Result<()> {
        check_batch(ids, values.len())?;
        // Validate the whole batch first: a rejected batch changes nothing.
        let mut scratch = self.cpu.clone();
        let mut flush = false;
        for (id, v) in ids.iter().zip(values) {
            flush |= registers::set(&mut scratch, *id, *v)?;
        }
        self.counters.set_registers += 1;
        self.counters.registers_written += ids.len() as u64;
        self.cpu = scratch;
        self.flush_pending |= flush;
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
            .lock()
            .map(|m| Arc::clone(&m))
            .unwrap_or_default();
        match walk_with(&self.cpu, &mem, gva, access, user, set_bits) {
            Ok(gpa) => {
                let code = match mem.lookup(gpa) {
                    crate::memmap::Target::Ram { .. } => {
                        hv_translate_gva_result_code_HV_TRANSLATE_GVA_SUCCESS
                    }
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
        self.instructions
    }
}

impl Drop for SimVcpu {
    /// The page's memory goes with the vCPU, even where JavaScript still holds a buffer.
    fn drop(&mut self) {
        if let Some((region, _)) = &self.page {
            region.retire();
        }
    }
}

/// How the interpreter loop ended.
enum Outcome {
    Stop(Stop, Option<Fetched>),
    Cancelled,
    InstructionLimit,
    Timeout,
    Unsupported(Fetched),
}

impl SimVcpu {
    /// The interpreter loop: fetch, execute, deliver guest exceptions, until a stop.
    fn execute(&mut self, limits: &RunLimits) -> Outcome {
        let deadline = limits.deadline;
        let budget = limits.max_instructions.unwrap_or(u64::MAX);
        let snapshot = Arc::clone(&self.snapshot);
        let mut ctx = Ctx {
            cpu: &mut self.cpu,
            mem: &snapshot,
            tlb: &mut self.tlb,
            config: &self.config,
            iterations: 0,
            cpuid: &self.cpuid,
        };
        let mut executed = 0u64;
        // An injected exception is taken before the first instruction, as on resume
        // from an intercept; failing to deliver it shuts the processor down.
        // Only valid events are ever stored (set_registers checks them).
        if let Ok(Some(e)) =
            hv_core::PendingException::decode(std::mem::take(&mut ctx.cpu.pending_event))
        {
            if let Delivery::TripleFault = ctx.raise(e.vector, e.error_code) {
                return Outcome::Stop(
                    Stop::Exception {
                        vector: e.vector,
                        error_code: e.error_code,
                    },
                    None,
                );
            }
        }
        let outcome = loop {
            if executed >= budget {
                break Outcome::InstructionLimit;
            }
            // Every POLL_INTERVAL instructions, and as soon as string instructions have
            // done as many iterations since the last look.
            if executed & (POLL_INTERVAL - 1) == POLL_INTERVAL - 1
                || ctx.iterations >= POLL_INTERVAL
            {
                ctx.iterations = 0;
                if self.canceller.is_cancelled() {
                    break Outcome::Cancelled;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break Outcome::Timeout;
                }
            }
            let (stop, fetched) = match self.cache.fetch(&mut ctx) {
                Ok(i) => match ctx.step(self.cache.instruction(i)) {
                    Ok(()) => {
                        executed += 1;
                        ctx.cpu.tsc = ctx.cpu.tsc.wrapping_add(1);
                        continue;
                    }
                    Err(Stop::Unsupported) => match self.cache.capture(&mut ctx, i) {
                        Some(f) => break Outcome::Unsupported(f),
                        None => (Stop::Unsupported, None),
                    },
                    Err(stop) => (stop, self.cache.capture(&mut ctx, i)),
                },
                Err(stop) => (stop, None),
            };
            // Guest exceptions go through the guest's IDT; only a triple fault exits.
            let (vector, error_code) = match stop {
                Stop::PageFault(pf) => {
                    ctx.cpu.cr2 = pf.address;
                    (crate::stop::PF, Some(pf.error_code))
                }
                Stop::Exception { vector, error_code } => (vector, error_code),
                // HLT retires here; a port, CPUID, MSR or data MMIO access retires when
                // the VMM completes it (and advances RIP): each counts as an instruction.
                Stop::Halt
                | Stop::Io { .. }
                | Stop::Msr { .. }
                | Stop::Mmio {
                    access: Access::Read | Access::Write,
                    ..
                } => {
                    executed += 1;
                    break Outcome::Stop(stop, fetched);
                }
                _ => break Outcome::Stop(stop, fetched),
            };
            match ctx.raise(vector, error_code) {
                Delivery::Delivered => executed += 1,
                Delivery::TripleFault => break Outcome::Stop(stop, fetched),
            }
        };
        self.instructions += executed;
        outcome
    }
}
