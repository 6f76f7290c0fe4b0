//! What CPUID says this processor is, and nothing it is not: every feature bit set
//! here is one the processor implements, and hv-sim's `tests/cpuid_honest.rs` executes
//! something of each. The SDM's vol 2 CPUID lists the leaves and bits.

use crate::state::{Cpu, CR4_OSXSAVE, CR4_PKE};

/// Family 6, model 0x6A, stepping 0: the signature CPUID.1:EAX and RESET's EDX hold.
pub const SIGNATURE: u32 = 0x0006_06a0;
/// The highest basic and extended leaves.
pub const MAX_BASIC: u32 = 0x16;
pub const MAX_EXTENDED: u32 = 0x8000_0008;
/// The clocks (CPUID leaves 0x15 and 0x16, SDM vol 2 CPUID): a 25 MHz crystal, which
/// the local APIC timer counts (as on Intel processors whose leaf 0x15 names it; Linux's
/// `native_calibrate_tsc` sets the APIC timer period from it), and a TSC 40 times as
/// fast: 1 GHz, so one TSC tick is one nanosecond of guest time.
pub const CRYSTAL_HZ: u32 = 25_000_000;
pub const TSC_PER_CRYSTAL: u32 = 40;
/// The TSC's frequency in MHz (CPUID 0x16 base and maximum).
pub const TSC_MHZ: u32 = CRYSTAL_HZ / 1_000_000 * TSC_PER_CRYSTAL;
/// The brand string (CPUID 0x80000002..4), NUL padded to 48 bytes.
pub const BRAND: &str = "mshv sim x86-64 processor";

pub mod bits {
    // CPUID.1:EDX
    pub const FPU: u32 = 1 << 0;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const PAE: u32 = 1 << 6;
    pub const MCE: u32 = 1 << 7;
    pub const CX8: u32 = 1 << 8;
    pub const APIC: u32 = 1 << 9;
    pub const SEP: u32 = 1 << 11;
    pub const MTRR: u32 = 1 << 12;
    pub const PGE: u32 = 1 << 13;
    pub const MCA: u32 = 1 << 14;
    pub const CMOV: u32 = 1 << 15;
    pub const PAT: u32 = 1 << 16;
    pub const PSE36: u32 = 1 << 17;
    pub const CLFSH: u32 = 1 << 19;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
    // CPUID.1:ECX
    pub const CX16: u32 = 1 << 13;
    pub const X2APIC: u32 = 1 << 21;
    pub const MOVBE: u32 = 1 << 22;
    pub const POPCNT: u32 = 1 << 23;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const OSXSAVE: u32 = 1 << 27;
    pub const HYPERVISOR: u32 = 1 << 31;
    // CPUID.6:EAX: the APIC timer runs in every C-state (this one has no other).
    pub const ARAT: u32 = 1 << 2;
    // CPUID.7.0:EBX
    pub const FSGSBASE: u32 = 1 << 0;
    pub const SMEP: u32 = 1 << 7;
    pub const SMAP: u32 = 1 << 20;
    // CPUID.7.0:ECX: protection keys for user pages, CR4.PKE's mirror, and protection
    // keys for supervisor pages (SDM vol 3 4.6.2).
    pub const PKU: u32 = 1 << 3;
    pub const OSPKE: u32 = 1 << 4;
    pub const PKS: u32 = 1 << 31;
    // CPUID.7.0:EDX: IA32_ARCH_CAPABILITIES exists (`crate::msr::NOT_SUSCEPTIBLE`).
    pub const ARCH_CAPABILITIES: u32 = 1 << 29;
    // CPUID.80000001H:ECX
    pub const LAHF_LM: u32 = 1 << 0;
    pub const ABM: u32 = 1 << 5;
    pub const PREFETCHW: u32 = 1 << 8;
    // CPUID.80000001H:EDX
    pub const SYSCALL: u32 = 1 << 11;
    pub const NX: u32 = 1 << 20;
    pub const PAGE1GB: u32 = 1 << 26;
    pub const RDTSCP: u32 = 1 << 27;
    pub const LM: u32 = 1 << 29;
}

const fn word(s: &[u8]) -> u32 {
    u32::from_le_bytes([s[0], s[1], s[2], s[3]])
}

fn brand_words() -> [u32; 12] {
    let mut bytes = [0u8; 48];
    bytes[..BRAND.len()].copy_from_slice(BRAND.as_bytes());
    let mut w = [0u32; 12];
    for (i, v) in w.iter_mut().enumerate() {
        *v = word(&bytes[4 * i..4 * i + 4]);
    }
    w
}

/// IA32_APIC_BASE.EN: the local APIC is enabled (SDM vol 3 11.4.4).
const APIC_BASE_EN: u64 = 1 << 11;

