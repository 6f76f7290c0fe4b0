//! Register ids (`hv_register_name`) and where each register lives.
//!
//! [`REGISTERS`] is the single table TypeScript builds its register cache from: the id,
//! the value's shape, the group fetched together by one batched hypercall, and, for
//! registers the register page carries, the page offset and dirty class.

use crate::page;
use mshv_bindings::*;

/// A raw `hv_register_value`: 16 bytes as two little-endian u64 halves.
pub type RegisterValue = [u64; 2];
/// Bytes of one register value.
pub const REGISTER_VALUE_SIZE: usize = 16;

/// How the 16 bytes of a register value are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterKind {
    /// A u64 in the low half.
    U64,
    /// A full 128-bit value (XMM).
    U128,
    /// `hv_x64_segment_register`: base u64; limit u32, selector u16, attributes u16.
    Segment,
    /// `hv_x64_table_register`: pad [u16; 3], limit u16; base u64.
    Table,
}

/// Groups fetched together by one batched get-register hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterGroup {
    /// GP registers, rip, rflags.
    General,
    /// Segment registers es..gs.
    Segment,
    /// cr0, cr3, cr4, cr8, efer (on the page, read-only there).
    Control,
    /// Registers that only hypercalls reach: TR, LDTR, GDTR, IDTR, CR2, APIC_BASE, ...
    System,
    /// dr0..dr7.
    Debug,
    /// xmm0..xmm15.
    Xmm,
    /// The x87/MMX registers and the FPU and SSE control and status registers.
    Fp,
    /// MSRs.
    Msr,
    /// Events waiting for the next resume (exception injection).
    Events,
}

/// Where a register sits on the register page, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSlot {
    pub offset: usize,
    /// The dirty class bit to set when writing through the page; `None` = read-only.
    pub dirty: Option<u32>,
}

/// One row of the register table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterInfo {
    pub name: &'static str,
    pub id: u32,
    pub kind: RegisterKind,
    pub group: RegisterGroup,
    pub page: Option<PageSlot>,
}

const fn gp(name: &'static str, id: u32, index: usize) -> RegisterInfo {
    RegisterInfo {
        name,
        id,
        kind: RegisterKind::U64,
        group: RegisterGroup::General,
        page: Some(PageSlot {
            offset: page::GP_REGISTERS + index * 8,
            dirty: Some(page::DIRTY_GENERAL),
        }),
    }
}

const fn seg(name: &'static str, id: u32, index: usize) -> RegisterInfo {
    RegisterInfo {
        name,
        id,
        kind: RegisterKind::Segment,
        group: RegisterGroup::Segment,
        page: Some(PageSlot {
            offset: page::SEGMENTS + index * page::SEGMENT_SIZE,
            dirty: Some(page::DIRTY_SEGMENT),
        }),
    }
}

const fn ctl(name: &'static str, id: u32, offset: usize) -> RegisterInfo {
    RegisterInfo {
        name,
        id,
        kind: RegisterKind::U64,
        group: RegisterGroup::Control,
        page: Some(PageSlot {
            offset,
            dirty: None,
        }),
    }
}

const fn off_page(
    name: &'static str,
    id: u32,
    kind: RegisterKind,
    group: RegisterGroup,
) -> RegisterInfo {
    RegisterInfo {
        name,
        id,
        kind,
        group,
        page: None,
    }
}

const fn xmm(name: &'static str, index: u32) -> RegisterInfo {
    let on_page = (index as usize) < page::XMM_COUNT;
    RegisterInfo {
        name,
        id: hv_register_name_HV_X64_REGISTER_XMM0 + index,
        kind: RegisterKind::U128,
        group: RegisterGroup::Xmm,
        page: if on_page {
            Some(PageSlot {
                offset: page::XMM + index as usize * page::XMM_SIZE,
                dirty: Some(page::DIRTY_XMM),
            })
        } else {
            None
        },
    }
}

use RegisterGroup as G;
use RegisterKind as K;

