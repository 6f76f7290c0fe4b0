//! The state-and-debug seam: a vCPU's whole state taken and put back (here and into a
//! second partition), and the debugger's breakpoints and single-step.

use crate::guest::{expect, expect_eq, Guest, CODE};
use crate::{Check, CheckError, Outcome};
use hv_core::message::*;
use hv_core::regs::REGISTERS;
use hv_core::state::{WatchKind, Watchpoint, DR6_BS, LAPIC_STATE_SIZE};
use hv_core::{DebugState, HvBackend, MemoryMapping, VcpuState, VmConfig};
use mshv_bindings::*;

/// mov ax, 1; out 0x80, ax; inc ax; out 0x80, ax; hlt
const COUNT_CODE: [u8; 9] = [0xb8, 0x01, 0x00, 0xe7, 0x80, 0x40, 0xe7, 0x80, 0xf4];
/// Where `inc ax` and the second OUT are.
const INC: u64 = CODE + 5;
const SECOND_OUT: u64 = CODE + 6;

fn out_ax(g: &mut Guest) -> Result<u64, CheckError> {
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let m: hv_x64_io_port_intercept_message = g.msg.payload();
    Ok(m.rax & 0xffff)
}

pub const VCPU_STATE: Check = Check {
    name: "vcpu_state",
    summary: "a vCPU's whole state, taken between exits, puts the guest back where it was, in the same partition and in a new one; a state that does not fit changes nothing",
    run: vcpu_state,
};

fn vcpu_state(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &COUNT_CODE)?;
    expect_eq("AX at the first OUT", out_ax(&mut g)?, 1)?;
    g.complete()?;
    let saved = g.vcpu.state()?;
    for r in REGISTERS {
        expect(saved.register(r.id).is_some(), || {
            format!("the state lacks register {}", r.name)
        })?;
    }
    expect_eq(
        "local APIC state bytes",
        saved.lapic.len(),
        LAPIC_STATE_SIZE,
    )?;
    expect_eq("AX at the second OUT", out_ax(&mut g)?, 2)?;
    g.complete()?;
    g.run_to_halt()?;

    // Back to the state: the guest runs the second OUT again, with AX 2.
    g.vcpu.set_state(&saved)?;
    expect_eq("AX at the OUT after set_state", out_ax(&mut g)?, 2)?;
    expect_eq("RIP of that OUT", g.header().rip, SECOND_OUT)?;

    // Into a vCPU of a new partition over the same memory.
    let mut vm = hv.create_vm(&VmConfig::default())?;
    vm.map_memory(MemoryMapping {
        gpa: 0,
        region: g.ram.clone(),
        writable: true,
        executable: true,
    })?;
    let mut other = Guest {
        vcpu: vm.create_vcpu(0)?,
        vm,
        ram: g.ram.clone(),
        msg: Default::default(),
    };
    other.vcpu.set_state(&saved)?;
    expect_eq("AX at the OUT in the new partition", out_ax(&mut other)?, 2)?;
    let copy = other.vcpu.state()?;
    expect_eq(
        "RIP in the new partition's state",
        copy.register(hv_register_name_HV_X64_REGISTER_RIP)
            .map_or(0, |v| v[0]),
        SECOND_OUT,
    )?;

    // A state with a register no hypervisor has is refused whole.
    let mut bad: VcpuState = saved.clone();
    bad.registers[0].1 = [0x5555, 0];
    bad.registers.push((0xdead_beef, [0, 0]));
    expect(other.vcpu.set_state(&bad).is_err(), || {
        "a state with register 0xdeadbeef was accepted".into()
    })?;
    let after = other.vcpu.state()?;
    expect_eq(
        "RAX after the refused state",
        after
            .register(hv_register_name_HV_X64_REGISTER_RAX)
            .map_or(0, |v| v[0]),
        copy.register(hv_register_name_HV_X64_REGISTER_RAX)
            .map_or(1, |v| v[0]),
    )?;
    Ok(format!(
        "{} registers, {} MSRs, {} APIC bytes; the guest repeats its second OUT in both partitions",
        saved.registers.len(),
        saved.msrs.len(),
        saved.lapic.len()
    ))
}

pub const DEBUG_STOPS: Check = Check {
    name: "debug_stops",
    summary: "a breakpoint stops the vCPU before its instruction with an intercepted #DB (DR6.B0), a run resumed there passes it, a single step stops after one instruction (DR6.BS), and a write watchpoint after the write (DR6.B0)",
    run: debug_stops,
};