/// The bits of an answer that mirror the processor's state, over whatever answer it
/// comes from (the processor's own or one the VMM registered), as KVM's
/// `kvm_update_cpuid_runtime` forces them: CPUID.1:ECX.OSXSAVE is CR4.OSXSAVE (SDM vol 2
/// CPUID, "OSXSAVE"), and CPUID.1:EDX.APIC is clear while IA32_APIC_BASE.EN is 0 (SDM
/// vol 3 11.4.3: with the APIC globally disabled the processor is one without it, and
/// the CPUID feature flag for the APIC reads 0); CPUID.(EAX=07H,ECX=0):ECX.OSPKE is
/// CR4.PKE (SDM vol 2 CPUID, "OSPKE").
pub fn with_state(leaf: u32, subleaf: u32, cpu: &Cpu, r: [u32; 4]) -> [u32; 4] {
    if leaf == 7 && subleaf == 0 {
        let [a, b, c, d] = r;
        let c = if cpu.cr4 & CR4_PKE != 0 {
            c | bits::OSPKE
        } else {
            c & !bits::OSPKE
        };
        return [a, b, c, d];
    }
    if leaf != 1 {
        return r;
    }
    let [a, b, c, d] = r;
    let c = if cpu.cr4 & CR4_OSXSAVE != 0 {
        c | bits::OSXSAVE
    } else {
        c & !bits::OSXSAVE
    };
    let d = if cpu.apic_base & APIC_BASE_EN != 0 {
        d
    } else {
        d & !bits::APIC
    };
    [a, b, c, d]
}

/// `[eax, ebx, ecx, edx]` of `leaf`/`subleaf` for the processor with local APIC id
/// `apic_id` in state `cpu` (OSXSAVE and APIC follow it: [`with_state`]).
pub fn native(leaf: u32, subleaf: u32, apic_id: u32, cpu: &Cpu) -> [u32; 4] {
    use bits::*;
    // Beyond the highest leaf, Intel processors answer the highest basic leaf.
    let leaf = if (leaf > MAX_BASIC && leaf < 0x8000_0000) || leaf > MAX_EXTENDED {
        MAX_BASIC
    } else {
        leaf
    };
    match leaf {
        0 => [MAX_BASIC, word(b"Genu"), word(b"ntel"), word(b"ineI")],
        1 => {
            let ecx = CX16 | X2APIC | MOVBE | POPCNT | TSC_DEADLINE | HYPERVISOR;
            let edx = FPU
                | PSE
                | TSC
                | MSR
                | PAE
                | MCE
                | CX8
                | APIC
                | SEP
                | MTRR
                | PGE
                | MCA
                | CMOV
                | PAT
                | PSE36
                | CLFSH
                | MMX
                | FXSR
                | SSE
                | SSE2;
            // CLFLUSH line 8 * 8 bytes, one logical processor, the initial APIC id.
            let ebx = (8 << 8) | (1 << 16) | (apic_id & 0xff) << 24;
            with_state(leaf, subleaf, cpu, [SIGNATURE, ebx, ecx, edx])
        }
        6 => [ARAT, 0, 0, 0],
        7 if subleaf == 0 => with_state(
            7,
            0,
            cpu,
            [0, FSGSBASE | SMEP | SMAP, PKU | PKS, ARCH_CAPABILITIES],
        ),
        // TSC / crystal = EBX / EAX, crystal in ECX (Hz).
        0x15 => [1, TSC_PER_CRYSTAL, CRYSTAL_HZ, 0],
        // Base and maximum frequency, and the bus (reference) clock, in MHz.
        0x16 => [TSC_MHZ, TSC_MHZ, CRYSTAL_HZ / 1_000_000, 0],
        // Extended topology (SDM vol 2 CPUID leaf 0BH), as CPUID.1 has it: one thread
        // per core, one core per package, so no x2APIC ID bits below the package's
        // (EAX 0); level 0 SMT, level 1 core, then the invalid level type 0. EDX is
        // the x2APIC ID at every subleaf.
        0xb => {
            let (count, kind) = match subleaf {
                0 => (1, 1),
                1 => (1, 2),
                _ => (0, 0),
            };
            [0, count, kind << 8 | (subleaf & 0xff), apic_id]
        }
        0x8000_0000 => [MAX_EXTENDED, 0, 0, 0],
        0x8000_0001 => [
            0,
            0,
            LAHF_LM | ABM | PREFETCHW,
            SYSCALL | NX | PAGE1GB | RDTSCP | LM,
        ],
        0x8000_0002..=0x8000_0004 => {
            let w = brand_words();
            let i = (leaf - 0x8000_0002) as usize * 4;
            [w[i], w[i + 1], w[i + 2], w[i + 3]]
        }
        // Linear and physical address widths.
        0x8000_0008 => [
            (crate::paging::LINEAR_BITS << 8) | crate::paging::MAXPHYADDR,
            0,
            0,
            0,
        ],
        _ => [0; 4],
    }
}
