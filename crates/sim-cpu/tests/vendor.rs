//! Behaviours that follow the vendor CPUID leaf 0 names to the guest (`sim_cpu::vendor`):
//! one processor, whose hypervisor answers leaf 0 GenuineIntel, AuthenticAMD or an
//! unknown vendor, as a VMM's CPUID table does.

mod common;

use hv_core::{HostRegion, UnknownMsr};
use sim_cpu::fault::Exit;
use sim_cpu::phys::PhysMap;
use sim_cpu::{Env, Processor, RunEnd, Segment};
use std::sync::Arc;

const RAM: usize = 2 << 20;

/// Answers CPUID leaf 0 with `vendor` (EBX, EDX, ECX spell it), else the processor's own.
struct VendorEnv {
    vendor: &'static [u8; 12],
}

impl Env for VendorEnv {
    fn cpuid(&mut self, leaf: u32, _subleaf: u32, native: [u32; 4]) -> [u32; 4] {
        if leaf != 0 {
            return native;
        }
        let w = |i: usize| u32::from_le_bytes(self.vendor[i..i + 4].try_into().unwrap());
        [native[0], w(0), w(8), w(4)]
    }
    fn msr_exits(&self, _msr: u32) -> bool {
        false
    }
    fn unknown_msr(&self) -> UnknownMsr {
        UnknownMsr::Fault
    }
    fn apic_id(&self) -> u32 {
        0
    }
}

const AMD: &[u8; 12] = b"AuthenticAMD";
const INTEL: &[u8; 12] = b"GenuineIntel";
const OTHER: &[u8; 12] = b"SomeVendor!!";

const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const IF: u64 = 1 << 9;
const CF: u64 = 1;

// GDT selectors (the descriptors themselves matter only to `Machine::new`'s layout:
// SYSCALL and SYSRET load flat segments without reading the GDT).
const KERNEL_CS: u16 = 0x08;
const USER_CS32: u16 = 0x1b;
const USER_DS: u16 = 0x23;

const MSR_STAR: u32 = 0xc000_0081;

struct Machine {
    cpu: Processor,
    ram: Arc<HostRegion>,
    mem: PhysMap,
    env: VendorEnv,
}

impl Machine {
    /// 32-bit code at ring `cpl` at `ip` (`code` there), flat CS/SS; in long mode
    /// (compatibility mode, with a 1 GiB identity page ring 3 may use) or in legacy
    /// protected mode; EFER.SCE set; no IDT, so an exception is a shutdown whose first
    /// vector the test reads.
    fn compat32(vendor: &'static [u8; 12], long: bool, cpl: u16, code: &[u8], ip: u64) -> Self {
        let ram = Arc::new(HostRegion::new(RAM).unwrap());
        let mem = common::ram_map(&ram);
        let mut cpu = Processor::new(true);
        ram.write(ip as usize, code).unwrap();
        let c = &mut cpu.cpu;
        c.seg[1] = Segment {
            selector: if cpl == 3 { USER_CS32 } else { 0x30 },
            base: 0,
            limit: 0xffff_ffff,
            attributes: 0xc09b | cpl << 5,
        };
        for s in [0, 2, 3] {
            c.seg[s] = Segment {
                selector: if cpl == 3 { USER_DS } else { 0x10 },
                base: 0,
                limit: 0xffff_ffff,
                attributes: 0xc093 | cpl << 5,
            };
        }
        if long {
            ram.write(0x10_0000, &(0x10_1007u64).to_le_bytes()).unwrap();
            ram.write(0x10_1000, &(0x87u64).to_le_bytes()).unwrap();
            c.cr3 = 0x10_0000;
            c.cr4 = 1 << 5;
            c.efer = EFER_SCE | EFER_LME | EFER_LMA;
            c.cr0 = 0x8000_0011;
        } else {
            c.efer = EFER_SCE;
            c.cr0 = 0x11;
        }
        c.rip = ip;
        c.gpr[4] = 0x8_0000;
        c.idtr.limit = 0;
        cpu.state_changed(&mem);
        Machine {
            cpu,
            ram,
            mem,
            env: VendorEnv { vendor },
        }
    }

