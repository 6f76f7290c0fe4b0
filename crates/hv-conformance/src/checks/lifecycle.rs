//! Stopping a running vCPU, and giving everything back at close.

use crate::guest::{expect, expect_eq, Guest};
use crate::{Check, CheckError, Outcome};
use hv_core::{Exit, HvBackend, RunLimits, VmConfig};
use std::time::{Duration, Instant};

/// jmp $: spins until stopped from outside.
const SPIN: [u8; 2] = [0xeb, 0xfe];
/// How soon a stop must take effect: generous for a loaded CI machine, yet far below
/// the guest's own run limit, so a lost stop fails instead of passing late.
const PROMPT: Duration = Duration::from_secs(2);

pub const CANCEL: Check = Check {
    name: "cancel",
    summary: "cancel() from another thread stops a spinning guest promptly; a cancel before run() returns at once",
    run: cancel,
};

fn cancel(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &SPIN)?;
    let canceller = g.vcpu.canceller();
    let started = Instant::now();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        canceller.cancel();
    });
    let exit = g.run();
    let took = started.elapsed();
    stopper
        .join()
        .map_err(|_| CheckError::Mismatch("the cancelling thread panicked".into()))?;
    expect(exit? == Exit::Cancelled, || {
        "the run did not end cancelled".into()
    })?;
    expect(took < PROMPT, || format!("the cancel took {took:?}"))?;

    g.vcpu.canceller().cancel();
    let early = Instant::now();
    expect(g.run()? == Exit::Cancelled, || {
        "a cancel issued before run() was lost".into()
    })?;
    let early = early.elapsed();
    expect(early < PROMPT, || {
        format!("the pending cancel took {early:?}")
    })?;
    Ok(format!(
        "stopped {:.1} ms after the cancel from another thread",
        (took.as_secs_f64() - 0.05) * 1e3
    ))
}

pub const DEADLINE: Check = Check {
    name: "deadline",
    summary: "a run with a deadline ends with Timeout on a spinning guest, and the vCPU runs again afterwards",
    run: deadline,
};

fn deadline(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &SPIN)?;
    let started = Instant::now();
    let limits = RunLimits::with_timeout(None, Some(Duration::from_millis(50)));
    let exit = g.vcpu.run(&mut g.msg, &limits)?;
    let took = started.elapsed();
    expect(exit == Exit::Timeout, || {
        format!("the run ended with {exit:?}")
    })?;
    expect(took < PROMPT, || {
        format!("the 50 ms deadline took {took:?}")
    })?;
    // The guest is still whole: point it at a HLT and it reports it.
    g.ram.write(0x1100, &[0xf4])?;
    g.set(mshv_bindings::hv_register_name_HV_X64_REGISTER_RIP, 0x1100)?;
    g.run_to_halt()?;
    Ok(format!(
        "a 50 ms deadline ended the run after {:.1} ms",
        took.as_secs_f64() * 1e3
    ))
}

pub const CLOSE: Check = Check {
    name: "close",
    summary: "dropping VMs and vCPUs gives back their file descriptors and guest memory",
    run: close,
};

/// File descriptors open in this process (Linux `/proc/self/fd`).
fn open_fds() -> Result<usize, CheckError> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .map_err(|e| CheckError::Mismatch(format!("cannot list /proc/self/fd: {e}")))
}

fn close(hv: &dyn HvBackend) -> Outcome {
    // One round first, so lazily opened descriptors (the device itself) are counted.
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &[0xfa, 0xf4])?;
    g.run_to_halt()?;
    drop(g);
    let fds = open_fds()?;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let mut g = Guest::real_mode(hv, &VmConfig::default(), 1 << 20, &[0xfa, 0xf4])?;
        let second = g.vm.create_vcpu(1)?;
        g.run_to_halt()?;
        let ram = std::sync::Arc::clone(&g.ram);
        let page = g.vcpu.register_page_region();
        drop(second);
        drop(g);
        expect_eq(
            "holders of a dropped VM's RAM besides this check",
            std::sync::Arc::strong_count(&ram) - 1,
            0,
        )?;
        if let Some(page) = page {
            expect(page.is_retired(), || {
                format!("round {round}: a dropped vCPU's register page is still mapped")
            })?;
        }
    }
    // Other threads of the process (a test runner) may open files meanwhile, so only
    // growth on the scale of the rounds counts as a leak: each VM holds at least three.
    let grown = open_fds()?.saturating_sub(fds);
    expect(grown < ROUNDS, || {
        format!("{grown} file descriptors stayed open after {ROUNDS} VMs were dropped")
    })?;
    Ok(format!(
        "{ROUNDS} VMs with two vCPUs and 1 MiB each created, run and dropped: RAM, register pages and descriptors all given back"
    ))
}
