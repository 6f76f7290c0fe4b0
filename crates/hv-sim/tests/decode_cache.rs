//! The decode cache never runs stale code: guest stores into its own code and VMM
//! writes to guest memory between runs are both seen on the next execution.

mod common;

use common::*;
use hv_core::regs::pack_segment;
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

/// The run after an exit starts with the block linked from the one that exited; that
/// block must still be checked against memory the VMM changed meanwhile.
#[test]
fn a_vmm_write_to_the_code_a_run_resumes_into_is_seen() {
    let mut g = guest();
    // 0x1000: out 0x80, al (e6 80); inc al (fe c0); jmp 0x1000 (eb fa)
    g.load(0x1000, &[0xe6, 0x80, 0xfe, 0xc0, 0xeb, 0xfa]);
    g.real_mode(0x1000);
    g.set(hv_register_name_HV_X64_REGISTER_RAX, 10);
    let mut seen = vec![];
    for round in 0..6 {
        assert_eq!(g.run(), Exit::Message);
        seen.push(g.get(hv_register_name_HV_X64_REGISTER_RAX) as u8);
        if round == 3 {
            g.load(0x1002, &[0xfe, 0xc8]); // inc al -> dec al
        }
        // The VMM completes the OUT: RIP past it.
        g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x1002);
    }
    assert_eq!(seen, [10, 11, 12, 13, 12, 11]);
}

/// A link is followed only in the mode it was made in: the same IP under another CS
/// base is other code.
#[test]
fn a_run_resuming_at_the_same_ip_under_another_code_segment_runs_that_code() {
    let mut g = guest();
    // At CS base 0x1000 and 0x2000, IP 0: out 0x80, al; mov al, N; jmp 0
    g.load(0x1000, &[0xe6, 0x80, 0xb0, 0x01, 0xeb, 0xfa]);
    g.load(0x2000, &[0xe6, 0x80, 0xb0, 0x02, 0xeb, 0xfa]);
    g.real_mode(0);
    let cs = |base: u64| pack_segment(base, 0xffff, (base >> 4) as u16, 0x9b);
    g.set_raw(hv_register_name_HV_X64_REGISTER_CS, cs(0x1000));
    let mut seen = vec![];
    for base in [0x1000, 0x1000, 0x2000, 0x2000, 0x1000] {
        g.set_raw(hv_register_name_HV_X64_REGISTER_CS, cs(base));
        g.set(hv_register_name_HV_X64_REGISTER_RIP, 2);
        assert_eq!(g.run(), Exit::Message);
        seen.push(g.get(hv_register_name_HV_X64_REGISTER_RAX) as u8);
    }
    assert_eq!(seen, [1, 1, 2, 2, 1]);
}
