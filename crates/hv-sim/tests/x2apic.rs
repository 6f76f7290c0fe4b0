//! x2APIC mode of the sim's local APIC (Intel SDM vol 3 11.12, "Extended XAPIC
//! (x2APIC)"): CPUID.1:ECX.x2APIC, IA32_APIC_BASE.EXTD and the mode transitions of
//! 11.12.5, the MSR interface of 11.12.1.2 (MSRs 0x800-0x8FF), the x2APIC ID and the
//! logical ID derived from it (11.12.10.2), the xAPIC page no longer the APIC's
//! (11.12.2), and a vCPU state that carries the mode. Each case runs in 64-bit ring 0
//! and reports on port 0x80, or the vector it raised on 0x81.

mod common;

use common::*;
use hv_core::message::HVMSG_UNMAPPED_GPA;
use iced_x86::code_asm::*;
use mshv_bindings::*;

const GP: Outcome = Outcome::Vector(13);
const APIC_BASE: u32 = 0x1b;
const EN: u32 = 1 << 11;
const EXTD: u32 = 1 << 10;

/// EAX:EDX = IA32_APIC_BASE with EN and EXTD as `bits`, then WRMSR (ECX = 0x1B).
fn write_apic_base(a: &mut CodeAssembler, bits: u32) {
    a.mov(ecx, APIC_BASE).unwrap();
    a.rdmsr().unwrap();
    a.and(eax, !(EN | EXTD) as i32).unwrap();
    a.or(eax, bits as i32).unwrap();
    a.wrmsr().unwrap();
}

fn rdmsr(a: &mut CodeAssembler, msr: u32) {
    a.mov(ecx, msr).unwrap();
    a.rdmsr().unwrap();
}

fn wrmsr(a: &mut CodeAssembler, msr: u32, value: u64) {
    a.mov(ecx, msr).unwrap();
    a.mov(eax, value as u32).unwrap();
    a.mov(edx, (value >> 32) as u32).unwrap();
    a.wrmsr().unwrap();
}

fn case(body: impl FnOnce(&mut CodeAssembler)) -> Outcome {
    guest_case(|_| {}, body)
}

#[test]
fn sdm_11_12_cpuid_advertises_x2apic() {
    let Outcome::Result(leaf1_ecx) = case(|a| {
        a.mov(eax, 1).unwrap();
        a.cpuid().unwrap();
        a.mov(eax, ecx).unwrap();
    }) else {
        panic!("CPUID faulted")
    };
    assert_ne!(leaf1_ecx & 1 << 21, 0, "CPUID.1:ECX.x2APIC[bit 21]");
}

/// SDM vol 3 11.12.5, Figure 11-29: the legal IA32_APIC_BASE transitions (reset
/// xAPIC; xAPIC <-> disabled; xAPIC -> x2APIC; x2APIC -> disabled), and #GP(0) for the
/// rest: EXTD without EN, x2APIC straight back to xAPIC, disabled straight to x2APIC
/// (as kvm-unit-tests apic.c test_enable_x2apic has them).
#[test]
fn sdm_11_12_5_apic_base_mode_transitions() {
    let path = |steps: &'static [u32]| {
        case(move |a| {
            for &bits in steps {
                write_apic_base(a, bits);
            }
            a.mov(ecx, APIC_BASE).unwrap();
            a.rdmsr().unwrap();
            a.and(eax, (EN | EXTD) as i32).unwrap();
        })
    };
    let ok = |bits: u32| Outcome::Result(bits as u64);
    assert_eq!(path(&[EN | EXTD]), ok(EN | EXTD), "xAPIC to x2APIC");
    assert_eq!(path(&[EN | EXTD, 0]), ok(0), "x2APIC to disabled");
    assert_eq!(path(&[EN | EXTD, 0, EN]), ok(EN), "then to xAPIC");
    assert_eq!(path(&[0, EN]), ok(EN), "xAPIC to disabled and back");
    assert_eq!(path(&[EXTD]), GP, "xAPIC to EXTD without EN");
    assert_eq!(path(&[EN | EXTD, EN]), GP, "x2APIC straight to xAPIC");
    assert_eq!(path(&[EN | EXTD, EXTD]), GP, "x2APIC to EXTD without EN");
    assert_eq!(path(&[0, EN | EXTD]), GP, "disabled straight to x2APIC");
    assert_eq!(path(&[0, EXTD]), GP, "disabled to EXTD without EN");
}

