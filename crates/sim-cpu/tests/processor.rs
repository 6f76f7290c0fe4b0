//! The processor alone, without the hypervisor around it: a `PhysMap` over one RAM
//! region and a minimal `Env`. What the processor promises its hypervisor: the RESET
//! state, each kind of exit with RIP where MSHV reports it, instruction limits and
//! polls, event injection, translation, and the regressions the issue tracker found.

mod common;

use hv_core::{HostRegion, UnknownMsr};
use sim_cpu::fault::Exit;
use sim_cpu::paging::Access;
use sim_cpu::phys::PhysMap;
use sim_cpu::{Env, Processor, RunEnd, Segment};
use std::sync::Arc;

const RAM: usize = 2 << 20;

struct TestEnv;

impl Env for TestEnv {
    fn cpuid(&mut self, _leaf: u32, _subleaf: u32, native: [u32; 4]) -> [u32; 4] {
        native
    }
    fn msr_exits(&self, msr: u32) -> bool {
        msr == 0x4000_0000
    }
    fn unknown_msr(&self) -> UnknownMsr {
        UnknownMsr::Fault
    }
    fn apic_id(&self) -> u32 {
        0
    }
}

struct Machine {
    cpu: Processor,
    ram: Arc<HostRegion>,
    mem: PhysMap,
}

impl Machine {
    fn new() -> Self {
        let ram = Arc::new(HostRegion::new(RAM).unwrap());
        let mem = common::ram_map(&ram);
        Machine {
            cpu: Processor::new(true),
            ram,
            mem,
        }
    }

    /// Real mode, CS = DS = SS = 0, code at `ip`.
    fn real(code: &[u8], ip: u64) -> Self {
        let mut m = Machine::new();
        m.ram.write(ip as usize, code).unwrap();
        for s in 0..6 {
            m.cpu.cpu.seg[s] = Segment::real(0, if s == 1 { 0x9b } else { 0x93 });
        }
        m.cpu.cpu.rip = ip;
        m.cpu.cpu.gpr[4] = 0x7000;
        m.cpu.state_changed(&m.mem);
        m
    }

    /// 64-bit mode with a 1 GiB identity page, code at `ip`.
    fn long(code: &[u8], ip: u64) -> Self {
        let mut m = Machine::new();
        m.ram.write(ip as usize, code).unwrap();
        m.ram
            .write(0x10_0000, &(0x10_1003u64).to_le_bytes())
            .unwrap();
        m.ram.write(0x10_1000, &(0x83u64).to_le_bytes()).unwrap();
        let c = &mut m.cpu.cpu;
        c.seg[1] = Segment {
            selector: 8,
            base: 0,
            limit: 0xffff_ffff,
            attributes: 0xa09b,
        };
        for s in [0, 2, 3] {
            c.seg[s] = Segment {
                selector: 16,
                base: 0,
                limit: 0xffff_ffff,
                attributes: 0xc093,
            };
        }
        c.cr3 = 0x10_0000;
        c.cr4 = 1 << 5;
        c.efer = (1 << 8) | (1 << 10);
        c.cr0 = 0x8000_0011;
        c.rip = ip;
        c.gpr[4] = 0x8_0000;
        m.cpu.state_changed(&m.mem);
        m
    }

    fn run(&mut self, max: u64) -> RunEnd {
        self.cpu.run(&self.mem, &mut TestEnv, max, &mut || false)
    }
}

/// SDM vol 3 10.1.1, Table 10-1: CS.selector 0xF000 with base 0xFFFF0000, EIP 0xFFF0,
/// EDX the processor signature, CR0 0x60000010, DR6 0xFFFF0FF0, DR7 0x400.
#[test]
fn reset_state_is_the_sdm_table() {
    let p = Processor::new(true);
    let c = &p.cpu;
    assert_eq!(
        (c.seg[1].selector, c.seg[1].base, c.rip),
        (0xf000, 0xffff_0000, 0xfff0)
    );
    assert_eq!(c.gpr[2], sim_cpu::cpuid::SIGNATURE as u64);
    assert_eq!(c.cr0, 0x6000_0010);
    assert_eq!((c.dr[6], c.dr[7]), (0xffff_0ff0, 0x400));
    assert_eq!(c.rflags(), 2);
    assert_eq!(c.apic_base, 0xfee0_0900, "enabled, BSP, at 0xFEE00000");
    assert_eq!(
        Processor::new(false).cpu.apic_base & (1 << 8),
        0,
        "an AP is not the BSP"
    );
}

