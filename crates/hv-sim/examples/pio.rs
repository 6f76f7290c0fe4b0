//! Runs a guest that does nothing but port writes, completing each exit as a VMM
//! would (RIP past the OUT through the register page), and prints exits per second:
//! a profiling target for the exit path (`perf record`).

use hv_core::page::{DIRTY, DIRTY_IP, RIP};
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
        .unwrap_or(5_000_000);
    let mut vm = SimHypervisor.create_vm(&VmConfig::default())?;
    let ram = Arc::new(HostRegion::new(1 << 20)?);
    // l: out 0x80, al; jmp l
    ram.write(0x1000, &[0xe6, 0x80, 0xeb, 0xfc])?;
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
    let page = vcpu.register_page().ok_or("no register page")?;
    let start = Instant::now();
    for _ in 0..count {
        vcpu.run(&mut msg, &RunLimits::default())?;
        page.write_u64(RIP, page.read_u64(RIP) + 2);
        page.write_u32(DIRTY, DIRTY_IP);
    }
    let s = start.elapsed().as_secs_f64();
    println!("{count} exits in {s:.2} s: {:.0} exits/s", count as f64 / s);
    Ok(())
}
