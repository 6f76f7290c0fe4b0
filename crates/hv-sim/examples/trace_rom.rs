//! Runs a BIOS-style ROM (test386) one instruction at a time and prints the last
//! instructions before it halts: a debugging aid for CPU tests.
//! Usage: trace_rom ROM [COUNT]

use hv_core::message::*;
use hv_core::{Exit, ExitMessage, HostRegion, HvBackend, MemoryMapping, RunLimits, VmConfig};
use hv_sim::SimHypervisor;
use mshv_bindings::*;
use std::collections::VecDeque;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: trace_rom ROM [COUNT]")?;
    let keep: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(40);
    let rom = std::fs::read(path)?;
    let mut vm = SimHypervisor.create_vm(&VmConfig::default())?;
    let size = rom.len() as u64;
    let low = 0x10_0000 - size;
    vm.map_memory(MemoryMapping {
        gpa: 0,
        region: Arc::new(HostRegion::new(low as usize)?),
        writable: true,
        executable: true,
    })?;
    for at in [low, 0x1_0000_0000 - size] {
        let region = Arc::new(HostRegion::new(rom.len())?);
        region.write(0, &rom)?;
        vm.map_memory(MemoryMapping {
            gpa: at,
            region,
            writable: false,
            executable: true,
        })?;
    }
    let mut vcpu = vm.create_vcpu(0)?;
    let mut msg = ExitMessage::default();
    let mut last: VecDeque<String> = VecDeque::new();
    let ids = [
        hv_register_name_HV_X64_REGISTER_CS,
        hv_register_name_HV_X64_REGISTER_RIP,
        hv_register_name_HV_X64_REGISTER_RAX,
        hv_register_name_HV_X64_REGISTER_RBX,
        hv_register_name_HV_X64_REGISTER_RCX,
        hv_register_name_HV_X64_REGISTER_RDX,
        hv_register_name_HV_X64_REGISTER_RSP,
        hv_register_name_HV_X64_REGISTER_RFLAGS,
    ];
    let mut v = [[0u64; 2]; 8];
    for step in 0u64.. {
        vcpu.get_registers(&ids, &mut v)?;
        let line = format!(
            "{step}: {:04x}(base {:x}):{:08x} eax={:08x} ebx={:08x} ecx={:08x} edx={:08x} esp={:08x} fl={:08x}",
            (v[0][1] >> 32) & 0xffff, v[0][0], v[1][0], v[2][0], v[3][0], v[4][0], v[5][0], v[6][0], v[7][0]
        );
        last.push_back(line);
        if last.len() > keep {
            last.pop_front();
        }
        match vcpu.run(
            &mut msg,
            &RunLimits {
                max_instructions: Some(1),
                deadline: None,
                ..RunLimits::default()
            },
        )? {
            Exit::InstructionLimit => continue,
            Exit::Message if msg.message_type() == HVMSG_X64_IO_PORT_INTERCEPT => {
                let io: hv_x64_io_port_intercept_message = msg.payload();
                if io.port_number == 0x190 {
                    last.push_back(format!("POST {:02x}", io.rax as u8));
                }
                let next = io.header.rip + io.header.instruction_length() as u64;
                vcpu.set_registers(&[hv_register_name_HV_X64_REGISTER_RIP], &[[next, 0]])?;
            }
            other => {
                for l in &last {
                    println!("{l}");
                }
                println!("ended: {other:?} type {:#x}", msg.message_type());
                if msg.message_type() == HVMSG_GPA_INTERCEPT
                    || msg.message_type() == HVMSG_UNMAPPED_GPA
                {
                    let m: hv_x64_memory_intercept_message = msg.payload();
                    println!(
                        "gpa {:#x} gva {:#x} access {}",
                        { m.guest_physical_address },
                        { m.guest_virtual_address },
                        m.header.intercept_access_type
                    );
                }
                return Ok(());
            }
        }
    }
    Ok(())
}
