//! Guest isolation inside the guest: the access rules the page tables and the VMM set
//! must hold on every access, including after the TLB has cached a page.

mod common;

use common::*;
use hv_core::message::*;
use hv_core::regs::pack_table;
use hv_core::Exit;
use iced_x86::code_asm::*;
use mshv_bindings::*;

const CODE: u64 = 0x2000;
const HANDLER: u64 = 0x3000;
const IDT: u64 = 0x9000;

/// A 64-bit interrupt gate to `target` through selector 8.
fn gate(target: u64) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..2].copy_from_slice(&(target as u16).to_le_bytes());
    d[2..4].copy_from_slice(&8u16.to_le_bytes());
    d[5] = 0x8e;
    d[6..8].copy_from_slice(&((target >> 16) as u16).to_le_bytes());
    d[8..12].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
    d
}

/// Long mode with a GDT and an IDT whose #PF gate runs `pop rbx; hlt` at [`HANDLER`].
fn with_page_fault_handler(g: &mut Guest) {
    g.long_mode(CODE);
    g.load(
        0x500,
        &[0u64, 0x00af_9a00_0000_ffff].map(u64::to_le_bytes).concat(),
    );
    g.set_raw(hv_register_name_HV_X64_REGISTER_GDTR, pack_table(0x500, 15));
    g.load(IDT + 14 * 16, &gate(HANDLER));
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_IDTR,
        pack_table(IDT, 0xfff),
    );
    g.load(HANDLER, &[0x5b, 0xf4]); // pop rbx (the error code); hlt
}

/// Intel SDM vol. 3A, 4.6.2 (and 4.10.2: a TLB entry caches the access rights of the
/// translation): with EFER.NXE, an instruction fetch from a page whose PTE has XD set
/// is a #PF with I/D (bit 4) in the error code, even after a data read of that page
/// filled the TLB.
#[test]
fn nx_holds_after_a_read_of_the_page_filled_the_tlb() {
    let mut g = guest();
    with_page_fault_handler(&mut g);
    // Map 0x4000_0000 (above the 1 GiB identity map) with a 4 KiB no-execute page at
    // physical 0x7000: PML4[0] -> PDPT 0x10_1000 (identity) gets a second entry.
    let (pd, pt) = (0x12_0000u64, 0x12_1000u64);
    g.load(0x10_1000 + 8, &(pd | 3).to_le_bytes());
    g.load(pd, &(pt | 3).to_le_bytes());
    g.load(pt, &(0x7000 | 3 | (1u64 << 63)).to_le_bytes());
    g.load(0x7000, &[0xc3]); // ret: harmless if the fetch wrongly succeeds
    g.set(
        hv_register_name_HV_X64_REGISTER_EFER,
        (1 << 8) | (1 << 10) | (1 << 11),
    );
    let code = assemble(64, CODE, |a| {
        a.mov(rax, 0x4000_0000u64).unwrap();
        a.mov(cl, byte_ptr(rax)).unwrap(); // the read fills the TLB
        a.call(rax).unwrap(); // the fetch must fault
        a.hlt().unwrap();
    });
    g.load(CODE, &code);
    assert_eq!(g.run(), Exit::Halted);
    assert_eq!(
        g.get(hv_register_name_HV_X64_REGISTER_RIP),
        HANDLER + 2,
        "the fetch faulted into the #PF handler"
    );
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_CR2), 0x4000_0000);
    assert_eq!(
        g.get(hv_register_name_HV_X64_REGISTER_RBX),
        0b1_0001,
        "present, instruction fetch"
    );
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RCX) & 0xff, 0xc3);
}

/// An intercepted range smaller than a page exits on every access to it, even after
/// an access to plain RAM in the same page (which must not cache the page as RAM).
#[test]
fn a_sub_page_intercept_exits_after_the_rest_of_its_page_was_read() {
    let mut g = guest();
    g.vm.intercept_range(0x5_0800, 8).unwrap();
    g.load(0x5_0800, &0x1111_2222_3333_4444u64.to_le_bytes());
    let code = assemble(64, CODE, |a| {
        a.mov(rsi, 0x5_0000u64).unwrap();
        a.mov(rax, qword_ptr(rsi)).unwrap(); // plain RAM in the same page
        a.mov(rbx, qword_ptr(rsi + 0x800)).unwrap(); // the intercepted bytes
        a.hlt().unwrap();
    });
    g.load(CODE, &code);
    g.long_mode(CODE);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_GPA_INTERCEPT);
    let m: hv_x64_memory_intercept_message = g.msg.payload();
    assert_eq!({ m.guest_physical_address }, 0x5_0800);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RBX), 0, "not read");
}

/// An access that starts in plain RAM and reaches into an intercepted range exits at
/// the first intercepted byte; nothing of it is read from RAM.
#[test]
fn an_access_straddling_into_an_intercepted_range_exits() {
    let mut g = guest();
    g.vm.intercept_range(0x5_0800, 8).unwrap();
    let code = assemble(64, CODE, |a| {
        a.mov(rsi, 0x5_0000u64).unwrap();
        a.mov(rax, qword_ptr(rsi)).unwrap();
        a.mov(rbx, qword_ptr(rsi + 0x7fc)).unwrap(); // 4 bytes of RAM, 4 intercepted
        a.hlt().unwrap();
    });
    g.load(CODE, &code);
    g.long_mode(CODE);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_GPA_INTERCEPT);
    let m: hv_x64_memory_intercept_message = g.msg.payload();
    assert_eq!({ m.guest_physical_address }, 0x5_0800);
}

/// Instruction bytes in the intercepted part of a page are not fetched from RAM.
#[test]
fn code_that_runs_into_an_intercepted_range_exits_there() {
    let mut g = guest();
    g.vm.intercept_range(0x2010, 16).unwrap();
    // 16 NOPs, then the intercepted bytes hold a HLT that must not run.
    g.load(CODE, &[0x90; 16]);
    g.load(CODE + 16, &[0xf4]);
    g.long_mode(CODE);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_GPA_INTERCEPT);
    let m: hv_x64_memory_intercept_message = g.msg.payload();
    assert_eq!({ m.guest_physical_address }, 0x2010);
    assert_eq!(
        { m.header.intercept_access_type },
        HV_INTERCEPT_ACCESS_EXECUTE as u8
    );
}
