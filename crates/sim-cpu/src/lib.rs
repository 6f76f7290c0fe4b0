//! `sim-cpu`: the x86-64 processor of the sim backend.
//!
//! It executes guest code the way the Intel SDM and AMD APM describe: real, V86, 16- and
//! 32-bit protected, compatibility and 64-bit mode; segmentation and paging with their
//! checks and faults; exceptions and interrupts through the IVT and IDT with privilege
//! changes, task gates and double faults; hardware task switches; the system
//! instructions. Instructions are decoded once with iced-x86 and compiled into blocks
//! of handlers; arithmetic flags are computed lazily.
//!
//! The hypervisor around it (`hv-sim`) owns guest memory and the exits: the processor
//! stops with an [`Exit`] where MSHV would intercept (port I/O, MMIO, HLT, intercepted
//! MSRs) and asks its [`Env`] for what the hypervisor decides (CPUID results, which
//! MSRs exit).

mod cache;
pub mod cpuid;
pub mod decode;
mod exec;
pub mod fault;
pub mod flags;
pub mod float;
pub mod fpu;
mod interrupt;
pub mod msr;
mod ops;
pub mod paging;
pub mod phys;
mod run;
mod segment;
pub mod state;
mod task;
mod tlb;

pub use exec::Exec;
pub use fault::{Exit, Fault};
pub use hv_core::UnknownMsr;
pub use run::{ExitInstruction, Processor, RunEnd, POLL_INTERVAL};
pub use state::{Cpu, Segment, Table};

/// What the hypervisor decides for the processor.
pub trait Env {
    /// The CPUID answer for `leaf`/`subleaf`, given the processor's own.
    fn cpuid(&mut self, leaf: u32, subleaf: u32, native: [u32; 4]) -> [u32; 4];
    /// Whether RDMSR/WRMSR of `msr` exits to the VMM.
    fn msr_exits(&self, msr: u32) -> bool;
    /// What an MSR the processor does not implement does.
    fn unknown_msr(&self) -> UnknownMsr;
    /// The processor's local APIC id.
    fn apic_id(&self) -> u32;
}