    fn run(&mut self, max: u64) -> RunEnd {
        self.cpu.run(&self.mem, &mut self.env, max, &mut || false)
    }

    /// Runs until the shutdown an exception with no IDT makes; the first vector.
    fn first_fault(&mut self) -> u8 {
        match self.run(10) {
            RunEnd::Exit(Exit::Shutdown(cause)) => cause.first.vector,
            other => panic!("no fault: {other:?}"),
        }
    }
}

/// AMD APM vol 3 SYSCALL, "SYSCALL_LONG_MODE": from compatibility mode, RCX the next
/// RIP, R11 RFLAGS, RFLAGS masked by IA32_FMASK, into 64-bit code at CPL 0 (CS from
/// STAR[47:32], SS that + 8) at CSTAR, not LSTAR. KVM's `em_syscall` takes CSTAR
/// there for an AMD guest vendor. kvm-unit-tests x86/syscall.c's 32-bit SYSCALL.
#[test]
fn apm_vol3_syscall_from_compatibility_mode_enters_cstar_with_an_amd_vendor() {
    let mut m = Machine::compat32(AMD, true, 3, &[0x0f, 0x05], 0x2000); // syscall
    m.ram.write(0x3000, &[0xf4]).unwrap(); // CSTAR: hlt
    m.ram.write(0x4000, &[0xf4]).unwrap(); // LSTAR: hlt
    let c = &mut m.cpu.cpu;
    c.msr.star = (0x13u64 << 48) | ((KERNEL_CS as u64) << 32);
    c.msr.cstar = 0x3000;
    c.msr.lstar = 0x4000;
    c.msr.sfmask = IF;
    c.set_rflags(0x2 | IF | CF);
    c.gpr[11] = 0x5555;
    assert!(matches!(m.run(10), RunEnd::Exit(Exit::Halt)));
    let c = &m.cpu.cpu;
    assert_eq!(c.rip, 0x3001, "at CSTAR (past its HLT)");
    assert_eq!(c.gpr[1], 0x2002, "RCX: the next RIP");
    assert_eq!(c.gpr[11], 0x2 | IF | CF, "R11: RFLAGS");
    assert_eq!(c.rflags() & (IF | CF), CF, "IA32_FMASK cleared IF");
    assert_eq!(c.seg[1].selector, KERNEL_CS);
    assert!(c.seg[1].long(), "64-bit code");
    assert_eq!(c.seg[2].selector, KERNEL_CS + 8);
    assert_eq!(c.cpl(), 0);
}

/// Intel SDM vol 2 SYSCALL, "Operation": "IF (CS.L ≠ 1 ) or (IA32_EFER.LMA ≠ 1) or
/// (IA32_EFER.SCE ≠ 1) ... THEN #UD": compatibility mode is #UD with GenuineIntel, and
/// with a vendor neither Intel nor AMD (KVM's `em_syscall_is_enabled`: "default: ...
/// apply Intel's stricter rules").
#[test]
fn sdm_vol2_syscall_in_compatibility_mode_is_ud_with_an_intel_or_unknown_vendor() {
    for vendor in [INTEL, OTHER] {
        let mut m = Machine::compat32(vendor, true, 3, &[0x0f, 0x05], 0x2000);
        m.cpu.cpu.msr.cstar = 0x3000;
        assert_eq!(m.first_fault(), 6, "{}", String::from_utf8_lossy(vendor));
    }
}

