//! Runs a guest that does nothing but port writes, completing each exit as a VMM
//! would (RIP past the OUT through the register page), and prints exits per second:
//! a profiling target for the exit path (`perf record`).

mod common;

use hv_core::page::{DIRTY, DIRTY_IP, RIP};
use hv_core::{ExitMessage, RunLimits};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count = common::arg(1, 5_000_000)?;
    // l: out 0x80, al; jmp l
    let code: &[u8] = &[0xe6, 0x80, 0xeb, 0xfc];
    let mut guest = common::vm_with(1 << 20, &[(0x1000, code)])?;
    common::real_mode_at(guest.vcpu.as_mut(), 0x1000)?;
    let mut msg = ExitMessage::default();
    let page = guest.vcpu.register_page().ok_or("no register page")?;
    let start = Instant::now();
    for _ in 0..count {
        guest.vcpu.run(&mut msg, &RunLimits::default())?;
        page.write_u64(RIP, page.read_u64(RIP) + 2);
        page.write_u32(DIRTY, DIRTY_IP);
    }
    let s = start.elapsed().as_secs_f64();
    println!("{count} exits in {s:.2} s: {:.0} exits/s", count as f64 / s);
    Ok(())
}
