//! Tests against the real hypervisor. They need `/dev/mshv` (a Linux root partition
//! on Hyper-V with the mshv driver) and skip with a message where it is absent.
#![cfg(target_arch = "x86_64")]

use hv_core::regs::pack_segment;
use hv_core::{
    message::*, Exit, ExitMessage, HostRegion, HvBackend, MemoryMapping, RegisterPageMode,
    RunLimits, VmConfig,
};
use hv_mshv::MshvHypervisor;
use mshv_bindings::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn hypervisor() -> Option<MshvHypervisor> {
    if !MshvHypervisor::available() {
        eprintln!(
            "skipped: {} is absent on this machine",
            hv_mshv::DEVICE_PATH
        );
        return None;
    }
    Some(MshvHypervisor::open().expect("the device exists, so it opens"))
}

struct Guest {
    _vm: Box<dyn hv_core::VmBackend>,
    vcpu: Box<dyn hv_core::VcpuBackend>,
    ram: Arc<HostRegion>,
    msg: ExitMessage,
}

fn real_mode_guest(hv: &MshvHypervisor, page: RegisterPageMode, code: &[u8]) -> Guest {
    let config = VmConfig {
        register_page: page,
        ..VmConfig::default()
    };
    let mut vm = hv.create_vm(&config).unwrap();
    let ram = Arc::new(HostRegion::new(1 << 20).unwrap());
    ram.write(0x1000, code).unwrap();
    vm.map_memory(MemoryMapping {
        gpa: 0,
        region: Arc::clone(&ram),
        writable: true,
        executable: true,
    })
    .unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let ids = [
        hv_register_name_HV_X64_REGISTER_CS,
        hv_register_name_HV_X64_REGISTER_DS,
        hv_register_name_HV_X64_REGISTER_SS,
        hv_register_name_HV_X64_REGISTER_RIP,
        hv_register_name_HV_X64_REGISTER_RFLAGS,
    ];
    let values = [
        pack_segment(0, 0xffff, 0, 0x9b),
        pack_segment(0, 0xffff, 0, 0x93),
        pack_segment(0, 0xffff, 0, 0x93),
        [0x1000, 0],
        [2, 0],
    ];
    vcpu.set_registers(&ids, &values).unwrap();
    Guest {
        _vm: vm,
        vcpu,
        ram,
        msg: ExitMessage::default(),
    }
}

fn run(g: &mut Guest) -> Exit {
    g.vcpu
        .run(
            &mut g.msg,
            &RunLimits {
                max_instructions: None,
                deadline: Instant::now().checked_add(Duration::from_secs(10)),
            },
        )
        .unwrap()
}

#[test]
fn a_real_mode_out_exits_with_the_io_message_and_fills_the_register_page() {
    let Some(hv) = hypervisor() else { return };
    // mov al, 0x41; out 0x80, al; hlt
    let mut g = real_mode_guest(&hv, RegisterPageMode::On, &[0xb0, 0x41, 0xe6, 0x80, 0xf4]);
    assert_eq!(run(&mut g), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_X64_IO_PORT_INTERCEPT);
    let io: hv_x64_io_port_intercept_message = g.msg.payload();
    assert_eq!({ io.port_number }, 0x80);
    assert_eq!({ io.rax } & 0xff, 0x41);
    assert_eq!({ io.header.rip }, 0x1002);
    match g.vcpu.register_page() {
        Some(p) if p.is_valid() => {
            assert_eq!(p.read_u64(hv_core::page::RIP), 0x1002);
            assert_eq!(p.read_u64(hv_core::page::GP_REGISTERS) & 0xff, 0x41);
        }
        _ => eprintln!("note: no valid register page on this host; the hypercall path ran"),
    }
    let c = g.vcpu.counters();
    assert_eq!(
        (c.get_registers, c.set_registers),
        (0, 1),
        "only the setup write"
    );
}

#[test]
fn page_dirty_bits_and_set_register_hypercalls_both_reach_the_vp() {
    let Some(hv) = hypervisor() else { return };
    // out 0x80, al; out 0x80, al; hlt
    let mut g = real_mode_guest(&hv, RegisterPageMode::On, &[0xe6, 0x80, 0xe6, 0x80, 0xf4]);
    assert_eq!(run(&mut g), Exit::Message);
    let Some(p) = g.vcpu.register_page().filter(|p| p.is_valid()) else {
        eprintln!("skipped: no valid register page on this host");
        return;
    };
    use hv_core::page::*;
    p.write_u64(GP_REGISTERS, 0x77);
    p.write_u64(RIP, 0x1002);
    p.write_u32(DIRTY, DIRTY_GENERAL | DIRTY_IP);
    g.vcpu
        .set_registers(&[hv_register_name_HV_X64_REGISTER_RBX], &[[0x55, 0]])
        .unwrap();
    assert_eq!(run(&mut g), Exit::Message);
    let io: hv_x64_io_port_intercept_message = g.msg.payload();
    assert_eq!({ io.header.rip }, 0x1002);
    assert_eq!({ io.rax }, 0x77);
    let mut out = [[0u64; 2]];
    g.vcpu
        .get_registers(&[hv_register_name_HV_X64_REGISTER_RBX], &mut out)
        .unwrap();
    assert_eq!(out[0][0], 0x55);
}

#[test]
fn without_the_page_registers_go_through_hypercalls_and_translate_works() {
    let Some(hv) = hypervisor() else { return };
    let mut g = real_mode_guest(&hv, RegisterPageMode::Off, &[0xe6, 0x80, 0xf4]);
    assert!(g.vcpu.register_page().is_none());
    assert_eq!(run(&mut g), Exit::Message);
    let mut out = [[0u64; 2]];
    g.vcpu
        .get_registers(&[hv_register_name_HV_X64_REGISTER_RIP], &mut out)
        .unwrap();
    assert_eq!(
        out[0][0], 0x1000,
        "RIP stays at the OUT until the VMM advances it"
    );
    let (gpa, result) = g
        .vcpu
        .translate_gva(0x1000, HV_TRANSLATE_GVA_VALIDATE_READ as u64)
        .unwrap();
    assert_eq!(
        (gpa, result),
        (
            0x1000,
            hv_translate_gva_result_code_HV_TRANSLATE_GVA_SUCCESS
        )
    );
    assert_eq!(g.vcpu.counters().translate_gva, 1);
    let _ = &g.ram;
}

#[test]
fn a_cancel_from_another_thread_interrupts_a_spinning_guest() {
    let Some(hv) = hypervisor() else { return };
    let mut g = real_mode_guest(&hv, RegisterPageMode::On, &[0xeb, 0xfe]); // jmp $
    let c = g.vcpu.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        c.cancel();
    });
    assert_eq!(run(&mut g), Exit::Cancelled);
    t.join().unwrap();
}

#[test]
fn bad_register_ids_are_typed_errors_and_the_vcpu_stays_usable() {
    let Some(hv) = hypervisor() else { return };
    let mut g = real_mode_guest(&hv, RegisterPageMode::On, &[0xf4]);
    let mut out = [[0u64; 2]];
    let e = g.vcpu.get_registers(&[0xdead_beef], &mut out).unwrap_err();
    assert!(e.to_string().contains("0xdeadbeef"), "{e}");
    assert_eq!(run(&mut g), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_X64_HALT);
}
