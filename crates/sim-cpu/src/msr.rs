//! The MSRs this processor implements (SDM vol 4 lists them), with the #GP(0) checks
//! of their reserved bits and values. Any other MSR is the hypervisor's to decide
//! (fault, ignore, or exit to the VMM).

use crate::exec::Exec;
use crate::paging::{canonical, MAXPHYADDR};
use crate::state::*;

pub const TSC: u32 = 0x10;
pub const APIC_BASE: u32 = 0x1b;
pub const BIOS_SIGN_ID: u32 = 0x8b;
pub const MTRRCAP: u32 = 0xfe;
pub const MCG_CAP: u32 = 0x179;
/// IA32_ARCH_CAPABILITIES (SDM vol 4 2.1, table 2-2), read-only.
pub const ARCH_CAPABILITIES: u32 = 0x10a;

/// IA32_ARCH_CAPABILITIES: the processor is not susceptible to the attacks on
/// speculative execution and on buffers the SDM enumerates there, since it has
/// neither: it executes one instruction at a time, each to its end, with no cache,
/// fill, store or load buffer another access could sample. The bits (SDM vol 4 table
/// 2-2; Linux's `msr-index.h` names them): RDCL_NO (0, rogue data cache load:
/// Meltdown), SSB_NO (4), MDS_NO (5), IF_PSCHANGE_MC_NO (6), TAA_NO (8), SBDR_SSDP_NO
/// (13), FBSDP_NO (14), PSDP_NO (15; the three MMIO stale-data ones), BHI_NO (20),
/// PBRSB_NO (24), GDS_NO (26), RFDS_NO (27), ITS_NO (62). None of the bits that
/// enumerate a control or a mitigation feature (IBRS_ALL, TSX_CTRL, FB_CLEAR, ...)
/// is set. With them Linux turns off what it would do for an Ice Lake server
/// (family 6 model 0x6A, [`crate::cpuid::SIGNATURE`]) without them, as for one whose
/// microcode sets them: page-table isolation above all, which writes CR3 on every
/// entry to the kernel and maps the kernel's code with translations that are not
/// global.
pub const NOT_SUSCEPTIBLE: u64 = 1 << 0
    | 1 << 4
    | 1 << 5
    | 1 << 6
    | 1 << 8
    | 1 << 13
    | 1 << 14
    | 1 << 15
    | 1 << 20
    | 1 << 24
    | 1 << 26
    | 1 << 27
    | 1 << 62;
pub const MCG_STATUS: u32 = 0x17a;
pub const MCG_CTL: u32 = 0x17b;
pub const SYSENTER_CS: u32 = 0x174;
pub const SYSENTER_ESP: u32 = 0x175;
pub const SYSENTER_EIP: u32 = 0x176;
pub const MISC_ENABLE: u32 = 0x1a0;
pub const MTRR_PHYS_FIRST: u32 = 0x200;
pub const MTRR_FIX_64K: u32 = 0x250;
pub const MTRR_FIX_16K: u32 = 0x258;
pub const MTRR_FIX_4K_FIRST: u32 = 0x268;
pub const PAT: u32 = 0x277;
pub const MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_PKRS: the supervisor protection keys' rights (SDM vol 3 4.6.2, vol 4 2.1).
pub const PKRS: u32 = 0x6e1;
pub const EFER: u32 = 0xc000_0080;
pub const STAR: u32 = 0xc000_0081;
pub const LSTAR: u32 = 0xc000_0082;
pub const CSTAR: u32 = 0xc000_0083;
pub const SFMASK: u32 = 0xc000_0084;
pub const FS_BASE: u32 = 0xc000_0100;
pub const GS_BASE: u32 = 0xc000_0101;
pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const TSC_AUX: u32 = 0xc000_0103;

/// Variable MTRR pairs (MTRRCAP.VCNT).
const VARIABLE_MTRRS: u32 = 8;

/// IA32_MCG_STATUS's bits: RIPV, EIPV, MCIP; LMCE_S (bit 3) needs MCG_CAP.MCG_LMCE_P,
/// which is clear (SDM vol 3 16.3.1.2).
const MCG_STATUS_BITS: u64 = 0b111;

/// IA32_APIC_BASE (SDM vol 3 11.4.4, 11.12.1): BSP (read-only), EXTD, EN.
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;

/// MSRs of machine-check features this processor lacks, which #GP(0) whatever the
/// hypervisor does with MSRs it does not know: it has the machine-check architecture
/// with no banks (IA32_MCG_CAP = 0, SDM vol 3 16.3.1.1), so no IA32_MCG_CTL (that needs
/// MCG_CTL_P), no IA32_MCi_CTL/STATUS/ADDR/MISC (0x400 + 4i, i < 32, up to where the
/// VMX MSRs begin at 0x480) and no IA32_MCi_CTL2 (0x280 + i, with CMCI, MCG_CMCI_P).
pub fn absent(msr: u32) -> bool {
    matches!(msr, MCG_CTL | 0x280..=0x29f | 0x400..=0x47f)
}

