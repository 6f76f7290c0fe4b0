//! What the hypervisor does with the VMM's interrupt requests
//! (`HVCALL_ASSERT_VIRTUAL_INTERRUPT`, mshv-ioctls `request_virtual_interrupt`).

use crate::guest::{expect_eq, Guest, CODE, RUN_LIMIT};
use crate::{Check, CheckError, Outcome};
use hv_core::message::*;
use hv_core::{Exit, HvBackend, InterruptKind, InterruptRequest, RunLimits, VmConfig};
use mshv_bindings::*;
use std::time::{Duration, Instant};

pub const INTERRUPT_REQUEST: Check = Check {
    name: "interrupt_request",
    summary: "an NMI the VMM requests is taken before the next instruction, and one requested from another thread wakes a vCPU halted with interrupts enabled",
    run: interrupt_request,
};

/// The NMI handler (IVT vector 2): `mov al, 2; out 0x80, al; iret`. An NMI needs no
/// enabled APIC and ignores IF (SDM vol 3 6.7.1), so a real-mode guest takes it on
/// any hypervisor.
const NMI_HANDLER: u64 = 0x3000;
const NMI: InterruptRequest = InterruptRequest {
    kind: InterruptKind::Nmi,
    destination: 0,
    logical: false,
    vector: 2,
    level: false,
};

fn port(g: &Guest) -> (u16, u8) {
    let m: hv_x64_io_port_intercept_message = g.msg.payload();
    (m.port_number, m.rax as u8)
}

fn guest(hv: &dyn HvBackend, code: &[u8]) -> Result<Guest, CheckError> {
    let g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, code)?;
    g.ram
        .write(2 * 4, &[NMI_HANDLER as u8, (NMI_HANDLER >> 8) as u8, 0, 0])?;
    g.ram
        .write(NMI_HANDLER as usize, &[0xb0, 0x02, 0xe6, 0x80, 0xcf])?;
    Ok(g)
}

fn interrupt_request(hv: &dyn HvBackend) -> Outcome {
    // mov al, 1; out 0x81, al; hlt
    let mut g = guest(hv, &[0xb0, 0x01, 0xe6, 0x81, 0xf4])?;
    g.vm.interrupts().request(&NMI)?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    expect_eq("the first port (the NMI handler's)", port(&g).0, 0x80)?;
    let pushed = g.ram_u16(crate::guest::STACK as usize - 6)?;
    expect_eq("the IP the NMI pushed", pushed, CODE as u16)?;
    g.complete()?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    expect_eq("the port after the handler", port(&g).0, 0x81)?;
    expect_eq("AL after the handler", port(&g).1, 1)?;

    // sti; hlt; mov al, 3; out 0x82, al
    let mut g = guest(hv, &[0xfb, 0xf4, 0xb0, 0x03, 0xe6, 0x82])?;
    let interrupts = g.vm.interrupts();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        interrupts.request(&NMI)
    });
    let start = Instant::now();
    // MSHV waits in the hypervisor on HLT with interrupts enabled; the sim waits too
    // when the run may block.
    let limits = RunLimits {
        block_on_halt: true,
        ..RunLimits::with_timeout(None, Some(RUN_LIMIT))
    };
    let exit = g.vcpu.run(&mut g.msg, &limits)?;
    let sent = sender
        .join()
        .map_err(|_| CheckError::Mismatch("the sending thread panicked".into()))?;
    sent?;
    let waited = start.elapsed();
    if exit != Exit::Message || g.msg.message_type() != HVMSG_X64_IO_PORT_INTERCEPT {
        return Err(CheckError::Mismatch(format!(
            "the halted vCPU was not woken by the NMI: the run ended with {exit:?}"
        )));
    }
    expect_eq("the waking handler's port", port(&g).0, 0x80)?;
    Ok(format!(
        "NMI taken before the next instruction; a halted vCPU woke {} ms after the request's thread started",
        waited.as_millis()
    ))
}

pub const LINT0_EXTINT: Check = Check {
    name: "extint_via_lint",
    summary: "the VMM's set_lint leaves LVT LINT0 in ExtINT mode (unmasked on the BSP) and LINT1 in NMI mode; an ExtINT request waits while LINT0 is masked and is taken once the VMM unmasks it",
    run: lint0_extint,
};

/// The ExtINT handler (IVT vector 0x40): `mov al, 0x40; out 0x80, al; iret`.
const EXTINT_HANDLER: u64 = 0x3100;
const EXTINT: InterruptRequest = InterruptRequest {
    kind: InterruptKind::ExtInt,
    destination: 0,
    logical: false,
    vector: 0x40,
    level: false,
};

/// Sources: CH `arch/src/x86_64/interrupts.rs` and QEMU `target/i386/mshv/mshv-cpu.c`
/// `set_lint` (LINT0 ExtINT, LINT1 NMI, read then written back through the LAPIC
/// state); KVM `kvm_lapic_reset` (the BSP's LINT0 unmasked, KVM_X86_QUIRK_LINT0_REENABLED);
/// SDM vol 3 11.5.1 and KVM `kvm_apic_accept_pic_intr` (the 8259's interrupt is taken
/// only through an unmasked ExtINT LINT0 while the APIC is enabled). What MSHV does
/// with an ExtINT request while LINT0 is masked is not documented: this check is
/// where a host says.
fn lint0_extint(hv: &dyn HvBackend) -> Outcome {
    use hv_core::lapic::{register, set_lint, set_register, LVT_LINT0, LVT_LINT1, LVT_MASKED};
    // sti; hlt; mov al, 3; out 0x82, al
    let mut g = guest(hv, &[0xfb, 0xf4, 0xb0, 0x03, 0xe6, 0x82])?;
    g.ram.write(
        0x40 * 4,
        &[EXTINT_HANDLER as u8, (EXTINT_HANDLER >> 8) as u8, 0, 0],
    )?;
    g.ram
        .write(EXTINT_HANDLER as usize, &[0xb0, 0x40, 0xe6, 0x80, 0xcf])?;
    set_lint(g.vcpu.as_mut(), true)?;
    let mut page = g.vcpu.lapic()?;
    let (lint0, lint1) = (register(&page, LVT_LINT0)?, register(&page, LVT_LINT1)?);
    expect_eq(
        "LINT0's mask and delivery mode after set_lint",
        lint0 & (LVT_MASKED | 0x700),
        0x700,
    )?;
    expect_eq("LINT1's delivery mode after set_lint", lint1 & 0x700, 0x400)?;

    set_register(&mut page, LVT_LINT0, lint0 | LVT_MASKED)?;
    g.vcpu.set_lapic(&page)?;
    g.vm.interrupts().request(&EXTINT)?;
    g.run_to_halt().map_err(|e| {
        CheckError::Mismatch(format!(
            "an ExtINT with LINT0 masked must wait (SDM vol 3 11.5.1): {e}"
        ))
    })?;
    set_register(&mut page, LVT_LINT0, lint0)?;
    g.vcpu.set_lapic(&page)?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    expect_eq(
        "the port once LINT0 is unmasked (the handler's)",
        port(&g).0,
        0x80,
    )?;
    Ok(format!(
        "LINT0 {lint0:#x}, LINT1 {lint1:#x} after set_lint; the ExtINT waited in HLT while LINT0 was masked and was taken once it was unmasked"
    ))
}