/// AMD APM vol 3 SYSCALL, "SYSCALL_LEGACY_MODE", and SYSRET, "SYSRET_LEGACY_MODE": in
/// legacy protected mode SYSCALL saves the next EIP in ECX, clears RFLAGS.VM, IF and RF
/// and enters 32-bit code at CPL 0 at STAR[31:0]; SYSRET returns to 32-bit code at CPL
/// 3 (CS STAR[63:48] | 3, SS that + 8) at ECX with RFLAGS.IF set. R11 and IA32_FMASK
/// are long mode's: untouched, unused.
#[test]
fn apm_vol3_syscall_and_sysret_in_legacy_mode_with_an_amd_vendor() {
    let mut m = Machine::compat32(AMD, false, 3, &[0x0f, 0x05], 0x2000); // syscall
    m.ram.write(0x3000, &[0x0f, 0x07]).unwrap(); // STAR[31:0]: sysret
    let c = &mut m.cpu.cpu;
    c.msr.star = (0x13u64 << 48) | ((KERNEL_CS as u64) << 32) | 0x3000;
    c.msr.sfmask = CF;
    c.set_rflags(0x2 | IF | CF);
    c.gpr[11] = 0x5555;
    assert!(matches!(m.run(1), RunEnd::InstructionLimit));
    let c = &m.cpu.cpu;
    assert_eq!(c.rip, 0x3000, "EIP from STAR[31:0]");
    assert_eq!(c.gpr[1], 0x2002, "ECX: the next EIP");
    assert_eq!(c.rflags() & (IF | CF), CF, "IF cleared, FMASK unused");
    assert_eq!(c.gpr[11], 0x5555, "R11 untouched");
    assert_eq!(c.seg[1].selector, KERNEL_CS);
    assert!(!c.seg[1].long(), "32-bit code");
    assert_eq!(c.seg[2].selector, KERNEL_CS + 8);
    assert_eq!(c.cpl(), 0);
    m.cpu.cpu.set_rflags(0x2);
    assert!(matches!(m.run(1), RunEnd::InstructionLimit));
    let c = &m.cpu.cpu;
    assert_eq!(c.rip, 0x2002, "back at ECX");
    assert_eq!(c.seg[1].selector, 0x13);
    assert_eq!(c.seg[2].selector, 0x1b);
    assert_eq!(c.cpl(), 3);
    assert_eq!(c.rflags() & IF, IF, "SYSRET set IF");
}

/// Intel SDM vol 2 SYSCALL and SYSRET: #UD outside 64-bit mode, so in legacy protected
/// mode too with GenuineIntel.
#[test]
fn sdm_vol2_syscall_and_sysret_in_legacy_mode_are_ud_with_an_intel_vendor() {
    let mut m = Machine::compat32(INTEL, false, 3, &[0x0f, 0x05], 0x2000);
    m.cpu.cpu.msr.star = (KERNEL_CS as u64) << 32 | 0x3000;
    assert_eq!(m.first_fault(), 6, "SYSCALL");
    let mut m = Machine::compat32(INTEL, false, 0, &[0x0f, 0x07], 0x2000);
    assert_eq!(m.first_fault(), 6, "SYSRET");
    let mut m = Machine::compat32(INTEL, true, 0, &[0x0f, 0x07], 0x2000);
    assert_eq!(m.first_fault(), 6, "SYSRET in compatibility mode");
}

/// AMD APM vol 3 SYSRET: at CPL 0 in compatibility mode (long mode, 32-bit operand
/// size) SYSRET returns to 32-bit code at ECX with RFLAGS from R11; at CPL 3 it is
/// #GP(0), as in 64-bit mode.
#[test]
fn apm_vol3_sysret_from_compatibility_mode_with_an_amd_vendor() {
    let mut m = Machine::compat32(AMD, true, 0, &[0x0f, 0x07], 0x2000); // sysret
    let c = &mut m.cpu.cpu;
    c.msr.star = 0x13u64 << 48;
    c.gpr[1] = 0x2_3000;
    c.gpr[11] = 0x2 | CF;
    assert!(matches!(m.run(1), RunEnd::InstructionLimit));
    let c = &m.cpu.cpu;
    assert_eq!((c.rip, c.seg[1].selector, c.cpl()), (0x2_3000, 0x13, 3));
    assert!(!c.seg[1].long());
    assert_eq!(c.rflags() & (CF | IF), CF, "RFLAGS from R11");
    let mut m = Machine::compat32(AMD, true, 3, &[0x0f, 0x07], 0x2000);
    assert_eq!(m.first_fault(), 13, "CPL 3");
}

