//! `hv-sim`: a software hypervisor that runs x86 guest code and behaves, at the
//! boundary a VMM sees, as the Microsoft Hypervisor does: the same `hv_message` exits,
//! the same register page semantics, and counted register hypercalls.
//!
//! The interpreter decodes with `iced-x86` and executes real, protected and long mode
//! code with paging. It stops where MSHV intercepts: port I/O, accesses outside guest
//! RAM or to intercepted ranges, HLT, and MSRs when asked; CPUID is answered from the
//! results the VMM registered, as MSHV answers it.

mod access;
pub mod alu;
pub mod cpu;
mod cpuid;
mod decode;
mod exception;
mod exec;
mod exits;
pub mod memmap;
pub mod mmu;
mod pagesync;
mod registers;
mod stop;
mod string;
mod system;
mod vcpu;
mod vm;

pub use vcpu::SimVcpu;
pub use vm::SimVm;

use hv_core::{BackendKind, HvBackend, RegisterPageMode, Result, UnknownMsr, VmBackend, VmConfig};

/// The per-VM settings the interpreter consults.
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub register_page: RegisterPageMode,
    pub intercept_msrs: Vec<u32>,
    pub unknown_msr: UnknownMsr,
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
        })))
    }
}
