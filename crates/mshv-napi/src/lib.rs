//! The JavaScript binding: `Hypervisor`, `Vm`, `Vcpu` and `GuestMemory` classes, and the
//! layout tables TypeScript reads its constants from.

#![deny(clippy::all)]

mod buffers;
mod errors;
mod hypervisor;
mod layout;
mod memory;
mod vcpu;
mod vm;

pub use hypervisor::Hypervisor;
pub use memory::GuestMemory;
pub use vcpu::Vcpu;
pub use vm::Vm;