/// Without CPUID.1:ECX.x2APIC (a VMM's CPUID answer hides it, as QEMU's `-x2apic`),
/// EXTD is a reserved bit (SDM vol 3 11.12.1).
#[test]
fn sdm_11_12_1_extd_is_reserved_without_x2apic_support() {
    let hidden = guest_case(
        |g| {
            g.vcpu
                .set_cpuid_results(&[hv_core::CpuidResult {
                    leaf: 1,
                    subleaf: None,
                    registers: [None, None, Some(0), None],
                }])
                .unwrap()
        },
        |a| write_apic_base(a, EN | EXTD),
    );
    assert_eq!(hidden, GP);
}

/// SDM vol 3 11.12.1.2: RDMSR or WRMSR of 0x800-0x8FF outside x2APIC mode is #GP(0),
/// and so is any access to an x2APIC register that does not exist.
#[test]
fn sdm_11_12_1_2_the_x2apic_msrs_fault_outside_x2apic_mode() {
    assert_eq!(case(|a| rdmsr(a, 0x803)), GP, "RDMSR in xAPIC mode");
    assert_eq!(case(|a| wrmsr(a, 0x808, 0)), GP, "WRMSR in xAPIC mode");
    let disabled = case(|a| {
        write_apic_base(a, 0);
        rdmsr(a, 0x803);
    });
    assert_eq!(disabled, GP, "RDMSR with the APIC disabled");
}

/// SDM vol 3 11.12.1.2 (Table 11-6), 11.12.1.3: in x2APIC mode the MSRs are the
/// registers: the version, the 32-bit x2APIC ID and the logical ID derived from it
/// (11.12.10.2); the ID is read-only; write-only EOI and SELF IPI #GP on RDMSR; the
/// xAPIC-only DFR and ICR high are absent; bits 63:32 are reserved but the ICR's.
#[test]
fn sdm_11_12_1_2_the_x2apic_msr_interface() {
    let x2 = |body: fn(&mut CodeAssembler)| {
        case(move |a| {
            write_apic_base(a, EN | EXTD);
            body(a);
        })
    };
    assert_eq!(
        x2(|a| rdmsr(a, 0x803)),
        Outcome::Result(0x0005_0014),
        "version"
    );
    assert_eq!(x2(|a| rdmsr(a, 0x802)), Outcome::Result(0), "x2APIC ID 0");
    assert_eq!(
        x2(|a| rdmsr(a, 0x80d)),
        Outcome::Result(1),
        "LDR: cluster 0, bit 0"
    );
    assert_eq!(x2(|a| wrmsr(a, 0x802, 0)), GP, "the ID is read-only");
    assert_eq!(x2(|a| rdmsr(a, 0x80b)), GP, "EOI is write-only");
    assert_eq!(x2(|a| rdmsr(a, 0x83f)), GP, "SELF IPI is write-only");
    assert_eq!(x2(|a| rdmsr(a, 0x80e)), GP, "no DFR");
    assert_eq!(x2(|a| rdmsr(a, 0x831)), GP, "no ICR high");
    assert_eq!(x2(|a| wrmsr(a, 0x808, 1 << 32)), GP, "TPR bits 63:32");
    assert_eq!(x2(|a| wrmsr(a, 0x808, 0x100)), GP, "TPR bits 31:8");
    assert_eq!(x2(|a| wrmsr(a, 0x83f, 0x100)), GP, "SELF IPI bits 31:8");
    assert_eq!(x2(|a| wrmsr(a, 0x80b, 1)), GP, "EOI takes only 0");
    let tpr = x2(|a| {
        wrmsr(a, 0x808, 0x40);
        rdmsr(a, 0x808);
        a.shl(rdx, 32).unwrap();
        a.or(rax, rdx).unwrap();
    });
    assert_eq!(tpr, Outcome::Result(0x40), "TPR reads back");
    let icr = x2(|a| {
        // A fixed IPI, vector 0x30, to x2APIC ID 0x1234 (no one): the 64-bit ICR.
        wrmsr(a, 0x830, 0x0000_1234_0000_0030);
        rdmsr(a, 0x830);
        a.shl(rdx, 32).unwrap();
        a.or(rax, rdx).unwrap();
    });
    assert_eq!(icr, Outcome::Result(0x0000_1234_0000_0030), "the ICR");
    let tpr_by_cr8 = x2(|a| {
        a.mov(eax, 5).unwrap();
        a.mov(cr8, rax).unwrap();
        rdmsr(a, 0x808);
    });
    assert_eq!(
        tpr_by_cr8,
        Outcome::Result(0x50),
        "CR8 is TPR[7:4] in x2APIC mode too"
    );
}

