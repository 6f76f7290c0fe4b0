//! The `hv_message` bytes of each intercept type, read back through the binding's
//! own structs, and the vCPU state the VMM sees at each.

mod common;

use common::*;
use hv_core::message::*;
use hv_core::{Exit, VmConfig};
use iced_x86::code_asm::*;
use mshv_bindings::*;

const CODE: u64 = 0x2000;
const MMIO: u64 = 0x3000_0000; // inside the 1 GiB identity map, outside RAM

fn memory_message(g: &Guest) -> hv_x64_memory_intercept_message {
    g.msg.payload()
}

#[test]
fn an_mmio_read_of_unmapped_gpa_carries_gpa_gva_access_and_instruction_bytes() {
    let mut g = guest();
    let code = assemble(64, CODE, |a| {
        a.mov(rbx, MMIO + 0x10).unwrap();
        a.mov(eax, dword_ptr(rbx + 8)).unwrap();
        a.hlt().unwrap();
    });
    g.load(CODE, &code);
    g.long_mode(CODE);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_UNMAPPED_GPA);
    let m = memory_message(&g);
    let load = &code[10..13]; // mov eax, [rbx+8]
    assert_eq!({ m.guest_physical_address }, MMIO + 0x18);
    assert_eq!({ m.guest_virtual_address }, MMIO + 0x18);
    assert_eq!(
        { m.header.intercept_access_type },
        HV_INTERCEPT_ACCESS_READ as u8
    );
    assert_eq!(
        { m.header.rip },
        CODE + 10,
        "RIP stays at the faulting instruction"
    );
    assert_eq!(m.header.instruction_length(), 3);
    assert_eq!(m.instruction_byte_count, 16, "up to 16 bytes from RIP");
    assert_eq!(&m.instruction_bytes[..3], load);
    assert_eq!(m.instruction_bytes[3], 0xf4, "the bytes after it too");
    // SAFETY: reading bitfields of a plain u8 union view.
    let gva_valid = unsafe { m.memory_access_info.__bindgen_anon_1.gva_valid() };
    assert_eq!(gva_valid, 1);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RIP), CODE + 10);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RBX), MMIO + 0x10);
    // The register page has the GP registers of the faulting instruction.
    let p = g.page();
    assert!(p.is_valid());
    assert_eq!(
        p.read_u64(hv_core::page::GP_REGISTERS + 3 * 8),
        MMIO + 0x10,
        "rbx"
    );
}

#[test]
fn an_mmio_write_to_an_intercepted_ram_range_is_a_gpa_intercept_and_ram_is_untouched() {
    let mut g = guest();
    g.vm.intercept_range(0x5_0000, 0x1000).unwrap();
    let code = assemble(64, CODE, |a| {
        a.mov(rdi, 0x5_0ff8u64).unwrap();
        a.mov(qword_ptr(rdi), rcx).unwrap();
        a.hlt().unwrap();
    });
    g.load(CODE, &code);
    g.long_mode(CODE);
    g.set(hv_register_name_HV_X64_REGISTER_RCX, 0xfeed);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_GPA_INTERCEPT);
    let m = memory_message(&g);
    assert_eq!({ m.guest_physical_address }, 0x5_0ff8);
    assert_eq!(
        { m.header.intercept_access_type },
        HV_INTERCEPT_ACCESS_WRITE as u8
    );
    assert_eq!({ m.header.rip }, CODE + 10);
    let mut ram = [0u8; 8];
    g.ram.read(0x5_0ff8, &mut ram).unwrap();
    assert_eq!(ram, [0; 8], "the intercepted store did not reach RAM");
}

#[test]
fn fetching_code_from_unmapped_gpa_is_an_execute_access_without_instruction_bytes() {
    let mut g = guest();
    let code = assemble(64, CODE, |a| {
        a.mov(rax, MMIO).unwrap();
        a.jmp(rax).unwrap();
    });
    g.load(CODE, &code);
    g.long_mode(CODE);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_UNMAPPED_GPA);
    let m = memory_message(&g);
    assert_eq!(
        { m.header.intercept_access_type },
        HV_INTERCEPT_ACCESS_EXECUTE as u8
    );
    assert_eq!({ m.guest_physical_address }, MMIO);
    assert_eq!({ m.header.rip }, MMIO);
    assert_eq!(m.instruction_byte_count, 0);
}

/// HLT sends no intercept: MSHV has no HLT intercept for a partition with a local
/// APIC (the kernel's `hv_intercept_type`), and the VP waits halt-suspended in the
/// hypervisor (`cli; hlt` "will just hang the guest": qemu-devel, "[PATCH v2 25/27]
/// target/i386/mshv: Handle HVMSG_X64_HALT vm exit", 2025). A run that may not block
/// says so; RIP is past the HLT and the activity state shows halt suspend, until the
/// VMM clears it.
#[test]
fn halt_waits_without_an_intercept_rip_past_the_hlt_in_halt_suspend() {
    let mut g = guest();
    g.load(0x1000, &[0x90, 0xf4, 0xe6, 0x80]);
    g.real_mode(0x1000);
    assert_eq!(g.run(), Exit::Halted);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RIP), 0x1002);
    let activity = hv_register_name_HV_REGISTER_INTERNAL_ACTIVITY_STATE;
    assert_eq!(g.get(activity), 2, "halt suspend");
    assert_eq!(g.run(), Exit::Halted, "still halted at the next run");
    g.set(activity, 0);
    assert_eq!(
        g.run(),
        Exit::Message,
        "out of the halt: the OUT after it exits"
    );
    assert_eq!(g.msg.message_type(), HVMSG_X64_IO_PORT_INTERCEPT);
}

