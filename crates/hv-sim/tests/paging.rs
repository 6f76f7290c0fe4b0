//! GVA translation (the translate hypercall) over the guest's own page tables in
//! each paging mode, with MSHV's result codes, and the guest's own paged accesses.

mod common;

use common::*;
use hv_core::message::*;
use hv_core::regs::pack_segment;
use hv_core::{Exit, VcpuBackend};
use iced_x86::code_asm::*;
use mshv_bindings::*;

const READ: u64 = 0;
const WRITE: u64 = HV_TRANSLATE_GVA_VALIDATE_WRITE as u64;
const USER: u64 = HV_TRANSLATE_GVA_USER_ACCESS as u64;
const SET_BITS: u64 = HV_TRANSLATE_GVA_SET_PAGE_TABLE_BITS as u64;
const SUCCESS: u32 = hv_translate_gva_result_code_HV_TRANSLATE_GVA_SUCCESS;
const NOT_PRESENT: u32 = hv_translate_gva_result_code_HV_TRANSLATE_GVA_PAGE_NOT_PRESENT;
const PRIVILEGE: u32 = hv_translate_gva_result_code_HV_TRANSLATE_GVA_PRIVILEGE_VIOLATION;
const UNMAPPED: u32 = hv_translate_gva_result_code_HV_TRANSLATE_GVA_GPA_UNMAPPED;

fn put(g: &Guest, gpa: u64, v: u64) {
    g.load(gpa, &v.to_le_bytes());
}

fn put32(g: &Guest, gpa: u64, v: u32) {
    g.load(gpa, &v.to_le_bytes());
}

fn translate(v: &mut dyn VcpuBackend, gva: u64, flags: u64) -> (u64, u32) {
    v.translate_gva(gva, flags).unwrap()
}

/// Four-level tables: 0xffff_8000_0040_1000 -> 0x7000 (4 KiB page, read-only,
/// supervisor), 0x40_2000 -> 0x8000 (writable, user), 0x40_3000 not present,
/// 0x40_4000 -> 0x4000_0000 (beyond RAM).
fn four_level(g: &mut Guest) {
    g.long_mode(0x2000);
    // CR0.WP: supervisor writes honour read-only pages (without it they may write).
    g.set(hv_register_name_HV_X64_REGISTER_CR0, 0x8001_0011);
    let (pml4, pdpt_hi, pdpt, pd, pt) = (0x10_0000, 0x10_2000, 0x11_0000, 0x11_1000, 0x11_2000);
    put(g, pml4, 0x10_1000 | 7); // the identity map long_mode set up stays in slot 0
    put(g, pml4 + 256 * 8, pdpt_hi | 3);
    put(g, pdpt_hi, pd | 3);
    put(g, pdpt_hi + 8, 0); // the rest of the high half is empty
    put(g, pd + 2 * 8, pt | 7);
    put(g, pt + 8, 0x7000 | 1);
    put(g, pt + 2 * 8, 0x8000 | 7);
    put(g, pt + 4 * 8, 0x4000_0000 | 3);
    // Low half: 0x40_0000.. goes through the same PD at 2 MiB granularity of index 2.
    put(g, pdpt, pd | 7);
    put(g, pml4 + 8, pdpt | 7); // 0x80_0000_0000 -> pdpt
}

#[test]
fn four_level_translation_with_result_codes_for_each_case() {
    let mut g = guest();
    four_level(&mut g);
    let v = g.vcpu.as_mut();
    let hi = 0xffff_8000_0000_0000u64;
    assert_eq!(translate(v, hi + 0x40_1234, READ), (0x7234, SUCCESS));
    assert_eq!(
        translate(v, hi + 0x40_1234, WRITE).1,
        PRIVILEGE,
        "read-only"
    );
    assert_eq!(
        translate(v, hi + 0x40_1234, READ | USER).1,
        PRIVILEGE,
        "supervisor"
    );
    assert_eq!(translate(v, hi + 0x40_2008, WRITE), (0x8008, SUCCESS));
    assert_eq!(translate(v, hi + 0x40_3000, READ).1, NOT_PRESENT);
    assert_eq!(translate(v, hi + 0x40_4010, READ), (0x4000_0010, UNMAPPED));
    assert_eq!(
        translate(v, hi + 0x60_0000, READ).1,
        NOT_PRESENT,
        "empty PD slot"
    );
    // Supervisor-only at the PML4 level: a user access is a privilege violation.
    assert_eq!(translate(v, hi + 0x40_2000, READ | USER).1, PRIVILEGE);
    assert_eq!(translate(v, 0x80_0040_2000, READ | USER), (0x8000, SUCCESS));
    // The identity map the guest runs on.
    assert_eq!(translate(v, 0x1234, READ), (0x1234, SUCCESS));
    assert_eq!(g.vcpu.counters().translate_gva, 10, "each is one hypercall");
}

