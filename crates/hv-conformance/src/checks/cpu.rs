//! What the hypervisor does with CPUID, MSRs, HLT and injected events.

use crate::guest::{expect, expect_eq, Guest, CODE, STACK};
use crate::{Check, CheckError, Outcome};
use hv_core::message::*;
use hv_core::{CpuidResult, HvBackend, PendingException, RegisterValue, VmConfig};
use mshv_bindings::*;

fn io_rax(g: &mut Guest) -> Result<u64, CheckError> {
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let m: hv_x64_io_port_intercept_message = g.msg.payload();
    Ok(m.rax)
}

pub const CPUID_RESULTS: Check = Check {
    name: "cpuid_results",
    summary: "CPUID answers registered with the hypervisor reach the guest without an exit, and withdrawing them restores the hypervisor's",
    run: cpuid_results,
};

/// mov eax, 0x80000002; cpuid; out 0x80, eax; mov eax, ebx; out 0x80, eax; hlt
const CPUID_CODE: [u8; 18] = [
    0x66, 0xb8, 0x02, 0x00, 0x00, 0x80, 0x0f, 0xa2, 0x66, 0xe7, 0x80, 0x66, 0x89, 0xd8, 0x66, 0xe7,
    0x80, 0xf4,
];
/// "doct" and "or!!": a brand string no processor (not even the sim) has.
const BRAND: [u32; 2] = [0x7463_6f64, 0x2121_726f];

fn cpuid_results(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &CPUID_CODE)?;
    // Leaf 0x8000_0002 (the brand string, SDM vol 2 CPUID): harmless to override, and
    // answered by any x86-64 processor. Registered with HVCALL_REGISTER_INTERCEPT_RESULT
    // on MSHV (as QEMU's and OpenVMM's mshv accelerators register theirs).
    let answer = CpuidResult {
        leaf: 0x8000_0002,
        subleaf: None,
        registers: [Some(BRAND[0]), Some(BRAND[1]), None, None],
    };
    g.vcpu.set_cpuid_results(&[answer])?;
    // The first exit must be the OUT: CPUID itself does not exit.
    expect_eq("EAX of CPUID 0x80000002", io_rax(&mut g)?, BRAND[0] as u64)?;
    g.complete()?;
    expect_eq("EBX of CPUID 0x80000002", io_rax(&mut g)?, BRAND[1] as u64)?;
    g.complete()?;
    g.run_to_halt()?;

    g.vcpu.set_cpuid_results(&[])?;
    // Out of the halt and back to the start: a halted VP stays halt-suspended until
    // the VMM clears it, whatever RIP it is given.
    g.set(hv_register_name_HV_REGISTER_INTERNAL_ACTIVITY_STATE, 0)?;
    g.set(hv_register_name_HV_X64_REGISTER_RIP, CODE)?;
    let own = io_rax(&mut g)?;
    expect(own != BRAND[0] as u64, || {
        "CPUID still answers the withdrawn result".into()
    })?;
    let text: String = own
        .to_le_bytes()
        .iter()
        .take(4)
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
        .collect();
    Ok(format!(
        "registered answer seen without an exit; withdrawn, the brand starts {text:?} again"
    ))
}

pub const MSR_INTERCEPT: Check = Check {
    name: "msr_intercept",
    summary: "RDMSR and WRMSR of an intercepted MSR exit with its number and value; the VMM's answer reaches the guest",
    run: msr_intercept,
};

/// IA32_APIC_BASE: present on every x86-64 processor. Hyperlight's mshv driver
/// intercepts its writes by number (`HV_INTERCEPT_TYPE_X64_MSR_INDEX`).
const APIC_BASE_MSR: u32 = 0x1b;

/// mov ecx, 0x1b; rdmsr; out 0x80, eax; wrmsr; hlt
const MSR_CODE: [u8; 14] = [
    0x66, 0xb9, 0x1b, 0x00, 0x00, 0x00, 0x0f, 0x32, 0x66, 0xe7, 0x80, 0x0f, 0x30, 0xf4,
];

fn msr_message(g: &mut Guest, access: u32) -> Result<hv_x64_msr_intercept_message, CheckError> {
    g.run_to(HVMSG_X64_MSR_INTERCEPT)?;
    let m: hv_x64_msr_intercept_message = g.msg.payload();
    expect_eq("the MSR number", m.msr_number, APIC_BASE_MSR)?;
    expect_eq(
        "the access type",
        m.header.intercept_access_type as u32,
        access,
    )?;
    expect_eq("the instruction length", m.header.instruction_length(), 2)?;
    Ok(m)
}

fn msr_intercept(hv: &dyn HvBackend) -> Outcome {
    let config = VmConfig {
        intercept_msrs: vec![APIC_BASE_MSR],
        ..VmConfig::default()
    };
    let mut g = Guest::real_mode(hv, &config, 0x10000, &MSR_CODE)?;
    msr_message(&mut g, HV_INTERCEPT_ACCESS_READ)?;
    g.set(hv_register_name_HV_X64_REGISTER_RAX, 0xfee0_0900)?;
    g.set(hv_register_name_HV_X64_REGISTER_RDX, 0)?;
    g.complete()?;
    expect_eq("EAX after the RDMSR", io_rax(&mut g)?, 0xfee0_0900)?;
    g.complete()?;
    let w = msr_message(&mut g, HV_INTERCEPT_ACCESS_WRITE)?;
    expect_eq(
        "the value written (EDX:EAX)",
        (w.rdx << 32) | (w.rax & 0xffff_ffff),
        0xfee0_0900,
    )?;
    g.complete()?;
    g.run_to_halt()?;
    Ok("RDMSR and WRMSR of IA32_APIC_BASE exited and completed".into())
}