/// Every register the API exposes.
pub const REGISTERS: &[RegisterInfo] = &[
    gp("rax", hv_register_name_HV_X64_REGISTER_RAX, 0),
    gp("rcx", hv_register_name_HV_X64_REGISTER_RCX, 1),
    gp("rdx", hv_register_name_HV_X64_REGISTER_RDX, 2),
    gp("rbx", hv_register_name_HV_X64_REGISTER_RBX, 3),
    gp("rsp", hv_register_name_HV_X64_REGISTER_RSP, 4),
    gp("rbp", hv_register_name_HV_X64_REGISTER_RBP, 5),
    gp("rsi", hv_register_name_HV_X64_REGISTER_RSI, 6),
    gp("rdi", hv_register_name_HV_X64_REGISTER_RDI, 7),
    gp("r8", hv_register_name_HV_X64_REGISTER_R8, 8),
    gp("r9", hv_register_name_HV_X64_REGISTER_R9, 9),
    gp("r10", hv_register_name_HV_X64_REGISTER_R10, 10),
    gp("r11", hv_register_name_HV_X64_REGISTER_R11, 11),
    gp("r12", hv_register_name_HV_X64_REGISTER_R12, 12),
    gp("r13", hv_register_name_HV_X64_REGISTER_R13, 13),
    gp("r14", hv_register_name_HV_X64_REGISTER_R14, 14),
    gp("r15", hv_register_name_HV_X64_REGISTER_R15, 15),
    RegisterInfo {
        name: "rip",
        id: hv_register_name_HV_X64_REGISTER_RIP,
        kind: K::U64,
        group: G::General,
        page: Some(PageSlot {
            offset: page::RIP,
            dirty: Some(page::DIRTY_IP),
        }),
    },
    RegisterInfo {
        name: "rflags",
        id: hv_register_name_HV_X64_REGISTER_RFLAGS,
        kind: K::U64,
        group: G::General,
        page: Some(PageSlot {
            offset: page::RFLAGS,
            dirty: Some(page::DIRTY_FLAGS),
        }),
    },
    seg("es", hv_register_name_HV_X64_REGISTER_ES, 0),
    seg("cs", hv_register_name_HV_X64_REGISTER_CS, 1),
    seg("ss", hv_register_name_HV_X64_REGISTER_SS, 2),
    seg("ds", hv_register_name_HV_X64_REGISTER_DS, 3),
    seg("fs", hv_register_name_HV_X64_REGISTER_FS, 4),
    seg("gs", hv_register_name_HV_X64_REGISTER_GS, 5),
    ctl("cr0", hv_register_name_HV_X64_REGISTER_CR0, page::CR0),
    ctl("cr3", hv_register_name_HV_X64_REGISTER_CR3, page::CR3),
    ctl("cr4", hv_register_name_HV_X64_REGISTER_CR4, page::CR4),
    ctl("cr8", hv_register_name_HV_X64_REGISTER_CR8, page::CR8),
    ctl("efer", hv_register_name_HV_X64_REGISTER_EFER, page::EFER),
    off_page(
        "cr2",
        hv_register_name_HV_X64_REGISTER_CR2,
        K::U64,
        G::System,
    ),
    off_page(
        "tr",
        hv_register_name_HV_X64_REGISTER_TR,
        K::Segment,
        G::System,
    ),
    off_page(
        "ldtr",
        hv_register_name_HV_X64_REGISTER_LDTR,
        K::Segment,
        G::System,
    ),
    off_page(
        "gdtr",
        hv_register_name_HV_X64_REGISTER_GDTR,
        K::Table,
        G::System,
    ),
    off_page(
        "idtr",
        hv_register_name_HV_X64_REGISTER_IDTR,
        K::Table,
        G::System,
    ),
    off_page(
        "apicBase",
        hv_register_name_HV_X64_REGISTER_APIC_BASE,
        K::U64,
        G::System,
    ),
    off_page(
        "dr0",
        hv_register_name_HV_X64_REGISTER_DR0,
        K::U64,
        G::Debug,
    ),
    off_page(
        "dr1",
        hv_register_name_HV_X64_REGISTER_DR1,
        K::U64,
        G::Debug,
    ),
    off_page(
        "dr2",
        hv_register_name_HV_X64_REGISTER_DR2,
        K::U64,
        G::Debug,
    ),
    off_page(
        "dr3",
        hv_register_name_HV_X64_REGISTER_DR3,
        K::U64,
        G::Debug,
    ),
    off_page(
        "dr6",
        hv_register_name_HV_X64_REGISTER_DR6,
        K::U64,
        G::Debug,
    ),
    // DR7 is on the page read-only; writes need a hypercall, so it lives with the debug group.
    RegisterInfo {
        name: "dr7",
        id: hv_register_name_HV_X64_REGISTER_DR7,
        kind: K::U64,
        group: G::Debug,
        page: Some(PageSlot {
            offset: page::DR7,
            dirty: None,
        }),
    },
    xmm("xmm0", 0),
    xmm("xmm1", 1),
    xmm("xmm2", 2),
    xmm("xmm3", 3),
    xmm("xmm4", 4),
    xmm("xmm5", 5),
    xmm("xmm6", 6),
    xmm("xmm7", 7),
    xmm("xmm8", 8),
    xmm("xmm9", 9),
    xmm("xmm10", 10),
    xmm("xmm11", 11),
    xmm("xmm12", 12),
    xmm("xmm13", 13),
    xmm("xmm14", 14),
    xmm("xmm15", 15),
    // ST(0)..ST(7) (80 bits in 128), FCW/FSW/tags/FOP/FIP and FDP/MXCSR, laid out as
    // FXSAVE bytes 0-31 (`hv_x64_fp_control_status_register`, `..._xmm_control_...`).
    off_page(
        "fpMmx0",
        hv_register_name_HV_X64_REGISTER_FP_MMX0,
        K::U128,
        G::Fp,
    ),
    off_page(
        "fpMmx1",
        hv_register_name_HV_X64_REGISTER_FP_MMX1,
        K::U128,
        G::Fp,
    ),
    off_page(
        "fpMmx2",
        hv_register_name_HV_X64_REGISTER_FP_MMX2,
        K::U128,
        G::Fp,
    ),
    off_page(
        "fpMmx3",
        hv_register_name_HV_X64_REGISTER_FP_MMX3,
        K::U128,
        G::Fp,
    ),
    off_page(
        "fpMmx4",
        hv_register_name_HV_X64_REGISTER_FP_MMX4,
        K::U128,
        G::Fp,
    ),
    off_page(
        "fpMmx5",
        hv_register_name_HV_X64_REGISTER_FP_MMX5,
        K::U128,
        G::Fp,
    ),
    off_page(
        "fpMmx6",
        hv_register_name_HV_X64_REGISTER_FP_MMX6,
        K::U128,
        G::Fp,
    ),
    off_page(
        "fpMmx7",
        hv_register_name_HV_X64_REGISTER_FP_MMX7,
        K::U128,
        G::Fp,
    ),
    off_page(
        "fpControlStatus",
        hv_register_name_HV_X64_REGISTER_FP_CONTROL_STATUS,
        K::U128,
        G::Fp,
    ),
    off_page(
        "xmmControlStatus",
        hv_register_name_HV_X64_REGISTER_XMM_CONTROL_STATUS,
        K::U128,
        G::Fp,
    ),
    off_page("tsc", hv_register_name_HV_X64_REGISTER_TSC, K::U64, G::Msr),
    // Written to inject an exception at the next resume; see `event::PendingException`.
    off_page(
        "pendingEvent0",
        hv_register_name_HV_REGISTER_PENDING_EVENT0,
        K::U128,
        G::Events,
    ),
    // Bit 0 startup suspend (waiting for SIPI), bit 1 halt suspend (OpenVMM hvdef's
    // `HvInternalActivityRegister`); OpenHCL's `set_vtl0_startup_suspend` holds an AP
    // in startup suspend with it until the guest's INIT/SIPI.
    off_page(
        "internalActivityState",
        hv_register_name_HV_REGISTER_INTERNAL_ACTIVITY_STATE,
        K::U64,
        G::Events,
    ),
    // Bit 0: interrupts held off for one instruction (after STI, MOV SS); bit 1: NMIs
    // blocked until IRET (`hv_x64_interrupt_state_register`, hvgdk_mini.h).
    off_page(
        "interruptState",
        hv_register_name_HV_REGISTER_INTERRUPT_STATE,
        K::U64,
        G::Events,
    ),
    // XCR0, which MSHV calls the XSAVE feature enabled mask.
    off_page(
        "xfem",
        hv_register_name_HV_X64_REGISTER_XFEM,
        K::U64,
        G::System,
    ),
    off_page(
        "kernelGsBase",
        hv_register_name_HV_X64_REGISTER_KERNEL_GS_BASE,
        K::U64,
        G::Msr,
    ),
    off_page("pat", hv_register_name_HV_X64_REGISTER_PAT, K::U64, G::Msr),
    off_page(
        "sysenterCs",
        hv_register_name_HV_X64_REGISTER_SYSENTER_CS,
        K::U64,
        G::Msr,
    ),
    off_page(
        "sysenterEip",
        hv_register_name_HV_X64_REGISTER_SYSENTER_EIP,
        K::U64,
        G::Msr,
    ),
    off_page(
        "sysenterEsp",
        hv_register_name_HV_X64_REGISTER_SYSENTER_ESP,
        K::U64,
        G::Msr,
    ),
    off_page(
        "star",
        hv_register_name_HV_X64_REGISTER_STAR,
        K::U64,
        G::Msr,
    ),
    off_page(
        "lstar",
        hv_register_name_HV_X64_REGISTER_LSTAR,
        K::U64,
        G::Msr,
    ),
    off_page(
        "cstar",
        hv_register_name_HV_X64_REGISTER_CSTAR,
        K::U64,
        G::Msr,
    ),
    off_page(
        "sfmask",
        hv_register_name_HV_X64_REGISTER_SFMASK,
        K::U64,
        G::Msr,
    ),
    off_page(
        "tscAux",
        hv_register_name_HV_X64_REGISTER_TSC_AUX,
        K::U64,
        G::Msr,
    ),
];

