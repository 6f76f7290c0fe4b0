//! A simulated vCPU: the processor (`sim-cpu`) run until an intercept, with MSHV's
//! semantics around it (register page, exit messages, counters, cancel, deadlines).

use crate::env::SimEnv;
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
use sim_cpu::{Cpu, ExitInstruction, Processor, RunEnd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct SimVcpu {
    index: u32,
    processor: Processor,
    config: Arc<SimConfig>,
    memory: Arc<Mutex<Arc<PhysMap>>>,
    snapshot: Arc<PhysMap>,
    page: Option<(Arc<HostRegion>, RegisterPagePtr)>,
    counters: Counters,
    canceller: Canceller,
    flush_pending: bool,
    /// CPUID answers the VMM registered (HVCALL_REGISTER_INTERCEPT_RESULT's model).
    cpuid: Vec<hv_core::CpuidResult>,
}

impl SimVcpu {
    pub(crate) fn new(
        index: u32,
        config: Arc<SimConfig>,
        memory: Arc<Mutex<Arc<PhysMap>>>,
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
            processor: Processor::new(index == 0),
            config,
            memory,
            snapshot: Arc::new(PhysMap::default()),
            page,
            counters: Counters::default(),
            canceller: Canceller::default(),
            flush_pending: true,
            cpuid: Vec::new(),
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

    fn finish(&mut self, msg: &mut ExitMessage, exit: &sim_cpu::Exit, ins: &ExitInstruction) {
        let t = exits::build(msg, &self.processor.cpu, self.index, exit, ins);
        if let Some(p) = self.page_valid_mode() {
            pagesync::fill(&p, &self.processor.cpu);
        }
        self.counters.count_exit(t);
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
/// does at resume; a triple fault is an unrecoverable exception.
fn deliver_pending(
    processor: &mut Processor,
    mem: &PhysMap,
    env: &mut SimEnv,
) -> Option<sim_cpu::Exit> {
    let raw = std::mem::take(&mut processor.cpu.pending_event);
    // Only valid events are ever stored (set_registers checks them).
    let Ok(Some(e)) = hv_core::PendingException::decode(raw) else {
        return None;
    };
    processor.inject(mem, env, e.vector, e.error_code).err()
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
            if p.is_valid() && pagesync::apply_dirty(&p, &mut self.processor.cpu) {
                self.flush_pending = true;
            }
            p.write_u8(hv_core::page::ISVALID, 0);
        }
        if let Ok(m) = self.memory.lock() {
            self.snapshot = Arc::clone(&m);
        }
        if std::mem::take(&mut self.flush_pending) {
            self.processor.state_changed(&self.snapshot);
        }
        let cpuid = std::mem::take(&mut self.cpuid);
        let mut env = SimEnv {
            config: &self.config,
            cpuid: &cpuid,
            apic_id: self.index,
        };
        let snapshot = &*self.snapshot;
        let end = match deliver_pending(&mut self.processor, snapshot, &mut env) {
            Some(exit) => RunEnd::Exit(exit, ExitInstruction::default()),
            None => {
                let canceller = self.canceller.clone();
                let deadline = limits.deadline;
                let mut stopped = None;
                let mut poll = || {
                    if canceller.is_cancelled() {
                        stopped = Some(Exit::Cancelled);
                        return true;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        stopped = Some(Exit::Timeout);
                        return true;
                    }
                    false
                };
                let budget = limits.max_instructions.unwrap_or(u64::MAX);
                let end = self.processor.run(snapshot, &mut env, budget, &mut poll);
                match (end, stopped) {
                    (RunEnd::Stopped, Some(Exit::Cancelled)) => {
                        self.cpuid = cpuid;
                        self.canceller.take();
                        return Ok(Exit::Cancelled);
                    }
                    (RunEnd::Stopped, _) => {
                        self.cpuid = cpuid;
                        return Ok(Exit::Timeout);
                    }
                    (e, _) => e,
                }
            }
        };
        self.cpuid = cpuid;
        match end {
            RunEnd::Exit(sim_cpu::Exit::Unsupported, ins) => {
                if let Some(p) = self.page_valid_mode() {
                    pagesync::fill(&p, &self.processor.cpu);
                }
                Err(self.unsupported(&ins))
            }
            RunEnd::Exit(exit, ins) => {
                self.finish(msg, &exit, &ins);
                Ok(Exit::Message)
            }
            RunEnd::InstructionLimit => Ok(Exit::InstructionLimit),
            RunEnd::Stopped => Ok(Exit::Timeout),
        }
    }

    fn get_registers(&mut self, ids: &[u32], out: &mut [RegisterValue]) -> Result<()> {
        check_batch(ids, out.len())?;
        self.counters.get_registers += 1;
        for (id, slot) in ids.iter().zip(out.iter_mut()) {
            *slot = registers::get(&self.processor.cpu, *id)?;
        }
        self.counters.registers_read += ids.len() as u64;
        Ok(())
    }

    fn set_registers(&mut self, ids: &[u32], values: &[RegisterValue]) -> Result<()> {
        check_batch(ids, values.len())?;
        // Validate the whole batch first: a rejected batch changes nothing.
        let mut scratch = self.processor.cpu.clone();
        let mut flush = false;
        for (id, v) in ids.iter().zip(values) {
            flush |= registers::set(&mut scratch, *id, *v)?;
        }
        self.counters.set_registers += 1;
        self.counters.registers_written += ids.len() as u64;
        self.processor.cpu = scratch;
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
        if std::mem::take(&mut self.flush_pending) {
            // Control registers set since the last run (PAE's PDPTEs load with them).
            self.processor.state_changed(&mem);
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
}

impl Drop for SimVcpu {
    /// The page's memory goes with the vCPU, even where JavaScript still holds a buffer.
    fn drop(&mut self) {
        if let Some((region, _)) = &self.page {
            region.retire();
        }
    }
}