#[test]
fn translation_sets_accessed_and_dirty_bits_only_when_asked() {
    let mut g = guest();
    four_level(&mut g);
    let pte = 0x11_2000 + 2 * 8;
    let read = |g: &Guest| {
        let mut b = [0u8; 8];
        g.ram.read(pte as usize, &mut b).unwrap();
        u64::from_le_bytes(b)
    };
    let gva = 0xffff_8000_0040_2000u64;
    translate(g.vcpu.as_mut(), gva, WRITE);
    assert_eq!(read(&g) & 0x60, 0, "no bits set without the flag");
    translate(g.vcpu.as_mut(), gva, WRITE | SET_BITS);
    assert_eq!(read(&g) & 0x60, 0x60, "accessed and dirty");
}

#[test]
fn protected_mode_32_bit_paging_with_4k_and_4m_pages() {
    let mut g = guest();
    let flat = |attr| pack_segment(0, 0xffff_ffff, 8, attr);
    g.set_raw(hv_register_name_HV_X64_REGISTER_CS, flat(0xc09b));
    g.set_raw(hv_register_name_HV_X64_REGISTER_DS, flat(0xc093));
    let (pd, pt) = (0x10_0000u64, 0x10_1000u64);
    put32(&g, pd + 4 * 3, pt as u32 | 3); // 0x00c0_0000..: page table
    put32(&g, pt + 4 * 5, 0x9000 | 3);
    put32(&g, pd + 4 * 4, 0x0040_0000 | 0x83); // 0x0100_0000: a 4 MiB page at 4 MiB
    g.set(hv_register_name_HV_X64_REGISTER_CR3, pd);
    g.set(hv_register_name_HV_X64_REGISTER_CR4, 1 << 4); // PSE
    g.set(hv_register_name_HV_X64_REGISTER_CR0, 0x8000_0011);
    let v = g.vcpu.as_mut();
    assert_eq!(translate(v, 0x00c0_5abc, READ), (0x9abc, SUCCESS));
    assert_eq!(translate(v, 0x0112_3456, READ), (0x0052_3456, UNMAPPED));
    assert_eq!(translate(v, 0x00c0_6000, READ).1, NOT_PRESENT);
}

#[test]
fn pae_paging_with_2m_pages_and_a_guest_reading_through_it() {
    let mut g = guest();
    let flat = |attr| pack_segment(0, 0xffff_ffff, 8, attr);
    g.set_raw(hv_register_name_HV_X64_REGISTER_CS, flat(0xc09b));
    g.set_raw(hv_register_name_HV_X64_REGISTER_DS, flat(0xc093));
    g.set_raw(hv_register_name_HV_X64_REGISTER_SS, flat(0xc093));
    let (pdpt, pd) = (0x10_0000u64, 0x10_1000u64);
    put(&g, pdpt, pd | 1);
    put(&g, pd, 0x83); // 0..2 MiB identity
    put(&g, pd + 8 * 100, 0x83); // 0x0c80_0000 -> 0 as well (an alias)
    g.set(hv_register_name_HV_X64_REGISTER_CR3, pdpt);
    g.set(hv_register_name_HV_X64_REGISTER_CR4, 1 << 5);
    g.set(hv_register_name_HV_X64_REGISTER_CR0, 0x8000_0011);
    assert_eq!(
        translate(g.vcpu.as_mut(), 0x0c80_1234, READ),
        (0x1234, SUCCESS)
    );
    // The guest reads its data through the alias: mov eax, [0x0c80_3000]; hlt
    g.load(0x3000, &0xcafe_f00du32.to_le_bytes());
    g.load(0x2000, &[0xa1, 0x00, 0x30, 0x80, 0x0c, 0xf4]);
    g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x0c80_2000);
    assert_eq!(g.run(), Exit::Halted);
    assert_eq!(
        g.get(hv_register_name_HV_X64_REGISTER_RAX) as u32,
        0xcafe_f00d
    );
}

