//! The JavaScript binding: `Hypervisor`, `Vm`, `Vcpu` and `GuestMemory` classes, and the
//! layout tables TypeScript reads its constants from.

#![deny(clippy::all)]
// napi exports are reached from JavaScript only, never from Rust tests.
#![cfg_attr(test, allow(dead_code))]

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