/// Looks up a register by id.
pub fn info(id: u32) -> Option<&'static RegisterInfo> {
    REGISTERS.iter().find(|r| r.id == id)
}

/// Looks up a register by name.
pub fn by_name(name: &str) -> Option<&'static RegisterInfo> {
    REGISTERS.iter().find(|r| r.name == name)
}

/// Packs a segment register into a raw register value.
pub fn pack_segment(base: u64, limit: u32, selector: u16, attributes: u16) -> RegisterValue {
    [
        base,
        limit as u64 | (selector as u64) << 32 | (attributes as u64) << 48,
    ]
}

/// Unpacks a raw register value into (base, limit, selector, attributes).
pub fn unpack_segment(v: RegisterValue) -> (u64, u32, u16, u16) {
    (v[0], v[1] as u32, (v[1] >> 32) as u16, (v[1] >> 48) as u16)
}

/// Packs a table register (GDTR/IDTR) into a raw register value.
pub fn pack_table(base: u64, limit: u16) -> RegisterValue {
    [(limit as u64) << 48, base]
}

/// Unpacks a table register into (base, limit).
pub fn unpack_table(v: RegisterValue) -> (u64, u16) {
    (v[1], (v[0] >> 48) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_and_names_are_unique() {
        let ids: HashSet<u32> = REGISTERS.iter().map(|r| r.id).collect();
        let names: HashSet<&str> = REGISTERS.iter().map(|r| r.name).collect();
        assert_eq!(ids.len(), REGISTERS.len());
        assert_eq!(names.len(), REGISTERS.len());
    }

    #[test]
    fn segment_packing_matches_the_binding_layout() {
        let v = pack_segment(0x1234_5678_9abc, 0xffff, 0x10, 0xa09b);
        let mut raw = hv_register_value {
            reg128: hv_u128 {
                low_part: v[0],
                high_part: v[1],
            },
        };
        // SAFETY: reading the union as the segment variant; every bit pattern is valid.
        let s = unsafe { raw.segment };
        assert_eq!({ s.base }, 0x1234_5678_9abc);
        assert_eq!({ s.limit }, 0xffff);
        assert_eq!({ s.selector }, 0x10);
        // SAFETY: attributes is a plain u16 view of the union.
        assert_eq!(unsafe { s.__bindgen_anon_1.attributes }, 0xa09b);
        assert_eq!(unpack_segment(v), (0x1234_5678_9abc, 0xffff, 0x10, 0xa09b));
        raw.table = hv_x64_table_register {
            pad: [0; 3],
            limit: 0x27,
            base: 0x5000,
        };
        // SAFETY: reading the u128 view of a fully initialized union.
        let r = unsafe { raw.reg128 };
        assert_eq!(unpack_table([r.low_part, r.high_part]), (0x5000, 0x27));
    }

    #[test]
    fn page_slots_lie_inside_the_page() {
        for r in REGISTERS {
            if let Some(slot) = r.page {
                assert!(slot.offset + 16 <= page::PAGE_SIZE, "{}", r.name);
            }
        }
    }
}