/// SDM vol 3 11.12.2: in x2APIC mode "any access to the MMIO interface will behave
/// similar to that of a legacy xAPIC in globally disabled state": the page is not the
/// APIC's, and an access to it goes to the VMM as one to unmapped memory (as on MSHV,
/// where the page is not mapped).
#[test]
fn sdm_11_12_2_the_xapic_page_is_not_decoded_in_x2apic_mode() {
    let mut g = guest();
    let code = assemble(64, CASE_CODE, |a| {
        write_apic_base(a, EN | EXTD);
        a.mov(ebx, 0xfee0_0000u32).unwrap();
        a.mov(eax, dword_ptr(rbx + 0x30)).unwrap();
        a.hlt().unwrap();
    });
    g.load(CASE_CODE, &code);
    g.long_mode(CASE_CODE);
    assert_eq!(g.run(), hv_core::Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_UNMAPPED_GPA);
    let m: hv_x64_memory_intercept_message = g.msg.payload();
    let gpa = m.guest_physical_address;
    assert_eq!(gpa, 0xfee0_0030);
}

/// SDM vol 3 11.4.3 and 11.4.7.1: clearing IA32_APIC_BASE.EN returns the APIC to its
/// power-up state, so after enabling it again the APIC ID register holds the initial
/// APIC ID and TPR is 0 (kvm-unit-tests apic "correct xapic id after reset"). The
/// result: the ID register's bits 31:24 and TPR after a write of ID 5 and TPR 0x20,
/// a disable and an enable.
#[test]
fn sdm_11_4_3_disabling_the_apic_returns_it_to_its_power_up_state() {
    let r = case(|a| {
        a.mov(ebx, 0xfee0_0000u32).unwrap();
        a.mov(dword_ptr(rbx + 0xf0), 0x1ff).unwrap();
        a.mov(dword_ptr(rbx + 0x20), 5 << 24).unwrap();
        a.mov(dword_ptr(rbx + 0x80), 0x20).unwrap();
        write_apic_base(a, 0);
        write_apic_base(a, EN);
        a.mov(eax, dword_ptr(rbx + 0x20)).unwrap();
        a.or(eax, dword_ptr(rbx + 0x80)).unwrap();
        a.mov(ecx, dword_ptr(rbx + 0xf0)).unwrap();
        a.shl(rcx, 32).unwrap();
        a.or(rax, rcx).unwrap();
    });
    assert_eq!(
        r,
        Outcome::Result(0xff << 32),
        "ID 0, TPR 0, SVR 0xFF (software-disabled)"
    );
}

