//! A guest that boots like a real one: real mode → 32-bit protected mode → 64-bit
//! long mode with 4-level paging, writing a port in each mode.

mod common;

use common::*;
use hv_core::message::*;
use hv_core::Exit;
use iced_x86::code_asm::*;
use mshv_bindings::*;

const GDT: u64 = 0x500;
const GDTR: u64 = 0x600;
const REAL: u64 = 0x1000;
const PROTECTED: u64 = 0x1100;
const LONG: u64 = 0x1200;
const PML4: u64 = 0x10_0000;

fn load_tables(g: &Guest) {
    let gdt: [u64; 4] = [
        0,
        0x00cf_9a00_0000_ffff, // 0x08: 32-bit code
        0x00cf_9200_0000_ffff, // 0x10: data
        0x00af_9a00_0000_ffff, // 0x18: 64-bit code
    ];
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    g.load(GDT, &bytes);
    let mut gdtr = (31u16).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&(GDT as u32).to_le_bytes());
    g.load(GDTR, &gdtr);
    // Identity map of the first 2 MiB through 4 levels, with a 2 MiB page.
    g.load(PML4, &(0x10_1003u64).to_le_bytes());
    g.load(0x10_1000, &(0x10_2003u64).to_le_bytes());
    g.load(0x10_2000, &(0x83u64).to_le_bytes());
}

fn load_code(g: &Guest) {
    let mut real = assemble(16, REAL, |a| {
        a.cli().unwrap();
        a.mov(al, 1).unwrap();
        a.out(0x80, al).unwrap();
        a.lgdt(ptr(GDTR)).unwrap();
        a.mov(eax, cr0).unwrap();
        a.or(eax, 1).unwrap();
        a.mov(cr0, eax).unwrap();
    });
    real.extend_from_slice(&[0xea, 0x00, 0x11, 0x08, 0x00]); // jmp 0x08:0x1100
    g.load(REAL, &real);

    let mut protected = assemble(32, PROTECTED, |a| {
        a.mov(ax, 0x10).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(es, ax).unwrap();
        a.mov(ss, ax).unwrap();
        a.mov(esp, 0x7000).unwrap();
        a.mov(al, 2).unwrap();
        a.out(0x80, al).unwrap();
        a.mov(eax, cr4).unwrap();
        a.or(eax, 1 << 5).unwrap();
        a.mov(cr4, eax).unwrap();
        a.mov(eax, PML4 as u32).unwrap();
        a.mov(cr3, eax).unwrap();
        a.mov(ecx, 0xc000_0080u32).unwrap();
        a.rdmsr().unwrap();
        a.or(eax, 1 << 8).unwrap();
        a.wrmsr().unwrap();
        a.mov(eax, cr0).unwrap();
        a.or(eax, 0x8000_0000u32 as i32).unwrap();
        a.mov(cr0, eax).unwrap();
    });
    protected.extend_from_slice(&[0xea, 0x00, 0x12, 0x00, 0x00, 0x18, 0x00]); // jmp 0x18:0x1200
    g.load(PROTECTED, &protected);

    let long = assemble(64, LONG, |a| {
        a.mov(rax, 0x0102_0304_0506_0703u64).unwrap();
        a.out(0x80, al).unwrap();
        a.push(rax).unwrap();
        a.pop(rbx).unwrap();
        a.hlt().unwrap();
    });
    g.load(LONG, &long);
}

struct Seen {
    value: u8,
    rip: u64,
    pe: u16,
    lma: u16,
    cs_selector: u16,
}

fn next_port_write(g: &mut Guest) -> Seen {
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_X64_IO_PORT_INTERCEPT);
    let io: hv_x64_io_port_intercept_message = g.msg.payload();
    assert_eq!({ io.port_number }, 0x80);
    let h = io.header;
    // SAFETY: reading bitfields of a plain u16 union view.
    let (pe, lma) = unsafe {
        let state = h.execution_state.__bindgen_anon_1;
        (state.cr0_pe(), state.efer_lma())
    };
    // The VMM completes the OUT.
    g.set(
        hv_register_name_HV_X64_REGISTER_RIP,
        h.rip + h.instruction_length() as u64,
    );
    Seen {
        value: io.rax as u8,
        rip: h.rip,
        pe,
        lma,
        cs_selector: h.cs_segment.selector,
    }
}

#[test]
fn real_to_protected_to_long_mode_writing_a_port_in_each() {
    let mut g = guest();
    load_tables(&g);
    load_code(&g);
    g.real_mode(REAL);

    let real = next_port_write(&mut g);
    assert_eq!((real.value, real.pe, real.lma), (1, 0, 0));
    assert_eq!(real.rip, REAL + 3);

    let protected = next_port_write(&mut g);
    assert_eq!((protected.value, protected.pe, protected.lma), (2, 1, 0));
    assert_eq!(protected.cs_selector, 0x08);
    assert!((PROTECTED..LONG).contains(&protected.rip));

    let long = next_port_write(&mut g);
    assert_eq!((long.value, long.pe, long.lma), (3, 1, 1));
    assert_eq!(long.cs_selector, 0x18);
    assert_eq!(long.rip, LONG + 10);

    assert_eq!(g.run(), Exit::Halted);
    assert_eq!(
        g.get(hv_register_name_HV_X64_REGISTER_RBX),
        0x0102_0304_0506_0703,
        "64-bit push/pop through the paged stack"
    );
    let efer = g.get(hv_register_name_HV_X64_REGISTER_EFER);
    assert_eq!(efer & (1 << 10 | 1 << 8), 1 << 10 | 1 << 8, "LME and LMA");
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_CR3), PML4);
}
