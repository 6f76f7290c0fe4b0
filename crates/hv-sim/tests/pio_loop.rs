//! The Rust PIO loop (the benchmark baseline) completes IN and OUT like the TypeScript
//! handler: through the page when valid, by hypercall otherwise.

mod common;

use common::*;
use hv_core::message::HVMSG_X64_IO_PORT_INTERCEPT;
use hv_core::pio_loop::run_pio_loop;
use hv_core::RegisterPageMode;
use iced_x86::code_asm::*;
use mshv_bindings::*;

fn guest_loop(page: RegisterPageMode) -> Guest {
    let mut g = guest_with(config(page));
    let code = assemble(16, 0x1000, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 100u32).unwrap();
        a.mov(ebx, 0u32).unwrap();
        a.set_label(&mut top).unwrap();
        a.out(0x80u32, al).unwrap();
        a.in_(al, 0x80u32).unwrap();
        a.add(bl, al).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.out(0xf4u32, al).unwrap();
        a.hlt().unwrap();
    });
    g.load(0x1000, &code);
    g.real_mode(0x1000);
    g
}

#[test]
fn the_rust_loop_completes_in_and_out_with_and_without_the_page() {
    for page in [RegisterPageMode::On, RegisterPageMode::Off] {
        let mut g = guest_loop(page);
        g.vcpu.reset_counters();
        let end = run_pio_loop(g.vcpu.as_mut(), &mut g.msg, 0xf4, u64::MAX).unwrap();
        assert_eq!(end.exits, 201, "{page:?}: 100 OUT + 100 IN + the stop");
        assert_eq!(end.message_type, HVMSG_X64_IO_PORT_INTERCEPT);
        // Every IN read 0xff: BL = 100 * 0xff mod 256.
        assert_eq!(
            g.get(hv_register_name_HV_X64_REGISTER_RBX) & 0xff,
            (100 * 0xff) & 0xff
        );
        let sets = g.vcpu.counters().set_registers;
        match page {
            RegisterPageMode::On => assert_eq!(sets, 0, "all through the page"),
            _ => assert_eq!(sets, 200, "one set per completed exit"),
        }
    }
}

#[test]
fn max_exits_bounds_the_loop() {
    let mut g = guest_loop(RegisterPageMode::On);
    let end = run_pio_loop(g.vcpu.as_mut(), &mut g.msg, 0xf4, 7).unwrap();
    assert_eq!(end.exits, 7);
}