fn debug_exception(g: &mut Guest) -> Result<hv_x64_exception_intercept_message, CheckError> {
    g.run_to(HVMSG_X64_EXCEPTION_INTERCEPT)?;
    let m: hv_x64_exception_intercept_message = g.msg.payload();
    expect_eq("exception vector", m.exception_vector as u64, 1)?;
    Ok(m)
}

fn debug_stops(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &COUNT_CODE)?;
    g.vcpu.set_debug_state(&DebugState {
        breakpoints: vec![INC],
        ..DebugState::default()
    })?;
    expect_eq("AX at the first OUT", out_ax(&mut g)?, 1)?;
    g.complete()?;
    let m = debug_exception(&mut g)?;
    let rip = m.header.rip;
    expect_eq("RIP at the breakpoint", rip, INC)?;
    expect_eq("DR6 at the breakpoint", { m.exception_parameter } & 0xf, 1)?;
    expect_eq("RAX at the breakpoint (INC not run)", { m.rax } & 0xffff, 1)?;
    // Resumed on the breakpoint, the run passes it.
    expect_eq("AX at the second OUT", out_ax(&mut g)?, 2)?;

    // One step from the start: MOV AX, 1 runs and nothing else.
    g.set(hv_register_name_HV_X64_REGISTER_RIP, CODE)?;
    g.vcpu.set_debug_state(&DebugState {
        single_step: true,
        ..DebugState::default()
    })?;
    let m = debug_exception(&mut g)?;
    let rip = m.header.rip;
    expect_eq("RIP after one step", rip, CODE + 3)?;
    expect_eq(
        "DR6.BS after one step",
        { m.exception_parameter } & DR6_BS,
        DR6_BS,
    )?;
    expect_eq("AX after one step", { m.rax } & 0xffff, 1)?;
    g.vcpu.set_debug_state(&DebugState::default())?;
    expect_eq("AX at the OUT after stepping ends", out_ax(&mut g)?, 1)?;

    // A write watchpoint: mov [0x2000], ax; hlt — the stop comes after the MOV.
    let mut w = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &[0xa3, 0x00, 0x20, 0xf4])?;
    w.vcpu.set_debug_state(&DebugState {
        watchpoints: vec![Watchpoint {
            address: 0x2000,
            len: 2,
            kind: WatchKind::Write,
        }],
        ..DebugState::default()
    })?;
    let m = debug_exception(&mut w)?;
    let rip = m.header.rip;
    expect_eq("RIP after the watched write", rip, CODE + 3)?;
    expect_eq("DR6 at the watchpoint", { m.exception_parameter } & 0xf, 1)?;
    w.vcpu.set_debug_state(&DebugState::default())?;
    w.run_to_halt()?;
    Ok(
        "stopped at the breakpoint, after one step and after a watched write; passed on resume"
            .into(),
    )
}

pub const DIRTY_LOG: Check = Check {
    name: "dirty_log",
    summary: "the dirty log names the pages guest writes reached since it started or was last taken, and no others; taking it makes them clean",
    run: dirty_log,
};

/// The set bits of a dirty bitmap, as page numbers.
fn pages(bits: &[u64]) -> Vec<u64> {
    bits.iter()
        .enumerate()
        .flat_map(|(w, &b)| {
            (0..64)
                .filter(move |i| b >> i & 1 != 0)
                .map(move |i| w as u64 * 64 + i)
        })
        .collect()
}

fn dirty_log(hv: &dyn HvBackend) -> Outcome {
    // mov [0x3000], ax; mov [0x5008], ax; out 0x80, ax; mov [0x3010], ax; hlt
    let code = [
        0xa3, 0x00, 0x30, 0xa3, 0x08, 0x50, 0xe7, 0x80, 0xa3, 0x10, 0x30, 0xf4,
    ];
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &code)?;
    g.vm.start_dirty_log()?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    g.complete()?;
    let first = pages(&g.vm.take_dirty_log(0)?);
    expect(first.contains(&3) && first.contains(&5), || {
        format!("the pages written were 3 and 5; the log says {first:?}")
    })?;
    expect(!first.contains(&1) && !first.contains(&8), || {
        format!("the code page (1) and page 8 were not written; the log says {first:?}")
    })?;
    expect(pages(&g.vm.take_dirty_log(0)?).is_empty(), || {
        "the log taken again at once is not empty".into()
    })?;
    g.run_to_halt()?;
    let second = pages(&g.vm.take_dirty_log(0)?);
    expect(second.contains(&3) && !second.contains(&5), || {
        format!("after one more write to page 3 the log says {second:?}")
    })?;
    g.vm.stop_dirty_log()?;
    Ok(format!("pages {first:?}, then {second:?}"))
}
