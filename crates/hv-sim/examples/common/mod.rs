//! What the profiling examples share: a VM with code in RAM, the command-line count,
//! and the rate they print.

// Each example is its own crate and uses part of this module.
#![allow(dead_code)]

use hv_core::regs::pack_segment;
use hv_core::{
    ExitMessage, HostRegion, HvBackend, MemoryMapping, RunLimits, VcpuBackend, VmBackend, VmConfig,
};
use hv_sim::SimHypervisor;
use mshv_bindings::*;
use std::sync::Arc;
use std::time::Instant;

/// An example's error: whatever went wrong, printed by `main`.
pub type Error = Box<dyn std::error::Error>;

/// Command-line argument `n` as a number, or `default` when absent.
pub fn arg(n: usize, default: u64) -> Result<u64, Error> {
    Ok(std::env::args()
        .nth(n)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default))
}

/// A sim VM and its vCPU 0.
pub struct Guest {
    /// Owns the partition: kept alive while the vCPU runs.
    pub vm: Box<dyn VmBackend>,
    pub vcpu: Box<dyn VcpuBackend>,
}

/// A sim VM with `ram` bytes of RAM at 0 holding each `(gpa, bytes)` of `contents`,
/// and its vCPU 0 in RESET state.
pub fn vm_with(ram: usize, contents: &[(usize, &[u8])]) -> Result<Guest, Error> {
    let mut vm = SimHypervisor.create_vm(&VmConfig::default())?;
    let region = Arc::new(HostRegion::new(ram)?);
    for (gpa, bytes) in contents {
        region.write(*gpa, bytes)?;
    }
    vm.map_memory(MemoryMapping {
        gpa: 0,
        region,
        writable: true,
        executable: true,
    })?;
    let vcpu = vm.create_vcpu(0)?;
    Ok(Guest { vm, vcpu })
}

/// Real mode at CS = 0, IP = `ip`.
pub fn real_mode_at(vcpu: &mut dyn VcpuBackend, ip: u64) -> hv_core::Result<()> {
    vcpu.set_registers(
        &[
            hv_register_name_HV_X64_REGISTER_CS,
            hv_register_name_HV_X64_REGISTER_RIP,
        ],
        &[pack_segment(0, 0xffff, 0, 0x9b), [ip, 0]],
    )
}

/// Runs `count` guest instructions (or to the first exit) and prints the rate as
/// `name: N instructions in S s: R M/s`.
pub fn time_instructions(name: &str, vcpu: &mut dyn VcpuBackend, count: u64) -> Result<(), Error> {
    let mut msg = ExitMessage::default();
    let start = Instant::now();
    vcpu.run(
        &mut msg,
        &RunLimits {
            max_instructions: Some(count),
            ..RunLimits::default()
        },
    )?;
    let s = start.elapsed().as_secs_f64();
    println!(
        "{name}: {} instructions in {s:.3} s: {:.1} M/s",
        vcpu.instructions(),
        vcpu.instructions() as f64 / s / 1e6
    );
    Ok(())
}