/// CPUID never exits: the hypervisor answers it, from the results the VMM registered
/// where it registered some (HVCALL_REGISTER_INTERCEPT_RESULT, as QEMU, OpenVMM and
/// Cloud Hypervisor use on MSHV), a register left out keeping the hypervisor's value.
#[test]
fn cpuid_is_answered_by_the_hypervisor_from_registered_results_without_an_exit() {
    let code = assemble(64, CODE, |a| {
        a.mov(eax, 1).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.cpuid().unwrap();
        a.mov(r8, rax).unwrap();
        a.mov(r9, rdx).unwrap();
        a.mov(eax, 0x4000_0000).unwrap();
        a.cpuid().unwrap();
        a.hlt().unwrap();
    });
    let run = |results: &[hv_core::CpuidResult]| {
        let mut g = guest();
        g.load(CODE, &code);
        g.long_mode(CODE);
        g.vcpu.set_cpuid_results(results).unwrap();
        assert_eq!(g.run(), Exit::Halted, "no CPUID exit");
        let mut r = |id| g.get(id);
        (
            r(hv_register_name_HV_X64_REGISTER_R8),
            r(hv_register_name_HV_X64_REGISTER_R9),
            r(hv_register_name_HV_X64_REGISTER_RBX),
        )
    };
    let (leaf1_a, leaf1_d, _) = run(&[]);
    assert_ne!(leaf1_a, 1, "a family/model/stepping signature");
    assert_ne!(leaf1_d & (1 << 5), 0, "MSR support is reported");
    let registered = [
        hv_core::CpuidResult {
            leaf: 1,
            subleaf: None,
            registers: [Some(0x1234), None, None, None],
        },
        hv_core::CpuidResult {
            leaf: 0x4000_0000,
            subleaf: None,
            registers: [None, Some(0x7668_734d), None, None],
        },
    ];
    let (a, d, b) = run(&registered);
    assert_eq!(a, 0x1234, "EAX overridden");
    assert_eq!(d, leaf1_d, "EDX kept the hypervisor's value");
    assert_eq!(b, 0x7668_734d);
}

#[test]
fn chosen_msrs_exit_with_number_and_value_and_others_do_not() {
    let mut g = guest_with(VmConfig {
        intercept_msrs: vec![0x4b56_4d00],
        ..VmConfig::default()
    });
    let code = assemble(64, CODE, |a| {
        a.mov(ecx, 0x4b56_4d00).unwrap();
        a.mov(eax, 0x1234_5678).unwrap();
        a.mov(edx, 0x9abc).unwrap();
        a.wrmsr().unwrap();
        a.rdmsr().unwrap();
        a.mov(ecx, 0xc000_0080u32).unwrap();
        a.rdmsr().unwrap(); // EFER: the hypervisor's, no exit
        a.hlt().unwrap();
    });
    g.load(CODE, &code);
    g.long_mode(CODE);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_X64_MSR_INTERCEPT);
    let w: hv_x64_msr_intercept_message = g.msg.payload();
    assert_eq!({ w.msr_number }, 0x4b56_4d00);
    assert_eq!(
        { w.header.intercept_access_type },
        HV_INTERCEPT_ACCESS_WRITE as u8
    );
    assert_eq!(({ w.rax } as u32, { w.rdx } as u32), (0x1234_5678, 0x9abc));
    let next = { w.header.rip } + w.header.instruction_length() as u64;
    g.set(hv_register_name_HV_X64_REGISTER_RIP, next);
    assert_eq!(g.run(), Exit::Message);
    let r: hv_x64_msr_intercept_message = g.msg.payload();
    assert_eq!(
        { r.header.intercept_access_type },
        HV_INTERCEPT_ACCESS_READ as u8
    );
    assert_eq!({ r.header.rip }, next);
    g.set(hv_register_name_HV_X64_REGISTER_RIP, next + 2);
    assert_eq!(g.run(), Exit::Halted);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RAX) & 0x500, 0x500);
}

#[test]
fn a_triple_fault_is_an_unrecoverable_exception_message() {
    let mut g = guest();
    // No IDT in long mode: #UD -> #DF -> triple fault.
    g.load(CODE, &[0x0f, 0x0b]);
    g.long_mode(CODE);
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_IDTR,
        hv_core::regs::pack_table(0, 0),
    );
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_UNRECOVERABLE_EXCEPTION);
    let m: hv_x64_unrecoverable_exception_message = g.msg.payload();
    assert_eq!({ m.header.rip }, CODE);
}
