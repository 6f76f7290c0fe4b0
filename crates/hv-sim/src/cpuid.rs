//! The CPUID answers the sim gives when CPUID is not intercepted: a plain x86-64 CPU
//! advertising only what the interpreter implements.

/// `[eax, ebx, ecx, edx]` for `leaf`/`subleaf`.
pub fn default_result(leaf: u32, _subleaf: u32) -> [u32; 4] {
    const fn word(s: &[u8; 4]) -> u32 {
        u32::from_le_bytes(*s)
    }
    match leaf {
        // Max basic leaf 1, vendor "GenuineIntel".
        0 => [1, word(b"Genu"), word(b"ntel"), word(b"ineI")],
        // Family 6; PSE, TSC, MSR, PAE, CX8, APIC, PGE, CMOV, PAT; ECX bit 31: hypervisor.
        1 => [
            0x0006_06a0,
            0,
            1 << 31,
            (1 << 3)
                | (1 << 4)
                | (1 << 5)
                | (1 << 6)
                | (1 << 8)
                | (1 << 9)
                | (1 << 13)
                | (1 << 15)
                | (1 << 16),
        ],
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        // SYSCALL, NX, LM.
        0x8000_0001 => [0, 0, 0, (1 << 11) | (1 << 20) | (1 << 29)],
        // 48-bit virtual, 48-bit physical addresses.
        0x8000_0008 => [0x3030, 0, 0, 0],
        _ => [0; 4],
    }
}