/// The x2APIC MSRs (SDM vol 3 11.12.1.2): the local APIC's registers in x2APIC mode,
/// #GP(0) in any other.
pub const X2APIC_FIRST: u32 = 0x800;
pub const X2APIC_LAST: u32 = 0x8ff;

/// Whether IA32_APIC_BASE `base` has the local APIC in x2APIC mode (EN and EXTD).
pub fn x2apic_mode(base: u64) -> bool {
    base & (APIC_BASE_EN | APIC_BASE_EXTD) == APIC_BASE_EN | APIC_BASE_EXTD
}

/// Whether IA32_APIC_BASE may go from `old` to `new` by WRMSR (SDM vol 3 11.12.5,
/// Figure 11-29): EXTD without EN is invalid; x2APIC mode goes back to xAPIC mode only
/// through disabled, and disabled goes to xAPIC mode only. KVM's `kvm_apic_set_base`
/// refuses the same.
fn apic_base_transition(old: u64, new: u64) -> bool {
    let mode = |v: u64| v & (APIC_BASE_EN | APIC_BASE_EXTD);
    let (x2apic, xapic, disabled) = (APIC_BASE_EN | APIC_BASE_EXTD, APIC_BASE_EN, 0);
    match (mode(old), mode(new)) {
        (_, APIC_BASE_EXTD) => false,
        (o, n) if o == x2apic && n == xapic => false,
        (o, n) if o == disabled && n == x2apic => false,
        _ => true,
    }
}

/// The value of an implemented MSR; `None` for one this processor does not have.
pub fn read(cpu: &Cpu, msr: u32) -> Option<u64> {
    Some(match msr {
        TSC => cpu.tsc,
        APIC_BASE => cpu.apic_base,
        BIOS_SIGN_ID => 0,
        // VCNT = 8, fixed-range MTRRs, write-combining.
        MTRRCAP => VARIABLE_MTRRS as u64 | 1 << 8 | 1 << 10,
        // No banks, no MCG_CTL, no extensions (SDM vol 3 16.3.1.1).
        MCG_CAP => 0,
        ARCH_CAPABILITIES => NOT_SUSCEPTIBLE,
        MCG_STATUS => cpu.msr.mcg_status,
        SYSENTER_CS => cpu.msr.sysenter_cs,
        SYSENTER_ESP => cpu.msr.sysenter_esp,
        SYSENTER_EIP => cpu.msr.sysenter_eip,
        MISC_ENABLE => cpu.msr.misc_enable,
        m if (MTRR_PHYS_FIRST..MTRR_PHYS_FIRST + 2 * VARIABLE_MTRRS).contains(&m) => {
            cpu.msr.mtrr_var[(m - MTRR_PHYS_FIRST) as usize]
        }
        MTRR_FIX_64K => cpu.msr.mtrr_fixed[0],
        MTRR_FIX_16K => cpu.msr.mtrr_fixed[1],
        0x259 => cpu.msr.mtrr_fixed[2],
        m if (MTRR_FIX_4K_FIRST..MTRR_FIX_4K_FIRST + 8).contains(&m) => {
            cpu.msr.mtrr_fixed[3 + (m - MTRR_FIX_4K_FIRST) as usize]
        }
        PAT => cpu.msr.pat,
        MTRR_DEF_TYPE => cpu.msr.mtrr_def_type,
        PKRS => cpu.msr.pkrs,
        EFER => cpu.efer,
        STAR => cpu.msr.star,
        LSTAR => cpu.msr.lstar,
        CSTAR => cpu.msr.cstar,
        SFMASK => cpu.msr.sfmask,
        FS_BASE => cpu.seg[FS].base,
        GS_BASE => cpu.seg[GS].base,
        KERNEL_GS_BASE => cpu.msr.kernel_gs_base,
        TSC_AUX => cpu.msr.tsc_aux,
        _ => return None,
    })
}

/// What a WRMSR did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The value is not allowed: #GP(0).
    Refused,
    /// The processor has no such MSR.
    Unknown,
}

/// A PAT or MTRR memory type: 0, 1, 4, 5, 6 (and 7 for PAT) are defined.
fn valid_type(t: u64, pat: bool) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6) || pat && t == 7
}

