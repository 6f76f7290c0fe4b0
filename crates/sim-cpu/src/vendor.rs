//! The vendor the guest sees, and the few behaviours that follow it.
//!
//! The processor is one x86-64: where the Intel SDM and the AMD APM agree it has one
//! semantics. Where they differ, it behaves as the vendor that CPUID leaf 0 names to
//! the guest, the answer the hypervisor gives (the VMM's registered CPUID table over
//! the processor's own GenuineIntel), as KVM's emulator does: arch/x86/kvm/emulate.c
//! asks the guest's CPUID leaf 0 (`vendor_intel`, `em_syscall_is_enabled` with
//! `is_guest_vendor_intel`/`is_guest_vendor_amd`/`is_guest_vendor_hygon` of
//! arch/x86/kvm/kvm_emulate.h). The differences, each with its source:
//!
//! - SYSCALL outside 64-bit mode ([`Vendor::syscall_outside_64bit_mode`]).
//! - SYSRET outside 64-bit mode ([`Vendor::sysret_outside_64bit_mode`]).
//! - The legacy performance counters at 0xC001_0000-0xC001_0007 ([`K7_PERF_FIRST`]).

use crate::exec::Exec;

/// Which vendor's rules apply, by CPUID leaf 0's vendor string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD", "AMDisbetter!" (early AMD samples) or "HygonGenuine" (Hygon's
    /// AMD-licensed processors): KVM's `is_guest_vendor_amd` and
    /// `is_guest_vendor_hygon`, which `em_syscall_is_enabled` treats alike.
    Amd,
    /// Any other: Intel's stricter rules, as `em_syscall_is_enabled` applies them
    /// ("default: (not Intel, not AMD, not Hygon), apply Intel's stricter rules").
    Other,
}

/// CPUID leaf 0's EBX, EDX, ECX (in that order, the string's) for `name`.
const fn words(name: &[u8; 12]) -> [u32; 3] {
    [
        u32::from_le_bytes([name[0], name[1], name[2], name[3]]),
        u32::from_le_bytes([name[4], name[5], name[6], name[7]]),
        u32::from_le_bytes([name[8], name[9], name[10], name[11]]),
    ]
}

const INTEL: [u32; 3] = words(b"GenuineIntel");
const AMD: [&[u32; 3]; 3] = [
    &words(b"AuthenticAMD"),
    &words(b"AMDisbetter!"),
    &words(b"HygonGenuine"),
];

impl Vendor {
    /// The vendor CPUID leaf 0 names: `ebx`, `ecx`, `edx` as CPUID returns them.
    pub fn from_leaf0(ebx: u32, ecx: u32, edx: u32) -> Vendor {
        let name = [ebx, edx, ecx];
        if name == INTEL {
            Vendor::Intel
        } else if AMD.iter().any(|v| **v == name) {
            Vendor::Amd
        } else {
            Vendor::Other
        }
    }

    /// The vendor the guest sees now: CPUID leaf 0 as the guest would read it.
    pub fn of_guest(x: &mut Exec) -> Vendor {
        let native = crate::cpuid::native(0, 0, x.env.apic_id(), x.cpu);
        let [_, ebx, ecx, edx] = x.env.cpuid(0, 0, native);
        Vendor::from_leaf0(ebx, ecx, edx)
    }

    /// SYSCALL in compatibility mode and in legacy protected mode. AMD APM vol 3
    /// SYSCALL: legacy mode loads EIP from STAR[31:0]; in long mode "In compatibility
    /// mode, SYSCALL ... loads the new RIP from CSTAR". Intel SDM vol 2 SYSCALL: #UD
    /// unless CS.L and IA32_EFER.LMA ("IF (CS.L ≠ 1 ) or (IA32_EFER.LMA ≠ 1) ... THEN
    /// #UD"). KVM's `em_syscall` follows the guest's vendor the same way.
    pub fn syscall_outside_64bit_mode(self) -> bool {
        self == Vendor::Amd
    }

    /// SYSRET in compatibility mode and in legacy protected mode. AMD APM vol 3
    /// SYSRET: "SYSRET_LEGACY_MODE" returns to 32-bit code at CPL 3 with RFLAGS.IF set,
    /// and in long mode the check is CPL 0 and protected mode, not 64-bit mode. Intel
    /// SDM vol 2 SYSRET: #UD unless in 64-bit mode.
    pub fn sysret_outside_64bit_mode(self) -> bool {
        self == Vendor::Amd
    }

    /// Whether the legacy performance-counter MSRs exist ([`K7_PERF_FIRST`]).
    pub fn has_k7_perf_msrs(self) -> bool {
        self == Vendor::Amd
    }
}

/// AMD's legacy performance counters, PerfEvtSel0-3 (0xC001_0000-3) and PerfCtr0-3
/// (0xC001_0004-7): AMD APM vol 2 13.2.1 ("Performance Counter MSRs"), on every AMD
/// processor since the K7, with no CPUID bit to say so (lib/x86/pmu.c `pmu_init`
/// programs them on any vendor not GenuineIntel without PERFCTR_CORE). Intel
/// processors have no such MSRs (#GP(0), SDM vol 4).
///
/// The sim counts no event: these are counters that exist and hold 0, disabled.
/// Reads give 0 and a write of 0 is taken, what KVM does for a vCPU without a virtual
/// PMU (arch/x86/kvm/x86.c `kvm_get_msr_common` reads `MSR_K7_EVNTSEL0 ...
/// MSR_K7_PERFCTR3` as 0 once `kvm_pmu_is_valid_msr` refuses them;
/// `kvm_set_msr_common` takes 0 and reports any other value as unimplemented,
/// `kvm_pr_unimpl_wrmsr`). Where KVM drops an unimplemented value, the sim refuses it
/// with #GP(0): an event select it accepted would have to count, and a counter it
/// accepted would have to read back.
pub const K7_PERF_FIRST: u32 = 0xc001_0000;
pub const K7_PERF_LAST: u32 = 0xc001_0007;

/// Whether `msr` is one of the legacy counters' MSRs ([`K7_PERF_FIRST`]).
pub fn is_k7_perf(msr: u32) -> bool {
    (K7_PERF_FIRST..=K7_PERF_LAST).contains(&msr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KVM's kvm_emulate.h `X86EMUL_CPUID_VENDOR_*` constants: CPUID leaf 0's EBX,
    /// ECX, EDX for each vendor string.
    #[test]
    fn kvm_emulate_h_vendor_words() {
        assert_eq!(
            Vendor::from_leaf0(0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            Vendor::Intel
        );
        assert_eq!(
            Vendor::from_leaf0(0x6874_7541, 0x444d_4163, 0x6974_6e65),
            Vendor::Amd
        );
        assert_eq!(
            Vendor::from_leaf0(0x6f67_7948, 0x656e_6975, 0x6e65_476e),
            Vendor::Amd
        );
        assert_eq!(Vendor::from_leaf0(0, 0, 0), Vendor::Other);
    }
}
