mod common;

use common::*;
use hv_core::message::*;
use hv_core::Exit;
use iced_x86::code_asm::*;
use mshv_bindings::*;

#[test]
fn real_mode_out_exits_with_the_io_message_and_rip_at_the_instruction() {
    let mut g = guest();
    let code = assemble(16, 0x1000, |a| {
        a.mov(al, 0x41).unwrap();
        a.mov(dx, 0x3f8).unwrap();
        a.out(dx, al).unwrap();
        a.hlt().unwrap();
    });
    g.load(0x1000, &code);
    g.real_mode(0x1000);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_X64_IO_PORT_INTERCEPT);
    let io: hv_x64_io_port_intercept_message = g.msg.payload();
    assert_eq!({ io.port_number }, 0x3f8);
    assert_eq!({ io.rax } & 0xff, 0x41);
    assert_eq!({ io.header.rip }, 0x1000 + 2 + 3);
    assert_eq!(io.header.instruction_length(), 1);
    assert_eq!(
        { io.header.intercept_access_type },
        HV_INTERCEPT_ACCESS_WRITE as u8
    );
    // SAFETY: reading the bitfield view of a plain u8.
    assert_eq!(unsafe { io.access_info.__bindgen_anon_1.access_size() }, 1);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RIP), 0x1005);
    // The VMM completes the OUT by advancing RIP; then the guest halts.
    g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x1006);
    assert_eq!(g.run(), Exit::Halted);
}

#[test]
fn long_mode_guest_with_paging_writes_a_port() {
    let mut g = guest();
    let code = assemble(64, 0x2000, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64).unwrap();
        a.mov(dx, 0x80).unwrap();
        a.out(dx, eax).unwrap();
    });
    g.load(0x2000, &code);
    g.long_mode(0x2000);
    assert_eq!(g.run(), Exit::Message);
    let io: hv_x64_io_port_intercept_message = g.msg.payload();
    assert_eq!({ io.port_number }, 0x80);
    assert_eq!({ io.rax }, 0x1122_3344_5566_7788);
    // SAFETY: reading the bitfield view of a plain u8.
    assert_eq!(unsafe { io.access_info.__bindgen_anon_1.access_size() }, 4);
    // SAFETY: reading the bitfield view of a plain u16.
    let efer_lma = unsafe { io.header.execution_state.__bindgen_anon_1.efer_lma() };
    assert_eq!(efer_lma, 1);
}

#[test]
fn register_page_is_filled_at_intercepts_and_a_stale_dirty_class_wins_over_a_hypercall() {
    use hv_core::page::*;
    let mut g = guest();
    g.load(0x1000, &[0xe6, 0x80, 0xe6, 0x80, 0xf4]); // out 0x80, al; out 0x80, al; hlt
    g.real_mode(0x1000);
    g.set(hv_register_name_HV_X64_REGISTER_RAX, 7);
    assert_eq!(g.run(), Exit::Message);
    let p = g.page();
    assert!(p.is_valid());
    assert_eq!(p.read_u64(GP_REGISTERS), 7);
    assert_eq!(p.read_u64(RIP), 0x1000);
    // A dirty GENERAL class on the page beats a set-register hypercall of the same exit.
    p.write_u64(GP_REGISTERS, 0x55);
    p.write_u32(DIRTY, DIRTY_GENERAL | DIRTY_IP);
    p.write_u64(RIP, 0x1002);
    g.set(hv_register_name_HV_X64_REGISTER_RAX, 0x99);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RAX), 0x55);
    assert_eq!(p.read_u32(DIRTY), 0, "dirty bits are cleared at resume");
    assert_eq!(p.read_u64(RIP), 0x1002);
}

/// An instruction the processor does not have (CPUID advertises no SSE3) is #UD in
/// the guest, as on such a processor, not an error of the VMM (SDM vol 2 ADDSUBPS,
/// "#UD If CPUID.01H:ECX.SSE3[bit 0] = 0").
#[test]
fn an_instruction_the_processor_lacks_is_ud_in_the_guest() {
    let mut g = guest();
    g.load(0x1000, &[0xf2, 0x0f, 0xd0, 0xc1]); // addsubps xmm0, xmm1
    g.load(6 * 4, &[0x00, 0x30, 0x00, 0x00]); // #UD vector -> 0000:3000
    g.load(0x3000, &[0xe6, 0x06, 0xf4]); // out 6, al; hlt
    g.real_mode(0x1000);
    assert_eq!(g.run(), hv_core::Exit::Message);
    assert_eq!(
        g.msg.message_type(),
        hv_core::message::HVMSG_X64_IO_PORT_INTERCEPT
    );
    let io: mshv_bindings::hv_x64_io_port_intercept_message = g.msg.payload();
    assert_eq!({ io.port_number }, 6, "the #UD handler ran");
}

/// The TSC ticks between two RDTSCs around `middle` (real mode; deterministic clock).
fn ticks_around(middle: &[u8]) -> u64 {
    let mut g = guest_with(hv_core::VmConfig {
        clock: Some(hv_core::ClockMode::Deterministic),
        ..hv_core::VmConfig::default()
    });
    let mut code = vec![0x0f, 0x31, 0x66, 0x89, 0xc6]; // rdtsc; mov esi, eax
    code.extend_from_slice(middle);
    code.extend_from_slice(&[0x0f, 0x31, 0x66, 0x29, 0xf0, 0xf4]); // rdtsc; sub eax, esi; hlt
    g.load(0x1000, &code);
    g.real_mode(0x1000);
    loop {
        match g.run() {
            Exit::Message => {
                // Complete the OUT: past its two bytes.
                let rip = g.get(hv_register_name_HV_X64_REGISTER_RIP);
                g.set(hv_register_name_HV_X64_REGISTER_RIP, rip + 2);
            }
            Exit::Halted => return g.get(hv_register_name_HV_X64_REGISTER_RAX) & 0xffff_ffff,
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn on_the_deterministic_clock_an_exit_to_the_vmm_costs_exit_cost_ns_of_guest_time() {
    // Two NOPs against an OUT and a NOP: the same instructions, one of them an exit.
    let plain = ticks_around(&[0x90, 0x90]);
    let exiting = ticks_around(&[0xe6, 0x80]);
    assert!(plain < 10, "{plain}");
    // The OUT the VMM completes is not retired by the processor, so the instruction
    // count around it is a tick or two lower; the exit's cost is what remains.
    let cost = exiting + 2 - plain;
    assert!(
        (hv_sim::EXIT_COST_NS..=hv_sim::EXIT_COST_NS + 2).contains(&cost),
        "{exiting} against {plain}"
    );
}

#[test]
fn on_the_deterministic_clock_a_pause_takes_pause_cost_ns_of_guest_time() {
    // One instruction each: a NOP takes one tick, a PAUSE PAUSE_COST_NS.
    let plain = ticks_around(&[0x90]);
    let paused = ticks_around(&[0xf3, 0x90]);
    assert_eq!(paused - plain, hv_sim::PAUSE_COST_NS - 1);
}
