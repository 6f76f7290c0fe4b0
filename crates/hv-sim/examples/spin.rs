//! Runs a simple integer loop for a fixed number of guest instructions and prints
//! the rate: a profiling target for the interpreter (`perf record`, callgrind).

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count = common::arg(1, 200_000_000)?;
    // l: add ax, 1; xor bx, ax; sub dx, 3; jmp l
    let code: &[u8] = &[0x83, 0xc0, 0x01, 0x31, 0xc3, 0x83, 0xea, 0x03, 0xeb, 0xf6];
    let mut guest = common::vm_with(1 << 20, &[(0x1000, code)])?;
    common::real_mode_at(guest.vcpu.as_mut(), 0x1000)?;
    common::time_instructions("spin", guest.vcpu.as_mut(), count)
}