/// MSHV reports an I/O intercept with RIP on the instruction; a HLT with RIP past it.
#[test]
fn io_and_halt_exits_leave_rip_where_the_hypervisor_reports_it() {
    let mut m = Machine::real(&[0xb0, 0x42, 0xe6, 0x80, 0xf4], 0x1000); // mov al, 0x42; out 0x80, al; hlt
    match m.run(100) {
        RunEnd::Exit(Exit::Io {
            port: 0x80,
            size: 1,
            input: false,
            string: false,
            rep: false,
        }) => {
            let info = m.cpu.exit_instruction;
            assert_eq!(info.len, 2);
            assert_eq!(&info.bytes[..2], &[0xe6, 0x80]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.cpu.cpu.rip, 0x1002);
    assert_eq!(m.cpu.cpu.gpr[0] & 0xff, 0x42);
    m.cpu.cpu.rip = 0x1004; // the VMM completes the OUT
    assert!(matches!(m.run(100), RunEnd::Exit(Exit::Halt)));
    assert_eq!(m.cpu.cpu.rip, 0x1005);
}

#[test]
fn an_access_outside_ram_is_an_mmio_exit_with_its_addresses() {
    // mov eax, [0x300020] in 64-bit mode: mapped by the page tables, past the 2 MiB of RAM.
    let mut m = Machine::long(&[0x8b, 0x04, 0x25, 0x20, 0x00, 0x30, 0x00], 0x2000);
    match m.run(10) {
        RunEnd::Exit(Exit::Mmio {
            gpa,
            gva,
            access: Access::Read,
            intercepted: false,
        }) => {
            assert_eq!((gpa, gva), (0x30_0020, 0x30_0020));
            assert_eq!(m.cpu.exit_instruction.len, 7);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.cpu.cpu.rip, 0x2000, "the access has not retired");
}

#[test]
fn an_intercepted_msr_exits_and_an_unknown_one_faults() {
    // mov ecx, 0x40000000; rdmsr
    let mut m = Machine::long(&[0xb9, 0, 0, 0, 0x40, 0x0f, 0x32], 0x2000);
    assert!(matches!(
        m.run(10),
        RunEnd::Exit(Exit::Msr {
            msr: 0x4000_0000,
            write: false
        },)
    ));
    // mov ecx, 0x12345; rdmsr: #GP(0) with no IDT (limit 0): its delivery faults #GP,
    // two contributory exceptions make a #DF (SDM vol 3 Table 6-5), whose delivery
    // faults #GP again: a triple fault, a shutdown, its chain kept for the VMM.
    let mut m = Machine::long(&[0xb9, 0x45, 0x23, 0x01, 0x00, 0x0f, 0x32], 0x2000);
    m.cpu.cpu.idtr.limit = 0;
    let RunEnd::Exit(Exit::Shutdown(cause)) = m.run(10) else {
        panic!("no shutdown")
    };
    assert_eq!(cause.vectors(), &[13, 13, 8, 13]);
    assert_eq!((cause.first.vector, cause.first.error_code), (13, Some(0)));
}

#[test]
fn the_instruction_limit_and_the_poll_stop_a_spinning_guest() {
    let mut m = Machine::long(&[0xeb, 0xfe], 0x2000); // jmp $
    assert_eq!(m.run(1000), RunEnd::InstructionLimit);
    assert_eq!(m.cpu.instructions, 1000);
    let mut polls = 0;
    let end = m.cpu.run(&m.mem, &mut TestEnv, u64::MAX, &mut || {
        polls += 1;
        polls == 3
    });
    assert_eq!(end, RunEnd::Stopped);
    // The poll runs after every POLL_INTERVAL instructions; the third stops the run.
    assert_eq!(m.cpu.instructions, 1000 + 3 * sim_cpu::POLL_INTERVAL);
}

/// Injection delivers through the IVT in real mode (SDM vol 3 20.1.4): FLAGS, CS and
/// IP pushed, IF cleared, CS:IP from the vector's entry.
#[test]
fn an_injected_interrupt_goes_through_the_ivt_in_real_mode() {
    let mut m = Machine::real(&[0xf4], 0x1000);
    m.ram.write(0x20 * 4, &[0x00, 0x30, 0x00, 0x00]).unwrap();
    m.cpu.cpu.set_rflags(0x202);
    m.cpu.inject(&m.mem, &mut TestEnv, 0x20, None).unwrap();
    assert_eq!((m.cpu.cpu.seg[1].selector, m.cpu.cpu.rip), (0, 0x3000));
    assert_eq!(m.cpu.cpu.rflags() & 0x200, 0);
    let mut frame = [0u8; 6];
    m.ram.read(0x7000 - 6, &mut frame).unwrap();
    assert_eq!(frame, [0x00, 0x10, 0x00, 0x00, 0x02, 0x02]);
}

#[test]
fn translation_walks_the_guest_page_tables() {
    let m = Machine::long(&[0xf4], 0x2000);
    assert_eq!(
        m.cpu
            .translate(&m.mem, 0x1234_5678, Access::Read, false, false),
        Ok(0x1234_5678)
    );
    let fault = m
        .cpu
        .translate(&m.mem, 0x4000_0000, Access::Read, false, false)
        .unwrap_err();
    assert_eq!(fault.error_code & 1, 0, "not present");
}

/// Issue #15: a 64-bit LEAVE popped 2 bytes, not 8 (SDM vol 2 LEAVE: RSP <- RBP, then
/// RBP <- POP(), operand size 64 by default in 64-bit mode).
#[test]
fn leave_in_64_bit_mode_pops_eight_bytes() {
    // A frame whose saved RBP is 0x1122334455667788, then LEAVE.
    let code = [
        0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // mov rax, imm64
        0x50, // push rax
        0x48, 0x89, 0xe5, // mov rbp, rsp
        0xc9, // leave
        0xf4,
    ];
    let mut m = Machine::long(&code, 0x2000);
    assert!(matches!(m.run(10), RunEnd::Exit(Exit::Halt)));
    assert_eq!(m.cpu.cpu.gpr[5], 0x1122_3344_5566_7788);
    assert_eq!(m.cpu.cpu.gpr[4], 0x8_0000);
}

/// Issue #15: a jump to a non-canonical address ran on; it is #GP(0) with RIP on the
/// jump (SDM vol 2 JMP, 64-bit mode exceptions).
#[test]
fn a_jump_to_a_non_canonical_address_faults_on_the_jump() {
    // mov rax, 0x0000800000000000; jmp rax
    let code = [0x48, 0xb8, 0, 0, 0, 0, 0, 0x80, 0, 0, 0xff, 0xe0];
    let mut m = Machine::long(&code, 0x2000);
    // An IDT with one 64-bit gate, #GP to 0x3000 (HLT), and a GDT with the code segment.
    m.ram.write(0x500, &0u64.to_le_bytes()).unwrap();
    m.ram
        .write(0x508, &0x00af_9b00_0000_ffffu64.to_le_bytes())
        .unwrap();
    m.cpu.cpu.gdtr = sim_cpu::Table {
        base: 0x500,
        limit: 15,
    };
    let gate: u64 = 0x3000 | (8 << 16) | (0x8e00 << 32);
    m.ram.write(0x4000 + 13 * 16, &gate.to_le_bytes()).unwrap();
    m.ram.write(0x3000, &[0xf4]).unwrap();
    m.cpu.cpu.idtr = sim_cpu::Table {
        base: 0x4000,
        limit: 0xfff,
    };
    assert!(matches!(m.run(10), RunEnd::Exit(Exit::Halt)));
    let mut frame = [0u8; 16];
    m.ram.read(0x8_0000 - 48, &mut frame).unwrap();
    assert_eq!(
        u64::from_le_bytes(frame[..8].try_into().unwrap()),
        0,
        "error code 0"
    );
    assert_eq!(
        u64::from_le_bytes(frame[8..].try_into().unwrap()),
        0x200a,
        "RIP on the JMP"
    );
}

/// A 64-bit machine as [`Machine::long`] whose page tables let ring 3 in and whose GDT
/// at 0x500 holds ring-0 code (0x08) and data (0x10), ring-3 code (0x1b) and data (0x23).
fn long_with_rings(code: &[u8], ip: u64) -> Machine {
    let mut m = Machine::long(code, ip);
    m.ram
        .write(0x10_0000, &(0x10_1007u64).to_le_bytes())
        .unwrap();
    m.ram.write(0x10_1000, &(0x87u64).to_le_bytes()).unwrap();
    let gdt: [u64; 5] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00af_fb00_0000_ffff,
        0x00cf_f300_0000_ffff,
    ];
    for (i, d) in gdt.iter().enumerate() {
        m.ram.write(0x500 + 8 * i, &d.to_le_bytes()).unwrap();
    }
    m.cpu.cpu.gdtr = sim_cpu::Table {
        base: 0x500,
        limit: 39,
    };
    m.cpu.state_changed(&m.mem);
    m
}

/// SDM vol 2 IRET and RET (Far), "Operation": a return to an outer privilege nulls the
/// data segment registers the new CPL may not use, the selector only: in IA-32e mode
/// GS keeps its base (AMD APM vol 3 IRET, RET (Far); kvm-unit-tests emulator64 "Test
/// ret/iret with a nullified segment" reads through it at CPL 3). The sim zeroed it.
#[test]
fn sdm_vol2_iret_and_ret_far_to_an_outer_level_null_gs_but_keep_its_base() {
    // mov rax, gs:[0x10]; out 0x80, al
    let user = [0x65, 0x48, 0x8b, 0x04, 0x25, 0x10, 0, 0, 0, 0xe6, 0x80];
    let cases: [(&str, [u8; 2], &[u64]); 2] = [
        (
            "iretq",
            [0x48, 0xcf],
            &[0x3000, 0x1b, 0x3002, 0x9_0000, 0x23],
        ),
        ("retfq", [0x48, 0xcb], &[0x3000, 0x1b, 0x9_0000, 0x23]),
    ];
    for (name, ret, frame) in cases {
        let mut m = long_with_rings(&ret, 0x2000);
        m.ram.write(0x3000, &user).unwrap();
        m.ram
            .write(0x18_0010, &0x1122_3344_5566_7788u64.to_le_bytes())
            .unwrap();
        for (i, v) in frame.iter().enumerate() {
            m.ram.write(0x8_0000 + 8 * i, &v.to_le_bytes()).unwrap();
        }
        // IOPL 3: the OUT at CPL 3 exits rather than faults.
        m.cpu.cpu.set_rflags(0x3002);
        m.cpu.cpu.seg[5] = Segment {
            selector: 0x10,
            base: 0x18_0000,
            limit: 0xffff_ffff,
            attributes: 0xc093,
        };
        match m.run(10) {
            RunEnd::Exit(Exit::Io { port: 0x80, .. }) => {}
            other => panic!("{name}: {other:?}"),
        }
        let c = &m.cpu.cpu;
        assert_eq!(c.seg[1].selector, 0x1b, "{name}: at CPL 3");
        assert_eq!(c.seg[5].selector, 0, "{name}: GS (DPL 0) nulled");
        assert_eq!(c.seg[5].base, 0x18_0000, "{name}: GS base kept");
        assert_eq!(c.gpr[0], 0x1122_3344_5566_7788, "{name}: read through GS");
        assert_eq!(c.seg[3].selector, 0, "{name}: DS (DPL 0) nulled");
    }
}

/// Points #GP (vector 13) of an IDT at 0x4000 to a HLT at 0x3000, through code 0x08.
fn gp_to_hlt(m: &mut Machine) {
    let gate: u64 = 0x3000 | (8 << 16) | (0x8e00 << 32);
    m.ram.write(0x4000 + 13 * 16, &gate.to_le_bytes()).unwrap();
    m.ram.write(0x3000, &[0xf4]).unwrap();
    m.cpu.cpu.idtr = sim_cpu::Table {
        base: 0x4000,
        limit: 0xfff,
    };
}

/// AMD APM vol 3 LTR and LLDT, "Exceptions": in 64-bit mode a 16-byte TSS or LDT
/// descriptor whose base is non-canonical is #GP(selector), and nothing is loaded (nor
/// the TSS marked busy); Intel's 5-level paging white paper 2.5 checks it at the
/// paging width, 48 bits without LA57, which this processor does not advertise
/// (kvm-unit-tests la57 "Write to TR_BASE/LDT_BASE ... did NOT fail").
#[test]
fn amd_apm_ltr_and_lldt_refuse_a_non_canonical_base_with_gp_selector() {
    const LA48: u64 = 0xffff_aaaa_aaaa_aaaa;
    const LA57: u64 = 0xffaa_aaaa_aaaa_aaaa;
    const NONCANONICAL: u64 = 0xaaaa_aaaa_aaaa_aaaa;
    // mov ax, sel; ltr ax (0F 00 /3) or lldt ax (0F 00 /2); hlt
    for (name, sel, modrm, kind) in [
        ("ltr", 0x28u16, 0xd8u8, 0x89u64),
        ("lldt", 0x38, 0xd0, 0x82),
    ] {
        for (base, loads) in [(LA48, true), (LA57, false), (NONCANONICAL, false)] {
            let [s0, s1] = sel.to_le_bytes();
            let code = [0x66, 0xb8, s0, s1, 0x0f, 0x00, modrm, 0xf4];
            let mut m = long_with_rings(&code, 0x2000);
            gp_to_hlt(&mut m);
            let low = 0x67 | (base & 0xff_ffff) << 16 | kind << 40 | ((base >> 24) & 0xff) << 56;
            let at = 0x500 + sel as usize;
            m.ram.write(at, &low.to_le_bytes()).unwrap();
            m.ram.write(at + 8, &(base >> 32).to_le_bytes()).unwrap();
            m.cpu.cpu.gdtr.limit = 0x47;
            assert!(matches!(m.run(10), RunEnd::Exit(Exit::Halt)), "{name}");
            let c = &m.cpu.cpu;
            let loaded = if name == "ltr" { c.tr } else { c.ldtr };
            let mut access = [0u8; 1];
            m.ram.read(at + 5, &mut access).unwrap();
            if loads {
                assert_eq!(c.rip, 0x2008, "{name} {base:#x} loads");
                assert_eq!((loaded.selector, loaded.base), (sel, base), "{name}");
            } else {
                assert_eq!(c.rip, 0x3001, "{name} {base:#x}: #GP");
                let mut code = [0u8; 8];
                m.ram.read(0x8_0000 - 48, &mut code).unwrap();
                assert_eq!(
                    u64::from_le_bytes(code),
                    sel as u64,
                    "{name}: #GP(selector)"
                );
                assert_ne!(loaded.selector, sel, "{name}: nothing loaded");
                assert_eq!(access[0], kind as u8, "{name}: the descriptor unchanged");
            }
        }
    }
}

/// Points `vector` of the IDT at 0x4000 (made present here) to `handler`, through an
/// interrupt gate to code 0x08 at DPL 3 (INT n may use it from any level).
fn gate(m: &mut Machine, vector: u8, handler: u64) {
    let gate: u64 = (handler & 0xffff) | (8 << 16) | (0xee00 << 32) | (handler >> 16) << 48;
    m.ram
        .write(0x4000 + vector as usize * 16, &gate.to_le_bytes())
        .unwrap();
    m.cpu.cpu.idtr = sim_cpu::Table {
        base: 0x4000,
        limit: 0xfff,
    };
}

/// A qword of guest RAM.
fn qword(m: &Machine, at: u64) -> u64 {
    let mut b = [0u8; 8];
    m.ram.read(at as usize, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// SDM vol 3 18.3.1.1 (and 6.x, the frame of a fault): "for any fault-class exception
/// except a debug exception generated in response to an instruction breakpoint, the
/// value pushed for RF is 1", so the handler returns to the instruction without its
/// breakpoint firing again; a trap (INT3) pushes RF as it was. The handler itself runs
/// with RF clear. kvm-unit-tests idt_test "Testing #GP rflags.rf", "#UD rflags.rf".
#[test]
fn sdm_18_3_1_1_a_fault_pushes_rflags_with_rf_set() {
    // #GP: mov rax, 0xffffffff; mov cr4, rax (reserved bits); #UD: ud2; #BP: int3.
    let gp = [0x48, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x22, 0xe0];
    let cases: [(&str, &[u8], u8, u64, u64); 3] = [
        ("#GP", &gp, 13, 0x8_0000 - 48 + 24, 1 << 16),
        ("#UD", &[0x0f, 0x0b], 6, 0x8_0000 - 40 + 16, 1 << 16),
        ("#BP (a trap)", &[0xcc], 3, 0x8_0000 - 40 + 16, 0),
    ];
    for (name, code, vector, rflags_at, rf) in cases {
        let mut m = long_with_rings(code, 0x2000);
        gate(&mut m, vector, 0x3000);
        m.ram.write(0x3000, &[0xf4]).unwrap();
        assert!(matches!(m.run(10), RunEnd::Exit(Exit::Halt)), "{name}");
        assert_eq!(m.cpu.cpu.rip, 0x3001, "{name}: the handler ran");
        assert_eq!(qword(&m, rflags_at) & (1 << 16), rf, "{name}: RF pushed");
        assert_eq!(
            m.cpu.cpu.rflags() & (1 << 16),
            0,
            "{name}: the handler's RF"
        );
    }
}

/// SDM vol 3 18.2.4: with DR7.GD set a MOV with a debug register is a #DB fault with
/// DR6.BD set, and "the processor clears the GD flag upon entering to the debug
/// exception handler", so the handler may read DR6 and DR7; returning re-executes the
/// MOV, which now completes. The sim left GD set: the handler's own MOV faulted on and
/// on (kvm-unit-tests debug triple-faulted).
#[test]
fn sdm_18_2_4_entering_the_db_handler_clears_dr7_gd() {
    // mov rax, dr6; hlt
    let mut m = long_with_rings(&[0x0f, 0x21, 0xf0, 0xf4], 0x2000);
    gate(&mut m, 1, 0x3000);
    // The handler: mov rbx, dr6; mov rcx, dr7; iretq
    m.ram
        .write(0x3000, &[0x0f, 0x21, 0xf3, 0x0f, 0x21, 0xf9, 0x48, 0xcf])
        .unwrap();
    m.cpu.cpu.dr[7] = 0x2400;
    assert!(matches!(m.run(20), RunEnd::Exit(Exit::Halt)));
    let c = &m.cpu.cpu;
    assert_eq!(c.rip, 0x2004, "the MOV completed after the handler");
    assert_eq!(c.gpr[3] & (1 << 13), 1 << 13, "DR6.BD in the handler");
    assert_eq!(c.gpr[1], 0x400, "DR7.GD clear in the handler");
    assert_eq!(c.gpr[0], c.gpr[3], "the MOV read DR6 on its return");
}
