//! Registers through the shared register page and through hypercalls.

use crate::guest::{expect, expect_eq, Guest, CODE};
use crate::{Check, CheckError, Outcome};
use hv_core::message::*;
use hv_core::page::*;
use hv_core::{HvBackend, RegisterPageMode, VmConfig};
use mshv_bindings::*;

/// mov eax, 0x41; out 0x80, al; out 0x80, al; hlt
const TWO_OUTS: [u8; 11] = [
    0x66, 0xb8, 0x41, 0x00, 0x00, 0x00, 0xe6, 0x80, 0xe6, 0x80, 0xf4,
];

pub const REGISTER_PAGE: Check = Check {
    name: "register_page",
    summary: "the register page is valid at an intercept and agrees with the hypercalls; writes with dirty bits and by hypercall both reach the vCPU",
    run: register_page,
};

fn register_page(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &TWO_OUTS)?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let Some(p) = g.vcpu.register_page() else {
        return Ok(
            "no register page on this host: nothing to check (the partition check reports it)"
                .into(),
        );
    };
    // rust-vmm's mshv-ioctls test asserts version 1 (HV_VP_REGISTER_PAGE_VERSION_1).
    expect_eq(
        "the page version",
        p.read_u16(VERSION) as u32,
        HV_VP_REGISTER_PAGE_VERSION_1,
    )?;
    expect(p.is_valid(), || {
        "the page is not marked valid at the intercept".into()
    })?;
    // The page and the hypercalls describe the same intercepted state.
    let rip = g.get(hv_register_name_HV_X64_REGISTER_RIP)?;
    let rax = g.get(hv_register_name_HV_X64_REGISTER_RAX)?;
    let rflags = g.get(hv_register_name_HV_X64_REGISTER_RFLAGS)?;
    expect_eq("RIP on the page vs by hypercall", p.read_u64(RIP), rip)?;
    expect_eq(
        "RAX on the page vs by hypercall",
        p.read_u64(GP_REGISTERS),
        rax,
    )?;
    expect_eq(
        "RFLAGS on the page vs by hypercall",
        p.read_u64(RFLAGS),
        rflags,
    )?;
    expect_eq("RIP at the OUT", rip, CODE + 6)?;
    expect_eq("RAX at the OUT", rax & 0xffff_ffff, 0x41)?;

    // Cloud Hypervisor's set_regs through the page: values, then the dirty classes
    // (hypervisor/src/mshv/mod.rs). Here only the IP class is dirty, so a hypercall
    // write to a general register applies too.
    p.write_u64(RIP, CODE + 8);
    p.write_u32(DIRTY, DIRTY_IP);
    g.set(hv_register_name_HV_X64_REGISTER_RBX, 0x55)?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let m: hv_x64_io_port_intercept_message = g.msg.payload();
    expect_eq("RIP written through the page", m.header.rip, CODE + 8)?;
    expect(p.is_valid(), || {
        "the page is not valid at the second intercept".into()
    })?;
    expect_eq(
        "RBX written by hypercall, on the refreshed page",
        p.read_u64(GP_REGISTERS + 3 * 8),
        0x55,
    )?;

    // A dirty general class reloads every general register from the page, which the
    // intercept refreshed: RAX takes the new value and RBX keeps the hypercall's.
    p.write_u64(GP_REGISTERS, 0x77);
    p.write_u64(RIP, CODE + 6);
    p.write_u32(DIRTY, DIRTY_GENERAL | DIRTY_IP);
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let m: hv_x64_io_port_intercept_message = g.msg.payload();
    expect_eq("RIP written through the page", m.header.rip, CODE + 6)?;
    expect_eq("RAX written through the page", m.rax, 0x77)?;
    expect_eq(
        "RBX after the general class was reloaded",
        g.get(hv_register_name_HV_X64_REGISTER_RBX)?,
        0x55,
    )?;
    Ok("version 1, valid, consistent with the hypercalls; page writes under dirty bits and hypercall writes both applied".into())
}

pub const NO_REGISTER_PAGE: Check = Check {
    name: "no_register_page",
    summary: "without the page, registers and GVA translation work by hypercall, and RIP stays on the intercepted instruction",
    run: no_register_page,
};

fn no_register_page(hv: &dyn HvBackend) -> Outcome {
    let config = VmConfig {
        register_page: RegisterPageMode::Off,
        ..VmConfig::default()
    };
    let mut g = Guest::real_mode(hv, &config, 0x10000, &TWO_OUTS)?;
    expect(g.vcpu.register_page().is_none(), || {
        "a page is mapped though registerPage is off".into()
    })?;
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    expect_eq(
        "RIP (the VMM has not advanced it)",
        g.get(hv_register_name_HV_X64_REGISTER_RIP)?,
        CODE + 6,
    )?;
    let (gpa, result) = g
        .vcpu
        .translate_gva(CODE, HV_TRANSLATE_GVA_VALIDATE_READ as u64)?;
    expect_eq(
        "the translate result",
        result,
        hv_translate_gva_result_code_HV_TRANSLATE_GVA_SUCCESS,
    )?;
    expect_eq("the GPA of GVA 0x1000 without paging", gpa, CODE)?;
    Ok("register and translate hypercalls answer without the page".into())
}

pub const BAD_REGISTER_IDS: Check = Check {
    name: "bad_register_ids",
    summary: "an unknown register id is a typed error naming it, and the vCPU stays usable",
    run: bad_register_ids,
};

fn bad_register_ids(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &[0xfa, 0xf4])?;
    let mut out = [[0u64; 2]];
    let e = match g.vcpu.get_registers(&[0xdead_beef], &mut out) {
        Err(e) => e,
        Ok(()) => {
            return Err(CheckError::Mismatch(
                "register id 0xdeadbeef was accepted".into(),
            ))
        }
    };
    expect(e.to_string().contains("0xdeadbeef"), || {
        format!("the error does not name the id: {e}")
    })?;
    g.run_to_halt()?;
    Ok(format!("refused with {} ({e}); the vCPU ran on", e.code()))
}
