//! Partitions, guest memory, and accesses to guest physical addresses with no RAM.

use crate::guest::{expect, expect_eq, Guest, CODE};
use crate::{Check, CheckError, Outcome};
use hv_core::message::*;
use hv_core::page::VERSION;
use hv_core::{HostRegion, HvBackend, MemoryMapping, VmConfig};
use mshv_bindings::*;
use std::sync::Arc;

pub const PARTITION: Check = Check {
    name: "partition",
    summary: "a partition with two vCPUs is created; vCPU 0 runs to a HLT; the register page state is reported",
    run: partition,
};

fn partition(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &[0xfa, 0xf4])?; // cli; hlt
    let second = g.vm.create_vcpu(1)?;
    expect_eq("the second vCPU's index", second.index(), 1)?;
    g.run_to_halt()?;
    let page = match g.vcpu.register_page() {
        None => "no register page (every register goes by hypercall)".to_string(),
        Some(p) => format!(
            "register page mapped, version {}, {} at the intercept",
            p.read_u16(VERSION),
            if p.is_valid() { "valid" } else { "not valid" }
        ),
    };
    Ok(format!("{} backend; {page}", hv.kind().name()))
}

pub const MAP_UNMAP: Check = Check {
    name: "memory_map_unmap",
    summary: "RAM mapped at a GPA is what the guest reads; unmapped it exits as HVMSG_UNMAPPED_GPA; mapped again it is read anew",
    run: map_unmap,
};

/// mov ax, 0x1000; mov ds, ax; mov ax, [0]; out 0x80, ax; hlt: reads GPA 0x10000.
const READ_0X10000: [u8; 11] = [
    0xb8, 0x00, 0x10, 0x8e, 0xd8, 0xa1, 0x00, 0x00, 0xe7, 0x80, 0xf4,
];
const LOAD_RIP: u64 = CODE + 5;

fn map_at_0x10000(g: &mut Guest, value: u16) -> Result<(), CheckError> {
    let region = Arc::new(HostRegion::new(0x1000)?);
    region.write(0, &value.to_le_bytes())?;
    g.vm.map_memory(MemoryMapping {
        gpa: 0x10000,
        region,
        writable: true,
        executable: false,
    })?;
    Ok(())
}

fn read_port_value(g: &mut Guest) -> Result<u64, CheckError> {
    g.run_to(HVMSG_X64_IO_PORT_INTERCEPT)?;
    let io: hv_x64_io_port_intercept_message = g.msg.payload();
    Ok(io.rax & 0xffff)
}

fn map_unmap(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &READ_0X10000)?;
    map_at_0x10000(&mut g, 0x1234)?;
    expect_eq(
        "the word read from the mapped region",
        read_port_value(&mut g)?,
        0x1234,
    )?;

    let unmapped = g.vm.unmap_memory(0x10000)?;
    expect_eq("the unmapped region's GPA", unmapped.gpa, 0x10000)?;
    g.set(hv_register_name_HV_X64_REGISTER_RIP, LOAD_RIP)?;
    g.run_to(HVMSG_UNMAPPED_GPA)?;
    let m: hv_x64_memory_intercept_message = g.msg.payload();
    expect_eq(
        "the unmapped access's GPA",
        m.guest_physical_address,
        0x10000,
    )?;
    expect_eq(
        "its access type",
        m.header.intercept_access_type as u32,
        HV_INTERCEPT_ACCESS_READ,
    )?;

    // The load was not completed: mapped again, it runs again and reads the new RAM.
    map_at_0x10000(&mut g, 0x5678)?;
    expect_eq(
        "the word read after remapping",
        read_port_value(&mut g)?,
        0x5678,
    )?;
    Ok("map, unmap (HVMSG_UNMAPPED_GPA at 0x10000) and remap all seen by the guest".into())
}

pub const MMIO: Check = Check {
    name: "mmio",
    summary: "a load and a store to a GPA with no RAM exit with the GPA, the access type and the instruction bytes; the VMM completes them",
    run: mmio,
};

/// mov ax, 0x2000; mov ds, ax; mov ax, [0x10]; mov [0x20], ax; hlt
const MMIO_CODE: [u8; 12] = [
    0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xa1, 0x10, 0x00, 0xa3, 0x20, 0x00, 0xf4,
];

fn memory_message(
    g: &mut Guest,
    gpa: u64,
    access: u32,
    bytes: &[u8],
) -> Result<hv_x64_memory_intercept_message, CheckError> {
    g.run_to(HVMSG_UNMAPPED_GPA)?;
    let m: hv_x64_memory_intercept_message = g.msg.payload();
    expect_eq("the access's GPA", m.guest_physical_address, gpa)?;
    expect_eq(
        "the access type",
        m.header.intercept_access_type as u32,
        access,
    )?;
    let count = (m.instruction_byte_count as usize).min(16);
    let carried = &m.instruction_bytes[..count];
    expect(carried.starts_with(bytes), || {
        format!("the message's instruction bytes are {carried:02x?}, expected them to start with {bytes:02x?}")
    })?;
    // SAFETY: reading a bitfield of a plain u8 union view.
    let gva_valid = unsafe { m.memory_access_info.__bindgen_anon_1.gva_valid() } != 0;
    if gva_valid {
        expect_eq("the access's GVA", m.guest_virtual_address, gpa)?;
    }
    Ok(m)
}

fn mmio(hv: &dyn HvBackend) -> Outcome {
    let mut g = Guest::real_mode(hv, &VmConfig::default(), 0x10000, &MMIO_CODE)?;
    let load = memory_message(
        &mut g,
        0x20010,
        HV_INTERCEPT_ACCESS_READ,
        &[0xa1, 0x10, 0x00],
    )?;
    expect_eq("the load's RIP", load.header.rip, CODE + 5)?;
    // The VMM's emulation of the load: AX from the device, RIP past the 3 bytes.
    g.set(hv_register_name_HV_X64_REGISTER_RAX, 0xbeef)?;
    g.set(hv_register_name_HV_X64_REGISTER_RIP, CODE + 8)?;
    let store = memory_message(
        &mut g,
        0x20020,
        HV_INTERCEPT_ACCESS_WRITE,
        &[0xa3, 0x20, 0x00],
    )?;
    expect_eq(
        "AX at the store (written by the VMM at the load)",
        g.get(hv_register_name_HV_X64_REGISTER_RAX)? & 0xffff,
        0xbeef,
    )?;
    g.set(hv_register_name_HV_X64_REGISTER_RIP, CODE + 11)?;
    g.run_to_halt()?;
    Ok(format!(
        "load and store exits carry the GPA and {} / {} instruction bytes",
        load.instruction_byte_count, store.instruction_byte_count
    ))
}