/// Writes an implemented MSR with its checks; mode changes flush what depends on them.
pub fn write(x: &mut Exec, msr: u32, v: u64) -> Written {
    let phys_mask = !((1u64 << MAXPHYADDR) - 1);
    let cpu = &mut *x.cpu;
    match msr {
        TSC => cpu.tsc = v,
        APIC_BASE => {
            // Bits 0-7, 9 and above MAXPHYADDR reserved; EXTD (bit 10) too without
            // x2APIC support, CPUID.1:ECX.x2APIC as the hypervisor answers it (SDM vol 3
            // 11.12.1); and only the transitions of 11.12.5.
            let native = crate::cpuid::native(1, 0, x.env.apic_id(), cpu);
            let [_, _, ecx, _] = x.env.cpuid(1, 0, native);
            let extd = if ecx & crate::cpuid::bits::X2APIC != 0 {
                0
            } else {
                APIC_BASE_EXTD
            };
            if v & (0xff | 1 << 9 | extd | phys_mask) != 0
                || !apic_base_transition(cpu.apic_base, v)
            {
                return Written::Refused;
            }
            let old = cpu.apic_base;
            cpu.apic_base = (v & !APIC_BASE_BSP) | (old & APIC_BASE_BSP);
            x.env.apic_base_written(old, cpu.apic_base);
        }
        BIOS_SIGN_ID => {}
        // MCG_CAP is read-only.
        MCG_CAP | ARCH_CAPABILITIES => return Written::Refused,
        // Software may write MCG_STATUS; reserved bits are #GP(0) (SDM vol 3 16.3.1.2).
        MCG_STATUS if v & !MCG_STATUS_BITS != 0 => return Written::Refused,
        MCG_STATUS => cpu.msr.mcg_status = v,
        m if absent(m) => return Written::Refused,
        SYSENTER_CS => cpu.msr.sysenter_cs = v & 0xffff,
        SYSENTER_ESP | SYSENTER_EIP if !canonical(v) => return Written::Refused,
        SYSENTER_ESP => cpu.msr.sysenter_esp = v,
        SYSENTER_EIP => cpu.msr.sysenter_eip = v,
        MISC_ENABLE => cpu.msr.misc_enable = v,
        m if (MTRR_PHYS_FIRST..MTRR_PHYS_FIRST + 2 * VARIABLE_MTRRS).contains(&m) => {
            let base = (m - MTRR_PHYS_FIRST).is_multiple_of(2);
            let rsvd = if base {
                0xf00 | phys_mask
            } else {
                0x7ff | phys_mask
            };
            if v & rsvd != 0 || base && !valid_type(v & 0xff, false) {
                return Written::Refused;
            }
            cpu.msr.mtrr_var[(m - MTRR_PHYS_FIRST) as usize] = v;
        }
        MTRR_FIX_64K | MTRR_FIX_16K | 0x259 | 0x268..=0x26f => {
            if (0..8).any(|i| !valid_type((v >> (8 * i)) & 0xff, false)) {
                return Written::Refused;
            }
            let i = match msr {
                MTRR_FIX_64K => 0,
                MTRR_FIX_16K => 1,
                0x259 => 2,
                m => 3 + (m - MTRR_FIX_4K_FIRST) as usize,
            };
            cpu.msr.mtrr_fixed[i] = v;
        }
        PAT => {
            if (0..8).any(|i| !valid_type((v >> (8 * i)) & 0xff, true)) {
                return Written::Refused;
            }
            cpu.msr.pat = v;
        }
        MTRR_DEF_TYPE => {
            if v & !0xcff != 0 || !valid_type(v & 0xff, false) {
                return Written::Refused;
            }
            cpu.msr.mtrr_def_type = v;
        }
        // Bits 63:32 are reserved (SDM vol 3 4.6.2). Not serializing, and no TLB
        // invalidation: the new rights rule the next access (`Tlb::rekey`).
        PKRS if v >> 32 != 0 => return Written::Refused,
        PKRS => {
            cpu.msr.pkrs = v;
            let keys = x.keys();
            x.tlb.rekey(keys);
        }
        EFER => {
            // SCE, LME, LMA (read-only), NXE; changing LME with paging on is #GP(0).
            if v & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0 {
                return Written::Refused;
            }
            if cpu.paging() && (v ^ cpu.efer) & EFER_LME != 0 {
                return Written::Refused;
            }
            cpu.efer = (v & !EFER_LMA) | (cpu.efer & EFER_LMA);
            cpu.update_lma();
            x.tlb.flush();
            x.end_block = true;
        }
        STAR => cpu.msr.star = v,
        LSTAR | CSTAR | FS_BASE | GS_BASE | KERNEL_GS_BASE if !canonical(v) => {
            return Written::Refused
        }
        LSTAR => cpu.msr.lstar = v,
        CSTAR => cpu.msr.cstar = v,
        SFMASK => cpu.msr.sfmask = v & 0xffff_ffff,
        FS_BASE => cpu.seg[FS].base = v,
        GS_BASE => cpu.seg[GS].base = v,
        KERNEL_GS_BASE => cpu.msr.kernel_gs_base = v,
        TSC_AUX => {
            if v >> 32 != 0 {
                return Written::Refused;
            }
            cpu.msr.tsc_aux = v;
        }
        _ => return Written::Unknown,
    }
    Written::Done
}
