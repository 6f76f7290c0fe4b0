//! The JavaScript binding: `Hypervisor`, `Vm`, `Vcpu`, `RegisterPage` and `GuestMemory` classes, and the
//! layout tables TypeScript reads its constants from.

#![deny(clippy::all)]
// napi exports are reached from JavaScript only, never from Rust tests.
#![cfg_attr(test, allow(dead_code))]

mod buffers;
mod errors;
mod events;
mod hypervisor;
mod layout;
mod live;
mod memory;
mod register_page;
mod runner;
mod vcpu;
mod vm;

pub use hypervisor::Hypervisor;
pub use memory::GuestMemory;
pub use register_page::RegisterPage;
pub use vcpu::Vcpu;
pub use vm::Vm;