#[test]
fn a_guest_page_fault_goes_through_its_idt_with_cr2_and_the_error_code() {
    let mut g = guest();
    four_level(&mut g);
    // IDT at 0x9000 with a #PF gate to a handler that does `pop rbx; hlt`.
    let gate = |target: u64| -> [u8; 16] {
        let mut d = [0u8; 16];
        d[0..2].copy_from_slice(&(target as u16).to_le_bytes());
        d[2..4].copy_from_slice(&8u16.to_le_bytes());
        d[5] = 0x8e;
        d[6..8].copy_from_slice(&((target >> 16) as u16).to_le_bytes());
        d[8..12].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
        d
    };
    g.load(0x9000 + 14 * 16, &gate(0x3000));
    g.load(0x3000, &[0x5b, 0xf4]); // pop rbx (the error code); hlt
                                   // The gate's selector is loaded from the GDT: entry 1 is 64-bit code.
    g.load(
        0x500,
        &[0u64, 0x00af_9a00_0000_ffff].map(u64::to_le_bytes).concat(),
    );
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_GDTR,
        hv_core::regs::pack_table(0x500, 15),
    );
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_IDTR,
        hv_core::regs::pack_table(0x9000, 0xfff),
    );
    // mov byte [rax], 1 with rax at the read-only page.
    g.load(0x2000, &[0xc6, 0x00, 0x01]);
    g.set(hv_register_name_HV_X64_REGISTER_RAX, 0xffff_8000_0040_1000);
    assert_eq!(g.run(), Exit::Halted);
    assert_eq!(
        g.get(hv_register_name_HV_X64_REGISTER_RIP),
        0x3002,
        "in the handler"
    );
    assert_eq!(
        g.get(hv_register_name_HV_X64_REGISTER_CR2),
        0xffff_8000_0040_1000
    );
    assert_eq!(
        g.get(hv_register_name_HV_X64_REGISTER_RBX),
        0b011,
        "present, write"
    );
}

/// The GPA of the memory intercept the guest stopped at, after completing it (RIP past it).
fn complete_mmio(g: &mut Guest) -> (u64, u8) {
    assert_eq!(g.msg.message_type(), HVMSG_UNMAPPED_GPA);
    let m: hv_x64_memory_intercept_message = g.msg.payload();
    let rip = { m.header.rip };
    g.set(
        hv_register_name_HV_X64_REGISTER_RIP,
        rip + m.header.instruction_length() as u64,
    );
    ({ m.guest_physical_address }, {
        m.header.intercept_access_type
    })
}

/// A page with no RAM behind it is cached in the TLB like a RAM page (a TLB caches
/// translations whatever they lead to, SDM vol 3 4.10.2, and the VMM sees the GPA the
/// cached translation gives): rewriting the PTE without INVLPG leaves the old GPA, INVLPG
/// the new one; a write through the clean leaf walks again and sets its dirty bit
/// (4.8: the processor sets D on the first write through a translation).
#[test]
fn device_pages_are_cached_like_ram_translations_until_invlpg() {
    let mut g = guest();
    four_level(&mut g);
    let pte = 0x11_2000u64 + 4 * 8;
    let gva = 0xffff_8000_0040_4010u64;
    let code = assemble(64, 0x3000, |a| {
        a.mov(rbx, gva).unwrap();
        a.mov(rcx, pte).unwrap();
        a.mov(eax, dword_ptr(rbx)).unwrap(); // exit: 0x4000_0010
        a.mov(rdx, 0x4000_1003u64).unwrap();
        a.mov(qword_ptr(rcx), rdx).unwrap(); // the PTE now maps 0x4000_1000, no INVLPG yet
        a.mov(eax, dword_ptr(rbx)).unwrap(); // exit: still 0x4000_0010 (cached)
        a.invlpg(byte_ptr(rbx)).unwrap();
        a.mov(eax, dword_ptr(rbx)).unwrap(); // exit: 0x4000_1010
        a.mov(dword_ptr(rbx), eax).unwrap(); // exit: a write, which sets D
        a.hlt().unwrap();
    });
    g.load(0x3000, &code);
    g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x3000);
    let read = HV_INTERCEPT_ACCESS_READ as u8;
    let write = HV_INTERCEPT_ACCESS_WRITE as u8;
    let mut seen = Vec::new();
    for _ in 0..4 {
        assert_eq!(g.run(), Exit::Message);
        seen.push(complete_mmio(&mut g));
    }
    assert_eq!(
        seen,
        [
            (0x4000_0010, read),
            (0x4000_0010, read),
            (0x4000_1010, read),
            (0x4000_1010, write)
        ]
    );
    let mut b = [0u8; 8];
    g.ram.read(pte as usize, &mut b).unwrap();
    assert_eq!(
        u64::from_le_bytes(b) & 0x60,
        0x60,
        "accessed and dirty after the write"
    );
}
