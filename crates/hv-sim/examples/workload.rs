//! Runs one of issue #20's 64-bit workloads (fib, checksum, copy, alu) for a number of
//! guest instructions and prints the rate: a profiling target (`perf record`).
//!
//!   cargo run --release -p hv-sim --example workload -- fib 200000000

mod common;

use hv_core::regs::{pack_segment, pack_table};
use mshv_bindings::*;

/// The workloads' machine code at 0x100000 (assembled by `assemble()` from bench/interpreter.ts).
fn code(name: &str) -> Option<Vec<u8>> {
    Some(match name {
        // again: mov ecx, 1000000; l: add eax, 1; xor ebx, eax; sub edx, 3; dec ecx; jnz l; jmp again
        "alu" => vec![
            0xb9, 0x40, 0x42, 0x0f, 0x00, 0x83, 0xc0, 0x01, 0x31, 0xc3, 0x83, 0xea, 0x03, 0xff,
            0xc9, 0x75, 0xf4, 0xeb, 0xed,
        ],
        // again: mov edi, 20; call fib; jmp again
        // fib: cmp edi, 2; jb small; push rdi; dec edi; call fib; pop rdi; push rax;
        //      sub edi, 2; call fib; pop rdx; add eax, edx; ret; small: mov eax, edi; ret
        "fib" => vec![
            0xbf, 0x14, 0x00, 0x00, 0x00, 0xe8, 0x02, 0x00, 0x00, 0x00, 0xeb, 0xf4, 0x83, 0xff,
            0x02, 0x72, 0x16, 0x57, 0xff, 0xcf, 0xe8, 0xf3, 0xff, 0xff, 0xff, 0x5f, 0x50, 0x83,
            0xef, 0x02, 0xe8, 0xe9, 0xff, 0xff, 0xff, 0x5a, 0x01, 0xd0, 0xc3, 0x89, 0xf8, 0xc3,
        ],
        // again: mov r9, 0x200000; mov ecx, 65536; l: movzx eax, byte [r9]; add edx, eax;
        //        mov [r9], dl; inc r9; dec ecx; jnz l; jmp again
        "checksum" => vec![
            0x49, 0xc7, 0xc1, 0x00, 0x00, 0x20, 0x00, 0xb9, 0x00, 0x00, 0x01, 0x00, 0x41, 0x0f,
            0xb6, 0x01, 0x01, 0xc2, 0x41, 0x88, 0x11, 0x49, 0xff, 0xc1, 0xff, 0xc9, 0x75, 0xf0,
            0xeb, 0xe2,
        ],
        // again: mov r9d, 0x200000; lea r10, [r9 + 0x80000]; mov ecx, 8192;
        //        l: mov rax, [r9]; mov [r10], rax; add r9, 8; add r10, 8; dec ecx; jnz l;
        //        jmp again
        "copy" => vec![
            0x41, 0xb9, 0x00, 0x00, 0x20, 0x00, 0x4d, 0x8d, 0x91, 0x00, 0x00, 0x08, 0x00, 0xb9,
            0x00, 0x20, 0x00, 0x00, 0x49, 0x8b, 0x01, 0x49, 0x89, 0x02, 0x49, 0x83, 0xc1, 0x08,
            0x49, 0x83, 0xc2, 0x08, 0xff, 0xc9, 0x75, 0xee, 0xeb, 0xda,
        ],
        _ => return None,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "fib".into());
    let count = common::arg(2, 200_000_000)?;
    let code = code(&name).ok_or("workloads: alu, fib, checksum, copy")?;
    // PML4 at 0x1000 -> PDPT at 0x2000 with one 1 GiB page.
    let pml4 = 0x2003u64.to_le_bytes();
    let pdpt = 0x83u64.to_le_bytes();
    let mut guest = common::vm_with(
        4 << 20,
        &[(0x10_0000, &code), (0x1000, &pml4), (0x2000, &pdpt)],
    )?;
    let data = pack_segment(0, 0xffff_ffff, 16, 0xc093);
    guest.vcpu.set_registers(
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
            [0x10_0000, 0],
            [0x8_0000, 0],
        ],
    )?;
    common::time_instructions(&name, guest.vcpu.as_mut(), count)
}