pub const HLT: Check = Check {
    name: "hlt",
    summary: "HLT with interrupts disabled waits in the hypervisor, halt-suspended, with no intercept; an NMI ends the halt and the guest runs on after it",
    run: hlt,
};

fn hlt(hv: &dyn HvBackend) -> Outcome {
    // cli; hlt; mov al, 1; out 0x81, al — the NMI handler at 0x3000: out 0x80, al; iret.
    let mut g = Guest::real_mode(
        hv,
        &VmConfig::default(),
        0x10000,
        &[0xfa, 0xf4, 0xb0, 0x01, 0xe6, 0x81],
    )?;
    g.ram.write(2 * 4, &[0x00, 0x30, 0, 0])?;
    g.ram.write(0x3000, &[0xe6, 0x80, 0xcf])?;
    // No HLT intercept exists for a partition with a local APIC (see run_to_halt).
    g.run_to_halt()?;
    let rip = g.get(hv_register_name_HV_X64_REGISTER_RIP)?;
    expect_eq("RIP in the halt (past the HLT)", rip, CODE + 2)?;
    // With interrupts disabled an NMI is what ends the halt (SDM vol 3 6.7.1 / 8.4.5:
    // HLT resumes on NMI, SMI, INIT or RESET); the handler returns after the HLT.
    let nmi = hv_core::InterruptRequest {
        kind: hv_core::InterruptKind::Nmi,
        destination: 0,
        logical: false,
        vector: 2,
        level: false,
    };
    g.vm.interrupts().request(&nmi)?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let m: hv_x64_io_port_intercept_message = g.msg.payload();
    expect_eq("the NMI handler's port", m.port_number, 0x80)?;
    g.complete()?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let m: hv_x64_io_port_intercept_message = g.msg.payload();
    expect_eq("the port after the HLT", m.port_number, 0x81)?;
    Ok(format!(
        "halted at rip {rip:#x} without an intercept; an NMI woke it and it ran on after the HLT"
    ))
}

/// #GP as real mode takes it: without an error code, which real-mode delivery never
/// pushes (an injected event that asks for one there fails VM entry: SDM vol 3C,
/// "Checks on VM-Entry Control Fields").
const GP_REAL_MODE: PendingException = PendingException {
    vector: 13,
    error_code: None,
};
const HANDLER: u64 = 0x3000;

/// A real-mode guest running `nop; hlt` whose #GP vector points at `out 0x0d, al; hlt`.
fn guest_with_gp_handler(hv: &dyn HvBackend) -> Result<Guest, CheckError> {
    let g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &[0x90, 0xf4])?;
    g.ram
        .write(13 * 4, &[HANDLER as u8, (HANDLER >> 8) as u8, 0, 0])?;
    g.ram.write(HANDLER as usize, &[0xe6, 0x0d, 0xf4])?;
    Ok(g)
}

pub const EXCEPTION_INJECTION: Check = Check {
    name: "exception_injection",
    summary: "a #GP written to HV_REGISTER_PENDING_EVENT0 is delivered before the next instruction and then consumed",
    run: exception_injection,
};

/// Writes `event` to `HV_REGISTER_PENDING_EVENT0` and requires it taken before the
/// first instruction: the handler's `out 0x0d` exits with the interrupted IP pushed,
/// and the register says nothing is pending any more.
fn delivered_at_resume(g: &mut Guest, event: RegisterValue, what: &str) -> Result<(), CheckError> {
    let pending = hv_register_name_HV_REGISTER_PENDING_EVENT0;
    g.vcpu.set_registers(&[pending], &[event])?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let m: hv_x64_io_port_intercept_message = g.msg.payload();
    expect_eq("the handler's port", m.port_number, 0x0d)?;
    // IVT delivery pushes FLAGS, CS, IP (SDM vol 3 20.1.4): IP is the interrupted one.
    expect_eq(
        &format!("the IP the {what} pushed"),
        g.ram_u16(STACK as usize - 6)?,
        CODE as u16,
    )?;
    expect_eq("event_pending after delivery", g.get(pending)? & 1, 0)
}

fn exception_injection(hv: &dyn HvBackend) -> Outcome {
    let mut g = guest_with_gp_handler(hv)?;
    delivered_at_resume(&mut g, GP_REAL_MODE.encode(), "#GP")?;
    Ok("#GP delivered through the IVT at the next resume".into())
}

pub const PENDING_EXT_INT: Check = Check {
    name: "pending_ext_int",
    summary: "an external interrupt written to HV_REGISTER_PENDING_EVENT0 (event type 5) is taken through the guest's vector table at the next resume",
    run: pending_ext_int,
};

fn pending_ext_int(hv: &dyn HvBackend) -> Outcome {
    // OpenHCL hands its guest an 8259's vector this way (processor/mshv/x64.rs,
    // handle_interrupt_deliverable_exit: an HvX64PendingExtIntEvent, type 5 in hvdef,
    // the vector at bits 8..15), when the guest takes interrupts. Vector 0x20's IVT
    // entry points at the handler at 0x3000: out 0x0d, al; hlt.
    let mut g = guest_with_gp_handler(hv)?;
    g.ram
        .write(0x20 * 4, &[HANDLER as u8, (HANDLER >> 8) as u8, 0, 0])?;
    // Interrupts on (IF), as the event needs: RFLAGS = 0x202.
    g.set(hv_register_name_HV_X64_REGISTER_RFLAGS, 0x202)?;
    delivered_at_resume(&mut g, hv_core::PendingEvent::ext_int(0x20), "interrupt")?;
    Ok("vector 0x20 taken through the IVT before the first instruction".into())
}