/// A vCPU's state carries x2APIC mode: IA32_APIC_BASE in its registers, and a LAPIC
/// page whose ID is the 32-bit x2APIC ID (KVM's `kvm_lapic_state` layout with 32-bit
/// IDs). A state saved in x2APIC mode restores into a vCPU in xAPIC mode as x2APIC
/// mode, the registers read back through the MSRs.
#[test]
fn a_vcpu_state_in_x2apic_mode_round_trips() {
    let mut g = guest();
    let code = assemble(64, CASE_CODE, |a| {
        write_apic_base(a, EN | EXTD);
        wrmsr(a, 0x80f, 0x1ff);
        wrmsr(a, 0x808, 0x30);
        a.out(0x80, al).unwrap();
        // After the restore: TPR and the ID through the MSRs.
        rdmsr(a, 0x808);
        a.mov(esi, eax).unwrap();
        rdmsr(a, 0x802);
        a.shl(rax, 8).unwrap();
        a.or(eax, esi).unwrap();
        a.out(0x80, eax).unwrap();
        a.hlt().unwrap();
    });
    g.load(CASE_CODE, &code);
    g.long_mode(CASE_CODE);
    assert_eq!(g.run(), hv_core::Exit::Message);
    let state = g.vcpu.state().unwrap();
    let base = state
        .register(hv_register_name_HV_X64_REGISTER_APIC_BASE)
        .unwrap()[0];
    assert_eq!(base & (EN | EXTD) as u64, (EN | EXTD) as u64);
    let svr = u32::from_le_bytes(state.lapic[0xf0..0xf4].try_into().unwrap());
    assert_eq!(svr, 0x1ff);
    // A fresh vCPU 0 of another VM (xAPIC mode) takes the state.
    let mut h = guest();
    h.ram
        .write(0, &{
            let mut all = vec![0u8; RAM];
            g.ram.read(0, &mut all).unwrap();
            all
        })
        .unwrap();
    h.vcpu.set_state(&state).unwrap();
    // Past the OUT.
    let rip = h.get(hv_register_name_HV_X64_REGISTER_RIP);
    h.set(hv_register_name_HV_X64_REGISTER_RIP, rip + 2);
    assert_eq!(h.run(), hv_core::Exit::Message);
    let io: hv_x64_io_port_intercept_message = h.msg.payload();
    assert_eq!(io.rax & 0xffff, 0x30, "TPR 0x30, x2APIC ID 0");
    assert_eq!(h.vcpu.state().unwrap().lapic, state.lapic);
}

/// CPUID leaf 0BH (SDM vol 2 CPUID, "Extended Topology Enumeration Leaf") gives the
/// x2APIC ID in EDX, and enumerates its levels (EBX non-zero at subleaf 0) as CPUID.1
/// has the topology: one thread and one core per package (kvm-unit-tests apic "x2apic
/// id matches cpuid" reads EDX). The result: EDX, then EBX and ECX of subleaves 0-2.
#[test]
fn cpuid_leaf_0bh_gives_the_x2apic_id() {
    let leaf_b = |sub: u32, reg: AsmRegister32| {
        case(move |a| {
            a.mov(eax, 0xb).unwrap();
            a.mov(ecx, sub).unwrap();
            a.cpuid().unwrap();
            a.mov(eax, reg).unwrap();
        })
    };
    assert_eq!(leaf_b(0, edx), Outcome::Result(0), "x2APIC ID 0");
    assert_eq!(leaf_b(0, ebx), Outcome::Result(1), "one thread per core");
    assert_eq!(leaf_b(0, ecx), Outcome::Result(0x100), "level 0: SMT");
    assert_eq!(leaf_b(1, ebx), Outcome::Result(1), "one core per package");
    assert_eq!(leaf_b(1, ecx), Outcome::Result(0x201), "level 1: core");
    assert_eq!(leaf_b(2, ecx), Outcome::Result(0x002), "level 2: invalid");
}

/// A VMM's write of HV_X64_REGISTER_APIC_BASE is the architectural one: setting EXTD
/// there puts the APIC in x2APIC mode as a guest's WRMSR would (SDM vol 3 11.12.5), so
/// interrupts are matched in that mode: an I/O APIC's or MSI's logical destination 1
/// reaches cluster 0's logical ID bit 0, APIC ID 0 (11.12.10.2), where in xAPIC mode
/// the LDR is software's and still 0.
#[test]
fn sdm_11_12_5_a_vmm_write_of_apic_base_with_extd_enters_x2apic_mode() {
    let mut g = guest();
    let base = g.get(hv_register_name_HV_X64_REGISTER_APIC_BASE);
    assert_eq!(base & EXTD as u64, 0, "xAPIC mode at RESET");
    let request = hv_core::InterruptRequest {
        kind: hv_core::InterruptKind::Fixed,
        vector: 0x40,
        destination: 1,
        logical: true,
        level: false,
    };
    let interrupts = g.vm.interrupts();
    assert!(
        interrupts.request(&request).is_err(),
        "xAPIC: no LDR holds bit 0 yet"
    );
    g.set(
        hv_register_name_HV_X64_REGISTER_APIC_BASE,
        base | (EN | EXTD) as u64,
    );
    interrupts.request(&request).unwrap();
}
