//! Runs a snippet of x86-64 machine code natively, on the host CPU, from a given
//! register state over a scratch memory buffer, and returns the state after it.
//!
//! The reference for differential tests: the sim's interpreter (Rust tests) and the
//! TypeScript MMIO emulator (through the `host-exec` binary) must compute what the
//! hardware computes for the same instruction. Test-only; never shipped.
//!
//! The snippet runs on the host's stack with every GPR but RSP loaded from the state,
//! so it must not fault, must leave RSP balanced and must not jump outside itself.
#![cfg(target_arch = "x86_64")]

mod fault;
mod wrapper;

pub use wrapper::{run, FxImage, HostExecError, HostState, FLAGS_IN};
