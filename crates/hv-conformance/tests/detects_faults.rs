//! The checklist must fail on a backend that gets the facts wrong, or a host run that
//! passes proves nothing. Each test wraps the sim in one known defect (several are the
//! defects issue #18 found in this package's own backend) and requires the check
//! written for it to fail, naming what it saw.

use hv_conformance::{checklist, run_check};
use hv_core::message::ExitMessage;
use hv_core::page::DIRTY;
use hv_core::regs::RegisterValue;
use hv_core::{
    BackendKind, Canceller, Counters, CpuidResult, Exit, HostRegion, HvBackend, MemoryMapping,
    RegisterPagePtr, Result, RunLimits, VcpuBackend, VmBackend, VmConfig,
};
use hv_sim::SimHypervisor;
use mshv_bindings::hv_register_name_HV_REGISTER_PENDING_EVENT0;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Drops an ExtINT written to the pending-event register (a model that takes
    /// exceptions only, as the sim did before #28).
    DropsPendingExtInt,
    /// Drops registered CPUID results (a leaf-0-only intercept, as before #18).
    IgnoresCpuidResults,
    /// Reports instruction lengths one byte short.
    ShortInstructionLength,
    /// Ignores the register page's dirty bits.
    IgnoresDirtyBits,
    /// Accepts interrupt requests and delivers nothing.
    DropsInterrupts,
    /// Restores a state but for its general registers (RIP, RFLAGS, RAX...).
    StateSkipsGeneralRegisters,
    /// Accepts breakpoints and steps, and stops nowhere.
    IgnoresDebugState,
    /// Logs no dirty page.
    LogsNothing,
}

/// An interrupt path that says yes and does nothing.
struct Deaf(Arc<dyn hv_core::Interrupts>);

impl hv_core::Interrupts for Deaf {
    fn request(&self, r: &hv_core::InterruptRequest) -> Result<()> {
        r.check()
    }
    fn guest_time(&self) -> u64 {
        self.0.guest_time()
    }
    fn set_device_deadline(&self, d: Option<u64>) {
        self.0.set_device_deadline(d)
    }
    fn set_guest_time(&self, ns: u64) {
        self.0.set_guest_time(ns)
    }
}

struct Faulty(Fault);
struct FaultyVm(Fault, Box<dyn VmBackend>);
struct FaultyVcpu(Fault, Box<dyn VcpuBackend>);

impl HvBackend for Faulty {
    fn kind(&self) -> BackendKind {
        BackendKind::Sim
    }
    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn VmBackend>> {
        Ok(Box::new(FaultyVm(self.0, SimHypervisor.create_vm(config)?)))
    }
}

impl VmBackend for FaultyVm {
    fn map_memory(&mut self, mapping: MemoryMapping) -> Result<()> {
        self.1.map_memory(mapping)
    }
    fn unmap_memory(&mut self, gpa: u64) -> Result<MemoryMapping> {
        self.1.unmap_memory(gpa)
    }
    fn intercept_range(&mut self, gpa: u64, size: u64) -> Result<()> {
        self.1.intercept_range(gpa, size)
    }
    fn create_vcpu(&mut self, index: u8) -> Result<Box<dyn VcpuBackend>> {
        Ok(Box::new(FaultyVcpu(self.0, self.1.create_vcpu(index)?)))
    }
    fn start_dirty_log(&mut self) -> Result<()> {
        self.1.start_dirty_log()
    }
    fn take_dirty_log(&mut self, gpa: u64) -> Result<Vec<u64>> {
        let bits = self.1.take_dirty_log(gpa)?;
        if self.0 == Fault::LogsNothing {
            return Ok(vec![0; bits.len()]);
        }
        Ok(bits)
    }
    fn stop_dirty_log(&mut self) -> Result<()> {
        self.1.stop_dirty_log()
    }
    fn interrupts(&self) -> Arc<dyn hv_core::Interrupts> {
        if self.0 == Fault::DropsInterrupts {
            return Arc::new(Deaf(self.1.interrupts()));
        }
        self.1.interrupts()
    }
}

