//! Runs a guest that does nothing but port writes, completing each exit as a VMM
//! would (RIP past the OUT through the register page), and prints exits per second:
//! a profiling target for the exit path (`perf record`). With `long`, the guest is
//! 64-bit code (where the translator runs; `MSHV_SIM_CPU` picks the tier) and loops as
//! `npm run bench`'s exit path by tier does: `l: out 0x80, al; dec ecx; jnz l`.
//!
//!   cargo run --release -p hv-sim --example pio -- 5000000 long

mod common;

use hv_core::page::{DIRTY, DIRTY_IP, RIP};
use hv_core::{ExitMessage, RunLimits};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count = common::arg(1, 5_000_000)?;
    let long = std::env::args().nth(2).as_deref() == Some("long");
    let mut guest = if long {
        // mov ecx, -1; l: out 0x80, al; dec ecx; jnz l
        let code: &[u8] = &[
            0xb9, 0xff, 0xff, 0xff, 0xff, 0xe6, 0x80, 0xff, 0xc9, 0x75, 0xfa,
        ];
        let [pml4, pdpt] = common::LONG_MODE_TABLES;
        let mut guest = common::vm_with(4 << 20, &[(0x10_0000, code), pml4, pdpt])?;
        common::long_mode_at(guest.vcpu.as_mut(), 0x10_0000)?;
        guest
    } else {
        // l: out 0x80, al; jmp l
        let code: &[u8] = &[0xe6, 0x80, 0xeb, 0xfc];
        let mut guest = common::vm_with(1 << 20, &[(0x1000, code)])?;
        common::real_mode_at(guest.vcpu.as_mut(), 0x1000)?;
        guest
    };
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
