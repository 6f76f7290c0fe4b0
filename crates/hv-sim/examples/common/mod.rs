//! What the profiling examples share: a VM with code in RAM, the command-line count,
//! and the rate they print.

// Each example is its own crate and uses part of this module.
#![allow(dead_code)]

use hv_core::regs::{pack_segment, pack_table};
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

/// 64-bit mode at RIP = `ip`, flat segments, RSP = 0x80000: the page tables are a
/// PML4 at 0x1000 and a PDPT at 0x2000 mapping the first GiB with one 1 GiB page,
/// which [`LONG_MODE_TABLES`] gives to [`vm_with`].
pub fn long_mode_at(vcpu: &mut dyn VcpuBackend, ip: u64) -> hv_core::Result<()> {
    let data = pack_segment(0, 0xffff_ffff, 16, 0xc093);
    vcpu.set_registers(
        &[
            hv_register_name_HV_X64_REGISTER_CS,
            hv_register_name_HV_X64_REGISTER_SS,
            hv_register_name_HV_X64_REGISTER_DS,
            hv_register_name_HV_X64_REGISTER_GDTR,
            hv_register_name_HV_X64_REGISTER_CR3,
            hv_register_name_HV_X64_REGISTER_CR4,
            hv_register_name_HV_X64_REGISTER_EFER,
            hv_register_name_HV_X64_REGISTER_CR0,
            hv_register_name_HV_X64_REGISTER_RIP,
            hv_register_name_HV_X64_REGISTER_RSP,
        ],
        &[
            pack_segment(0, 0xffff_ffff, 8, 0xa09b),
            data,
            data,
            pack_table(0, 0),
            [0x1000, 0],
            [1 << 5, 0],
            [(1 << 8) | (1 << 10), 0],
            [0x8000_0011, 0],
            [ip, 0],
            [0x8_0000, 0],
        ],
    )
}

/// The page tables [`long_mode_at`] points CR3 at, as `(gpa, bytes)` for [`vm_with`]:
/// PML4[0] -> the PDPT at 0x2000, PDPT[0] a 1 GiB page at 0.
pub const LONG_MODE_TABLES: [(usize, &[u8]); 2] = [
    (0x1000, &[0x03, 0x20, 0, 0, 0, 0, 0, 0]),
    (0x2000, &[0x83, 0, 0, 0, 0, 0, 0, 0]),
];

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