/// AMD APM vol 2 13.2.1: PerfEvtSel0-3 (0xC001_0000-3) and PerfCtr0-3 (0xC001_0004-7)
/// exist on an AMD processor; the sim's count nothing and hold 0: reads give 0 and a
/// write of 0 is taken (KVM x86.c `kvm_get_msr_common`/`kvm_set_msr_common` without a
/// vPMU), any other value is #GP(0). With GenuineIntel they are MSRs the processor
/// lacks (the hypervisor's unknown-MSR policy: #GP(0) here). lib/x86/pmu.c `pmu_init`
/// writes 0 to all eight on a non-Intel vendor.
#[test]
fn apm_vol2_13_2_legacy_performance_counter_msrs_hold_zero_with_an_amd_vendor() {
    for msr in 0xc001_0000u32..=0xc001_0007 {
        // mov ecx, msr; xor eax, eax; xor edx, edx; wrmsr; dec eax; dec edx; rdmsr; hlt
        let mut code = vec![0xb9];
        code.extend_from_slice(&msr.to_le_bytes());
        code.extend_from_slice(&[0x31, 0xc0, 0x31, 0xd2, 0x0f, 0x30]);
        code.extend_from_slice(&[0xff, 0xc8, 0xff, 0xca, 0x0f, 0x32, 0xf4]);
        let mut m = Machine::compat32(AMD, true, 0, &code, 0x2000);
        assert!(matches!(m.run(20), RunEnd::Exit(Exit::Halt)), "{msr:#x}");
        assert_eq!((m.cpu.cpu.gpr[0], m.cpu.cpu.gpr[2]), (0, 0), "{msr:#x}");

        // mov ecx, msr; mov eax, 1; xor edx, edx; wrmsr
        let mut code = vec![0xb9];
        code.extend_from_slice(&msr.to_le_bytes());
        code.extend_from_slice(&[0xb8, 1, 0, 0, 0, 0x31, 0xd2, 0x0f, 0x30]);
        let mut m = Machine::compat32(AMD, true, 0, &code, 0x2000);
        assert_eq!(
            m.first_fault(),
            13,
            "{msr:#x}: a value the sim does not keep"
        );

        // mov ecx, msr; rdmsr
        let mut code = vec![0xb9];
        code.extend_from_slice(&msr.to_le_bytes());
        code.extend_from_slice(&[0x0f, 0x32]);
        let mut m = Machine::compat32(INTEL, true, 0, &code, 0x2000);
        assert_eq!(m.first_fault(), 13, "{msr:#x} with GenuineIntel");
    }
}

/// STAR is one MSR for both vendors (SDM vol 4 Table 2-2, APM vol 2 6.1.1): its
/// SYSCALL selector field, loaded eagerly by WRMSR, is what a 64-bit SYSCALL right
/// after loads (kvm-unit-tests syscall.c `test_syscall_lazy_load`).
#[test]
fn sdm_vol2_syscall_in_64_bit_mode_is_the_same_for_both_vendors() {
    for vendor in [INTEL, AMD] {
        // mov ecx, STAR; xor eax, eax; mov edx, 0x08; wrmsr; syscall
        let mut code = vec![0xb9];
        code.extend_from_slice(&MSR_STAR.to_le_bytes());
        code.extend_from_slice(&[0x31, 0xc0, 0xba, 0x08, 0, 0, 0, 0x0f, 0x30, 0x0f, 0x05]);
        let mut m = Machine::compat32(vendor, true, 0, &code, 0x2000);
        // 64-bit code for this one.
        m.cpu.cpu.seg[1].attributes = 0xa09b;
        m.cpu.state_changed(&m.mem);
        m.cpu.cpu.msr.lstar = 0x4000;
        m.cpu.cpu.msr.cstar = 0x3000;
        m.ram.write(0x4000, &[0xf4]).unwrap();
        assert!(matches!(m.run(10), RunEnd::Exit(Exit::Halt)));
        let c = &m.cpu.cpu;
        assert_eq!((c.rip, c.gpr[1], c.seg[1].selector), (0x4001, 0x2010, 8));
    }
}
