//! `hv-sim`: a software hypervisor that runs x86 guest code and behaves, at the
//! boundary a VMM sees, as the Microsoft Hypervisor does: the same `hv_message` exits,
//! the same register page semantics, and counted register hypercalls.
//!
//! The processor is `sim-cpu`; this crate is the hypervisor around it: partitions and
//! their guest memory, the intercepts (port I/O, accesses outside RAM or to
//! intercepted ranges, HLT, MSRs the VMM asked for), the exit messages, the register
//! page, the register hypercalls, and CPUID answered from the results the VMM
//! registered, as MSHV answers it.

pub mod apic;
mod clock;
mod env;
mod exec_lock;
mod exits;
mod pagesync;
mod registers;
mod state;
mod vcpu;
mod vm;

pub use clock::{EXIT_COST_NS, PAUSE_COST_NS};
pub use sim_cpu;
pub use vcpu::SimVcpu;
pub use vm::SimVm;

use hv_core::{
    BackendKind, ClockMode, HvBackend, RegisterPageMode, Result, UnknownMsr, VmBackend, VmConfig,
};

/// The per-VM settings the hypervisor consults.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub register_page: RegisterPageMode,
    pub intercept_msrs: Vec<u32>,
    pub unknown_msr: UnknownMsr,
    pub clock: ClockMode,
    /// The processor tier; `None`: the translator, or what `MSHV_SIM_CPU` names
    /// (`sim_cpu::Tier::from_env`, for test suites).
    pub cpu: Option<hv_core::CpuTier>,
}

/// The sim hypervisor.
#[derive(Debug, Default)]
pub struct SimHypervisor;

impl HvBackend for SimHypervisor {
    fn kind(&self) -> BackendKind {
        BackendKind::Sim
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn VmBackend>> {
        if config.hyperv {
            return Err(hv_core::HvError::Unsupported(
                "the sim models no Hyper-V enlightenments (hyperv: true needs the mshv backend)"
                    .into(),
            ));
        }
        Ok(Box::new(SimVm::new(SimConfig {
            register_page: config.register_page,
            intercept_msrs: config.intercept_msrs.clone(),
            unknown_msr: config.unknown_msr,
            // The sim's own clock is deterministic: replays are exact unless asked not to.
            clock: config.clock.unwrap_or(ClockMode::Deterministic),
            cpu: config.cpu,
        })))
    }
}
