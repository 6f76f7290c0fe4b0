//! The x87 and SSE state through the register interface, as a VMM reads and writes it
//! (`HV_X64_REGISTER_FP_MMX0..7`, `FP_CONTROL_STATUS`, `XMM_CONTROL_STATUS`): the
//! layouts are FXSAVE's (bytes 0-31 and the ST(i) slots), so what a guest's FXSAVE
//! writes and what the VMM reads must agree.

mod common;

use common::*;
use mshv_bindings::*;

const FP_MMX0: u32 = hv_register_name_HV_X64_REGISTER_FP_MMX0;
const FPCS: u32 = hv_register_name_HV_X64_REGISTER_FP_CONTROL_STATUS;
const XMMCS: u32 = hv_register_name_HV_X64_REGISTER_XMM_CONTROL_STATUS;

fn raw(g: &mut Guest, id: u32) -> [u64; 2] {
    let mut out = [[0u64; 2]];
    g.vcpu.get_registers(&[id], &mut out).unwrap();
    out[0]
}

#[test]
fn a_vmm_sets_the_stack_and_reads_what_the_guest_computed_and_saved() {
    let mut g = guest();
    // fadd st0, st1; fxsave [0x5000]; hlt
    g.load(
        0x2000,
        &[
            0xd8, 0xc1, 0x0f, 0xae, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00, 0xf4,
        ],
    );
    g.long_mode(0x2000);
    // TOP = 6 with ST0 = 1.5 and ST1 = 2.25 (physical 6 and 7 full), FCW 0x037F.
    g.set_raw(FPCS, [0x037f | (6 << 11) << 16 | 0xc0 << 32, 0]);
    g.set_raw(FP_MMX0, [0xc000_0000_0000_0000, 0x3fff]);
    g.set_raw(FP_MMX0 + 1, [0x9000_0000_0000_0000, 0x4000]);
    g.set_raw(XMMCS, [0, 0x1f80 | 1 << 13]); // MXCSR: round down
    assert_eq!(g.run(), hv_core::Exit::Halted);
    assert_eq!(
        raw(&mut g, FP_MMX0),
        [0xf000_0000_0000_0000, 0x4000],
        "ST0 = 3.75"
    );
    let fpcs = raw(&mut g, FPCS);
    assert_eq!(fpcs[0] as u16, 0x037f);
    assert_eq!((fpcs[0] >> 16) as u16 >> 11 & 7, 6, "TOP");
    assert_eq!((fpcs[0] >> 32) as u8, 0xc0, "abridged tags");
    assert_eq!(fpcs[1], 0x2000, "the last instruction's address");
    let xmmcs = raw(&mut g, XMMCS);
    assert_eq!(xmmcs[1] as u32, 0x1f80 | 1 << 13);
    assert_eq!(xmmcs[1] >> 32, 0xffff, "MXCSR_MASK");
    // The guest's FXSAVE agrees with the registers, byte for byte (FXSAVE bytes 0-31).
    let mut image = [0u8; 32];
    g.ram.read(0x5000, &mut image).unwrap();
    let mut regs = Vec::new();
    for v in [fpcs, xmmcs] {
        regs.extend_from_slice(&v[0].to_le_bytes());
        regs.extend_from_slice(&v[1].to_le_bytes());
    }
    // FXSAVE without REX.W stores a 32-bit FIP with FCS beside it, and FDP likewise.
    assert_eq!(image[..8], regs[..8]);
    assert_eq!(image[24..32], regs[24..32]);
}

#[test]
fn a_reserved_mxcsr_bit_is_refused_by_name() {
    let mut g = guest();
    let e = g.vcpu.set_registers(&[XMMCS], &[[0, 1 << 20]]).unwrap_err();
    assert_eq!(e.code(), "EINVAL");
    assert!(e.to_string().contains("0x100000"), "{e}");
}
