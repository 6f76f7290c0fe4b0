//! The decode cache never runs stale code: guest stores into its own code and VMM
//! writes to guest memory between runs are both seen on the next execution.

mod common;

use common::*;
use hv_core::Exit;
use mshv_bindings::*;

#[test]
fn self_modifying_code_runs_the_new_bytes() {
    let mut g = guest();
    // 0x1000: mov al, 1          (b0 01)  <- its immediate is patched below
    // 0x1002: out 0x80, al       (e6 80)
    // 0x1004: mov byte [0x1001], 2 (c6 06 01 10 02)
    // 0x1009: jmp 0x1000         (eb f5)
    g.load(
        0x1000,
        &[
            0xb0, 0x01, 0xe6, 0x80, 0xc6, 0x06, 0x01, 0x10, 0x02, 0xeb, 0xf5,
        ],
    );
    g.real_mode(0x1000);
    let mut seen = vec![];
    for _ in 0..2 {
        assert_eq!(g.run(), Exit::Message);
        seen.push(g.get(hv_register_name_HV_X64_REGISTER_RAX) as u8);
        g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x1004);
    }
    assert_eq!(seen, [1, 2]);
}

#[test]
fn a_vmm_write_to_guest_code_between_runs_is_seen() {
    let mut g = guest();
    g.load(0x1000, &[0xb0, 0x05, 0xe6, 0x80]); // mov al, 5; out 0x80, al
    g.real_mode(0x1000);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RAX) as u8, 5);
    g.load(0x1000, &[0xb0, 0x07]);
    g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x1000);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RAX) as u8, 7);
}

#[test]
fn an_instruction_across_a_page_boundary_decodes_from_both_pages() {
    let mut g = guest();
    // mov eax, 0x11223344 (66 b8 44 33 22 11) starting 3 bytes before 0x2000; out 0x80, al
    g.load(0x1ffd, &[0x66, 0xb8, 0x44, 0x33, 0x22, 0x11, 0xe6, 0x80]);
    g.real_mode(0x1ffd);
    for _ in 0..2 {
        assert_eq!(g.run(), Exit::Message);
        assert_eq!(
            g.get(hv_register_name_HV_X64_REGISTER_RAX) as u32,
            0x1122_3344
        );
        g.load(0x2000, &[0x55]); // the second page changes: the cache must see it
        g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x1ffd);
        assert_eq!(g.run(), Exit::Message);
        assert_eq!(
            g.get(hv_register_name_HV_X64_REGISTER_RAX) as u32,
            0x1122_5544
        );
        g.load(0x2000, &[0x33]);
        g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x1ffd);
    }
}
