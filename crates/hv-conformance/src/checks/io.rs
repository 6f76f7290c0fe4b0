//! Port I/O intercepts: OUT and IN of each size, and a REP OUTSB.

use crate::guest::{expect, expect_eq, Guest, CODE};
use crate::{Check, CheckError, Outcome};
use hv_core::message::*;
use hv_core::{HvBackend, VmConfig};
use mshv_bindings::*;

/// An I/O message's access info: (size in bytes, string op, REP prefix).
fn access(m: &hv_x64_io_port_intercept_message) -> (u8, bool, bool) {
    // SAFETY: reading bitfields of a plain u8 union view.
    unsafe {
        let a = &m.access_info.__bindgen_anon_1;
        (a.access_size(), a.string_op() != 0, a.rep_prefix() != 0)
    }
}

fn io_message(g: &mut Guest) -> Result<hv_x64_io_port_intercept_message, CheckError> {
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    Ok(g.msg.payload())
}

pub const PIO_OUT: Check = Check {
    name: "pio_out",
    summary: "OUT of 1, 2 and 4 bytes exits with the port, size, direction, RAX, RIP and instruction length",
    run: pio_out,
};

/// mov dx, 0x1234; mov eax, 0xdeadbeef; out dx, al; out dx, ax; out dx, eax; hlt
const OUT_CODE: [u8; 14] = [
    0xba, 0x34, 0x12, 0x66, 0xb8, 0xef, 0xbe, 0xad, 0xde, 0xee, 0xef, 0x66, 0xef, 0xf4,
];

fn pio_out(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &OUT_CODE)?;
    for (size, rip, len) in [(1u8, CODE + 9, 1u8), (2, CODE + 10, 1), (4, CODE + 11, 2)] {
        let m = io_message(&mut g)?;
        expect_eq("the port", m.port_number, 0x1234)?;
        expect_eq("the access size", access(&m).0, size)?;
        expect_eq(
            "the access type",
            m.header.intercept_access_type as u32,
            HV_INTERCEPT_ACCESS_WRITE,
        )?;
        expect_eq("RAX in the message", m.rax, 0xdead_beef)?;
        expect_eq("the RIP", m.header.rip, rip)?;
        expect_eq("the instruction length", m.header.instruction_length(), len)?;
        g.complete()?;
    }
    g.run_to_halt()?;
    Ok("OUT of 1, 2 and 4 bytes to port 0x1234, each completed by the VMM".into())
}

pub const PIO_IN: Check = Check {
    name: "pio_in",
    summary: "IN of 1, 2 and 4 bytes exits as a read; the VMM's RAX is what the guest sees",
    run: pio_in,
};

/// mov eax, 0x11223344; in al, 0x71; out 0x80, eax; in ax, 0x72; out 0x80, eax;
/// in eax, 0x73; out 0x80, eax; hlt
const IN_CODE: [u8; 23] = [
    0x66, 0xb8, 0x44, 0x33, 0x22, 0x11, 0xe4, 0x71, 0x66, 0xe7, 0x80, 0xe5, 0x72, 0x66, 0xe7, 0x80,
    0x66, 0xe5, 0x73, 0x66, 0xe7, 0x80, 0xf4,
];

fn pio_in(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &IN_CODE)?;
    // What the VMM answers for each IN (merged as x86 merges it: AL and AX keep the
    // rest of RAX, EAX zero-extends, SDM vol 1 3.4.1.1) and what the guest then sees.
    let steps = [
        (0x71u16, 1u8, 0xaau64, 0x1122_33aau64),
        (0x72, 2, 0xbbcc, 0x1122_bbcc),
        (0x73, 4, 0xddee_ff00, 0xddee_ff00),
    ];
    for (port, size, answer, seen) in steps {
        let m = io_message(&mut g)?;
        expect_eq("the port", m.port_number, port)?;
        expect_eq("the access size", access(&m).0, size)?;
        expect_eq(
            "the access type",
            m.header.intercept_access_type as u32,
            HV_INTERCEPT_ACCESS_READ,
        )?;
        let keep = match size {
            1 => m.rax & !0xff,
            2 => m.rax & !0xffff,
            _ => 0,
        };
        g.set(hv_register_name_HV_X64_REGISTER_RAX, keep | answer)?;
        g.complete()?;
        let out = io_message(&mut g)?;
        expect_eq("EAX as the guest sees it after the IN", out.rax, seen)?;
        g.complete()?;
    }
    g.run_to_halt()?;
    Ok("IN of 1, 2 and 4 bytes answered by the VMM and seen by the guest".into())
}

pub const STRING_IO: Check = Check {
    name: "string_io",
    summary:
        "REP OUTSB exits once with the string and REP bits, RCX, RSI, DS and the instruction bytes",
    run: string_io,
};

/// mov si, 0x600; mov cx, 3; mov dx, 0x80; cld; rep outsb; hlt
const STRING_CODE: [u8; 13] = [
    0xbe, 0x00, 0x06, 0xb9, 0x03, 0x00, 0xba, 0x80, 0x00, 0xfc, 0xf3, 0x6e, 0xf4,
];

fn string_io(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &STRING_CODE)?;
    let m = io_message(&mut g)?;
    let (size, string, rep) = access(&m);
    expect_eq("the port", m.port_number, 0x80)?;
    expect(size == 1 && string && rep, || {
        format!("access info: size {size}, string {string}, rep {rep}; expected 1, true, true")
    })?;
    expect_eq("RCX", m.rcx, 3)?;
    expect_eq("RSI", m.rsi, 0x600)?;
    expect_eq("DS's base", m.ds_segment.base, 0)?;
    expect_eq("the RIP", m.header.rip, CODE + 10)?;
    expect_eq("the instruction length", m.header.instruction_length(), 2)?;
    let count = (m.instruction_byte_count as usize).min(16);
    expect(
        m.instruction_bytes[..count].starts_with(&[0xf3, 0x6e]),
        || {
            format!(
                "instruction bytes {:02x?}, expected f3 6e first",
                &m.instruction_bytes[..count]
            )
        },
    )?;
    // The VMM moves all three bytes: RCX to 0, RSI past them, RIP past the instruction.
    g.set(hv_register_name_HV_X64_REGISTER_RCX, 0)?;
    g.set(hv_register_name_HV_X64_REGISTER_RSI, 0x603)?;
    g.complete()?;
    g.run_to_halt()?;
    Ok(format!(
        "REP OUTSB described in one exit ({} instruction bytes)",
        m.instruction_byte_count
    ))
}
