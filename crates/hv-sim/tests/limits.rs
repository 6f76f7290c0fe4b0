//! Stopping a guest that never exits: instruction budget, wall-clock timeout and a
//! cancel from another thread, each a distinct exit, and the vCPU resumable after.

mod common;

use common::*;
use hv_core::{Exit, RunLimits};
use std::time::Duration;

/// `inc rax; jmp $-3`: counts forever.
fn spinning_guest() -> Guest {
    let mut g = guest();
    g.load(0x1000, &[0x66, 0x40, 0xeb, 0xfc]);
    g.real_mode(0x1000);
    g
}

fn run(g: &mut Guest, limits: RunLimits) -> Exit {
    g.vcpu.run(&mut g.msg, &limits).unwrap()
}

#[test]
fn an_instruction_budget_stops_the_guest_exactly_and_it_resumes() {
    let mut g = spinning_guest();
    let budget = RunLimits {
        max_instructions: Some(1000),
        deadline: None,
        ..RunLimits::default()
    };
    assert_eq!(run(&mut g, budget), Exit::InstructionLimit);
    assert_eq!(g.vcpu.instructions(), 1000);
    assert_eq!(
        g.get(mshv_bindings::hv_register_name_HV_X64_REGISTER_RAX),
        500
    );
    assert_eq!(run(&mut g, budget), Exit::InstructionLimit);
    assert_eq!(
        g.get(mshv_bindings::hv_register_name_HV_X64_REGISTER_RAX),
        1000
    );
}

#[test]
fn a_timeout_stops_a_spinning_guest() {
    let mut g = spinning_guest();
    let limits = RunLimits::with_timeout(None, Some(Duration::from_millis(20)));
    assert_eq!(run(&mut g, limits), Exit::Timeout);
    assert!(g.vcpu.instructions() > 0);
}

/// `rep movsq` of 1 MiB between two RAM buffers, again and again: each instruction
/// runs 131,072 iterations, and the deadline must still hold.
fn rep_heavy_guest() -> Guest {
    use iced_x86::code_asm::*;
    let mut g = guest_with_ram(4 << 20);
    let code = assemble(64, 0x2000, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        a.mov(rcx, 0x2_0000u64).unwrap();
        a.mov(rsi, 0x20_0000u64).unwrap();
        a.mov(rdi, 0x30_0000u64).unwrap();
        a.rep().movsq().unwrap();
        a.jmp(top).unwrap();
    });
    g.load(0x2000, &code);
    g.long_mode(0x2000);
    g
}

#[test]
fn a_deadline_holds_within_a_millisecond_whatever_the_guest_executes() {
    for (name, mut g) in [("spin", spinning_guest()), ("rep movs", rep_heavy_guest())] {
        for ms in [1u64, 5] {
            let start = std::time::Instant::now();
            let limits = RunLimits::with_timeout(None, Some(Duration::from_millis(ms)));
            assert_eq!(run(&mut g, limits), Exit::Timeout, "{name}");
            let late = start.elapsed().saturating_sub(Duration::from_millis(ms));
            // The check runs every 1,024 instructions or string iterations, microseconds
            // apart; the bound is for a loaded 2-core machine that deschedules threads
            // for tens of milliseconds (a 5 ms bound failed there under `cargo test`).
            assert!(late < Duration::from_millis(50), "{name}: {late:?} late");
        }
    }
}

#[test]
fn a_cancel_stops_a_rep_heavy_guest_promptly() {
    let mut g = rep_heavy_guest();
    let canceller = g.vcpu.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        let at = std::time::Instant::now();
        canceller.cancel();
        at
    });
    assert_eq!(run(&mut g, RunLimits::default()), Exit::Cancelled);
    let cancelled_at = t.join().unwrap();
    // As above: prompt is microseconds; 50 ms allows for a loaded machine.
    assert!(cancelled_at.elapsed() < Duration::from_millis(50));
}

#[test]
fn a_cancel_from_another_thread_interrupts_a_run_without_limits() {
    let mut g = spinning_guest();
    let canceller = g.vcpu.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        canceller.cancel();
    });
    // The budget is only a safety net for a broken cancel: ~minutes of guest time.
    let limits = RunLimits {
        max_instructions: Some(1 << 40),
        deadline: None,
        ..RunLimits::default()
    };
    assert_eq!(run(&mut g, limits), Exit::Cancelled);
    t.join().unwrap();
    // The cancel was consumed: the next run goes on until its budget.
    let short = RunLimits {
        max_instructions: Some(10),
        deadline: None,
        ..RunLimits::default()
    };
    assert_eq!(run(&mut g, short), Exit::InstructionLimit);
}

#[test]
fn a_cancel_before_run_makes_the_next_run_return_at_once() {
    let mut g = spinning_guest();
    g.vcpu.canceller().cancel();
    assert_eq!(run(&mut g, RunLimits::default()), Exit::Cancelled);
    assert_eq!(g.vcpu.instructions(), 0);
}

/// An instruction the VMM completes (a port access here) retires as one instruction,
/// as HLT does: `mov al, 1; out 0x80, al; hlt` counts 2 at the OUT's exit, 3 in the halt.
#[test]
fn instructions_that_exit_count_as_retired() {
    let mut g = guest();
    g.load(0x1000, &[0xb0, 0x01, 0xe6, 0x80, 0xf4]);
    g.real_mode(0x1000);
    assert_eq!(run(&mut g, RunLimits::default()), Exit::Message);
    assert_eq!(g.vcpu.instructions(), 2);
    g.set(mshv_bindings::hv_register_name_HV_X64_REGISTER_RIP, 0x1004);
    assert_eq!(run(&mut g, RunLimits::default()), Exit::Halted);
    assert_eq!(g.vcpu.instructions(), 3);
}

/// On the deterministic clock the TSC counts retired instructions: one tick each,
/// whether they run inside one block, across blocks, or one at a time under the
/// single-step flag's path (an instruction budget of 1).
#[test]
fn rdtsc_sees_one_tick_per_instruction_retired_before_it() {
    // rdtsc; mov esi, eax; nop x5; rdtsc; sub eax, esi; jmp +0; nop; rdtsc; sub eax, esi;
    // out 0x80, al
    let code = [
        0x0f, 0x31, 0x66, 0x89, 0xc6, 0x90, 0x90, 0x90, 0x90, 0x90, 0x0f, 0x31, 0x66, 0x29, 0xf0,
        0x66, 0x89, 0xc7, 0xeb, 0x00, 0x90, 0x0f, 0x31, 0x66, 0x29, 0xf0, 0xe6, 0x80,
    ];
    // Between the rdtscs: mov, 5 nops, rdtsc = 7; then sub, mov edi, jmp, nop, rdtsc
    // after the first: 7 + 1 + 1 + 1 + 1 + 1 = 12 since the first.
    let expect = [7u64, 12];
    for one_at_a_time in [false, true] {
        let mut g = guest();
        g.load(0x1000, &code);
        g.real_mode(0x1000);
        let limits = RunLimits {
            max_instructions: Some(if one_at_a_time { 1 } else { 100 }),
            ..RunLimits::default()
        };
        while run(&mut g, limits) == Exit::InstructionLimit {}
        let first = g.get(mshv_bindings::hv_register_name_HV_X64_REGISTER_RDI) & 0xffff_ffff;
        let second = g.get(mshv_bindings::hv_register_name_HV_X64_REGISTER_RAX) & 0xffff_ffff;
        assert_eq!([first, second], expect, "one at a time: {one_at_a_time}");
    }
}
