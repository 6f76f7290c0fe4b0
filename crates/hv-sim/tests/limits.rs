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
        timeout: None,
    };
    assert_eq!(run(&mut g, budget), Exit::BudgetExhausted);
    assert_eq!(g.vcpu.instructions(), 1000);
    assert_eq!(
        g.get(mshv_bindings::hv_register_name_HV_X64_REGISTER_RAX),
        500
    );
    assert_eq!(run(&mut g, budget), Exit::BudgetExhausted);
    assert_eq!(
        g.get(mshv_bindings::hv_register_name_HV_X64_REGISTER_RAX),
        1000
    );
}

#[test]
fn a_timeout_stops_a_spinning_guest() {
    let mut g = spinning_guest();
    let limits = RunLimits {
        max_instructions: None,
        timeout: Some(Duration::from_millis(20)),
    };
    assert_eq!(run(&mut g, limits), Exit::BudgetExhausted);
    assert!(g.vcpu.instructions() > 0);
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
        timeout: None,
    };
    assert_eq!(run(&mut g, limits), Exit::Cancelled);
    t.join().unwrap();
    // The cancel was consumed: the next run goes on until its budget.
    let short = RunLimits {
        max_instructions: Some(10),
        timeout: None,
    };
    assert_eq!(run(&mut g, short), Exit::BudgetExhausted);
}

#[test]
fn a_cancel_before_run_makes_the_next_run_return_at_once() {
    let mut g = spinning_guest();
    g.vcpu.canceller().cancel();
    assert_eq!(run(&mut g, RunLimits::default()), Exit::Cancelled);
    assert_eq!(g.vcpu.instructions(), 0);
}
