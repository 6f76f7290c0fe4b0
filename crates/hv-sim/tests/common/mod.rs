//! Helpers shared by the sim's integration tests: a VM with RAM and guest code
//! assembled with iced-x86's code assembler.
#![allow(dead_code)]

use hv_core::regs::{pack_segment, pack_table};
use hv_core::{
    ExitMessage, HostRegion, HvBackend, MemoryMapping, RegisterPageMode, RegisterValue, RunLimits,
    VcpuBackend, VmBackend, VmConfig,
};
use hv_sim::SimHypervisor;
use iced_x86::code_asm::CodeAssembler;
use mshv_bindings::*;
use std::sync::Arc;

pub const RAM: usize = 2 << 20;

pub struct Guest {
    pub vm: Box<dyn VmBackend>,
    pub vcpu: Box<dyn VcpuBackend>,
    pub ram: Arc<HostRegion>,
    pub msg: ExitMessage,
}

pub fn guest_with(config: VmConfig) -> Guest {
    let mut vm = SimHypervisor.create_vm(&config).unwrap();
    let ram = Arc::new(HostRegion::new(RAM).unwrap());
    vm.map_memory(MemoryMapping {
        gpa: 0,
        region: Arc::clone(&ram),
        writable: true,
        executable: true,
    })
    .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    Guest {
        vm,
        vcpu,
        ram,
        msg: ExitMessage::default(),
    }
}

pub fn guest() -> Guest {
    guest_with(VmConfig::default())
}

pub fn assemble(bits: u32, ip: u64, f: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a);
    a.assemble(ip).unwrap()
}

impl Guest {
    pub fn load(&self, gpa: u64, code: &[u8]) {
        self.ram.write(gpa as usize, code).unwrap();
    }

    pub fn set(&mut self, id: u32, v: u64) {
        self.vcpu.set_registers(&[id], &[[v, 0]]).unwrap();
    }

    pub fn set_raw(&mut self, id: u32, v: RegisterValue) {
        self.vcpu.set_registers(&[id], &[v]).unwrap();
    }

    pub fn get(&mut self, id: u32) -> u64 {
        let mut out = [[0u64; 2]];
        self.vcpu.get_registers(&[id], &mut out).unwrap();
        out[0][0]
    }

    /// Real mode, CS=DS=ES=SS=0, code at `ip`.
    pub fn real_mode(&mut self, ip: u64) {
        for id in [
            hv_register_name_HV_X64_REGISTER_CS,
            hv_register_name_HV_X64_REGISTER_DS,
            hv_register_name_HV_X64_REGISTER_ES,
            hv_register_name_HV_X64_REGISTER_SS,
        ] {
            let attr = if id == hv_register_name_HV_X64_REGISTER_CS {
                0x9b
            } else {
                0x93
            };
            self.set_raw(id, pack_segment(0, 0xffff, 0, attr));
        }
        self.set(hv_register_name_HV_X64_REGISTER_RIP, ip);
        self.set(hv_register_name_HV_X64_REGISTER_RSP, 0x7000);
    }

    /// Flat 64-bit long mode with identity paging of the first 1 GiB, code at `ip`.
    pub fn long_mode(&mut self, ip: u64) {
        // PML4 at 0x10_0000, PDPT at 0x10_1000 with one 1 GiB page.
        self.ram
            .write(0x10_0000, &(0x10_1000u64 | 3).to_le_bytes())
            .unwrap();
        self.ram.write(0x10_1000, &(0x83u64).to_le_bytes()).unwrap();
        let code = pack_segment(0, 0xffff_ffff, 8, 0xa09b);
        let data = pack_segment(0, 0xffff_ffff, 16, 0xc093);
        self.set_raw(hv_register_name_HV_X64_REGISTER_CS, code);
        for id in [
            hv_register_name_HV_X64_REGISTER_DS,
            hv_register_name_HV_X64_REGISTER_ES,
            hv_register_name_HV_X64_REGISTER_SS,
        ] {
            self.set_raw(id, data);
        }
        self.set_raw(hv_register_name_HV_X64_REGISTER_GDTR, pack_table(0, 0));
        self.set(hv_register_name_HV_X64_REGISTER_CR3, 0x10_0000);
        self.set(hv_register_name_HV_X64_REGISTER_CR4, 1 << 5);
        self.set(hv_register_name_HV_X64_REGISTER_EFER, (1 << 8) | (1 << 10));
        self.set(hv_register_name_HV_X64_REGISTER_CR0, 0x8000_0011);
        self.set(hv_register_name_HV_X64_REGISTER_RIP, ip);
        self.set(hv_register_name_HV_X64_REGISTER_RSP, 0x8_0000);
    }

    pub fn run(&mut self) -> hv_core::Exit {
        self.vcpu
            .run(
                &mut self.msg,
                &RunLimits {
                    max_instructions: Some(10_000_000),
                    timeout: None,
                },
            )
            .unwrap()
    }

    pub fn page(&self) -> hv_core::RegisterPagePtr {
        self.vcpu.register_page().unwrap()
    }
}

pub fn config(page: RegisterPageMode) -> VmConfig {
    VmConfig {
        register_page: page,
        ..VmConfig::default()
    }
}
