//! Runs a simple integer loop for a fixed number of guest instructions and prints
//! the rate: a profiling target for the interpreter (`perf record`, callgrind).

use hv_core::regs::pack_segment;
use hv_core::{ExitMessage, HostRegion, HvBackend, MemoryMapping, RunLimits, VmConfig};
use hv_sim::SimHypervisor;
use mshv_bindings::*;
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000_000);
    let mut vm = SimHypervisor.create_vm(&VmConfig::default())?;
    let ram = Arc::new(HostRegion::new(1 << 20)?);
    // l: add ax, 1; xor bx, ax; sub dx, 3; jmp l
    ram.write(
        0x1000,
        &[0x83, 0xc0, 0x01, 0x31, 0xc3, 0x83, 0xea, 0x03, 0xeb, 0xf6],
    )?;
    vm.map_memory(MemoryMapping {
        gpa: 0,
        region: ram,
        writable: true,
        executable: true,
    })?;
    let mut vcpu = vm.create_vcpu(0)?;
    vcpu.set_registers(
        &[
            hv_register_name_HV_X64_REGISTER_CS,
            hv_register_name_HV_X64_REGISTER_RIP,
        ],
        &[pack_segment(0, 0xffff, 0, 0x9b), [0x1000, 0]],
    )?;
    let mut msg = ExitMessage::default();
    let start = Instant::now();
    vcpu.run(
        &mut msg,
        &RunLimits {
            max_instructions: Some(count),
            deadline: None,
            ..RunLimits::default()
        },
    )?;
    let s = start.elapsed().as_secs_f64();
    println!(
        "{} instructions in {s:.3} s: {:.1} M/s",
        vcpu.instructions(),
        vcpu.instructions() as f64 / s / 1e6
    );
    Ok(())
}