impl VcpuBackend for FaultyVcpu {
    fn index(&self) -> u32 {
        self.1.index()
    }
    fn run(&mut self, msg: &mut ExitMessage, limits: &RunLimits) -> Result<Exit> {
        if self.0 == Fault::IgnoresDirtyBits {
            if let Some(p) = self.1.register_page() {
                p.write_u32(DIRTY, 0);
            }
        }
        let exit = self.1.run(msg, limits)?;
        if self.0 == Fault::ShortInstructionLength && exit == Exit::Message {
            // `hv_x64_intercept_message_header`: instruction_length is the low nibble
            // of the byte after vp_index, right after the 16-byte message header.
            let at = hv_core::message::PAYLOAD + 4;
            let b = msg.bytes[at];
            msg.bytes[at] = (b & 0xf0) | ((b & 0xf).saturating_sub(1));
        }
        Ok(exit)
    }
    fn get_registers(&mut self, ids: &[u32], out: &mut [RegisterValue]) -> Result<()> {
        self.1.get_registers(ids, out)
    }
    fn set_registers(&mut self, ids: &[u32], values: &[RegisterValue]) -> Result<()> {
        if self.0 == Fault::DropsPendingExtInt {
            let fixed: Vec<RegisterValue> = ids
                .iter()
                .zip(values)
                .map(|(&id, &v)| {
                    if id == hv_register_name_HV_REGISTER_PENDING_EVENT0 && (v[0] >> 1) & 7 == 5 {
                        [0, 0]
                    } else {
                        v
                    }
                })
                .collect();
            return self.1.set_registers(ids, &fixed);
        }
        self.1.set_registers(ids, values)
    }
    fn translate_gva(&mut self, gva: u64, flags: u64) -> Result<(u64, u32)> {
        self.1.translate_gva(gva, flags)
    }
    fn set_cpuid_results(&mut self, results: &[CpuidResult]) -> Result<()> {
        if self.0 == Fault::IgnoresCpuidResults {
            return Ok(());
        }
        self.1.set_cpuid_results(results)
    }
    fn state(&mut self) -> Result<hv_core::VcpuState> {
        self.1.state()
    }
    fn set_state(&mut self, state: &hv_core::VcpuState) -> Result<()> {
        if self.0 == Fault::StateSkipsGeneralRegisters {
            let mut s = state.clone();
            s.registers.retain(|(id, _)| {
                hv_core::regs::info(*id).map(|r| r.group)
                    != Some(hv_core::regs::RegisterGroup::General)
            });
            return self.1.set_state(&s);
        }
        self.1.set_state(state)
    }
    fn set_debug_state(&mut self, debug: &hv_core::DebugState) -> Result<()> {
        if self.0 == Fault::IgnoresDebugState {
            return Ok(());
        }
        self.1.set_debug_state(debug)
    }
    fn register_page(&self) -> Option<RegisterPagePtr> {
        self.1.register_page()
    }
    fn register_page_region(&self) -> Option<Arc<HostRegion>> {
        self.1.register_page_region()
    }
    fn canceller(&self) -> Canceller {
        self.1.canceller()
    }
    fn counters(&self) -> &Counters {
        self.1.counters()
    }
    fn reset_counters(&mut self) {
        self.1.reset_counters()
    }
}

/// Runs the named check on the sim with `fault` and returns its failure message.
fn failure(fault: Fault, check: &str) -> String {
    let c = checklist()
        .iter()
        .find(|c| c.name == check)
        .expect("a check of that name");
    assert!(
        run_check(c, &SimHypervisor).is_ok(),
        "{check} passes on the sim as it is"
    );
    match run_check(c, &Faulty(fault)) {
        Ok(detail) => panic!("{check} passed on a faulty backend: {detail}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pending_ext_int_catches_a_hypervisor_that_drops_the_event() {
    let e = failure(Fault::DropsPendingExtInt, "pending_ext_int");
    assert!(e.contains("expected a ioPort intercept"), "{e}");
}

#[test]
fn cpuid_results_catches_answers_that_never_reach_the_guest() {
    let e = failure(Fault::IgnoresCpuidResults, "cpuid_results");
    assert!(e.contains("EAX of CPUID 0x80000002"), "{e}");
}

#[test]
fn pio_out_catches_a_wrong_instruction_length() {
    let e = failure(Fault::ShortInstructionLength, "pio_out");
    assert!(e.contains("the instruction length"), "{e}");
}

#[test]
fn register_page_catches_dirty_bits_that_are_ignored() {
    let e = failure(Fault::IgnoresDirtyBits, "register_page");
    assert!(e.contains("RIP written through the page"), "{e}");
}

#[test]
fn interrupt_request_catches_requests_that_never_reach_the_guest() {
    let e = failure(Fault::DropsInterrupts, "interrupt_request");
    assert!(e.contains("the first port (the NMI handler's)"), "{e}");
}

#[test]
fn vcpu_state_catches_a_restore_that_drops_general_registers() {
    let e = failure(Fault::StateSkipsGeneralRegisters, "vcpu_state");
    assert!(e.contains("expected a ioPort intercept"), "{e}");
}

#[test]
fn debug_stops_catches_breakpoints_that_never_stop() {
    let e = failure(Fault::IgnoresDebugState, "debug_stops");
    assert!(e.contains("expected a exception intercept"), "{e}");
}

#[test]
fn dirty_log_catches_a_log_that_names_no_page() {
    let e = failure(Fault::LogsNothing, "dirty_log");
    assert!(e.contains("the pages written were 3 and 5"), "{e}");
}

#[test]
fn a_panicking_check_is_a_failure_not_an_abort() {
    fn panics(_: &dyn HvBackend) -> hv_conformance::Outcome {
        panic!("boom")
    }
    let c = hv_conformance::Check {
        name: "panics",
        summary: "panics",
        run: panics,
    };
    let e = run_check(&c, &SimHypervisor).unwrap_err().to_string();
    assert!(e.contains("boom"), "{e}");
}
