//! Architectural state of one simulated vCPU.

use std::collections::HashMap;

/// A segment register with its hidden part, in `hv_x64_segment_register` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// type:4 s:1 dpl:2 p:1 reserved:4 avl:1 l:1 db:1 g:1
    pub attributes: u16,
}

impl Segment {
    pub fn long(&self) -> bool {
        self.attributes & (1 << 13) != 0
    }
    pub fn default_big(&self) -> bool {
        self.attributes & (1 << 14) != 0
    }
    /// A real-mode segment for `selector`.
    pub fn real(selector: u16, attributes: u16) -> Self {
        Segment {
            base: (selector as u64) << 4,
            limit: 0xffff,
            selector,
            attributes,
        }
    }
}

/// Indices into [`Cpu::seg`], in `hv_register_name` / register page order.
pub const ES: usize = 0;
pub const CS: usize = 1;
pub const SS: usize = 2;
pub const DS: usize = 3;
pub const FS: usize = 4;
pub const GS: usize = 5;

/// GDTR / IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Table {
    pub base: u64,
    pub limit: u16,
}

pub const CR0_PE: u64 = 1;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// The whole register state of a vCPU.
#[derive(Debug, Clone)]
pub struct Cpu {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub seg: [Segment; 6],
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: Table,
    pub idtr: Table,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub dr: [u64; 8],
    pub xmm: [u128; 16],
    pub apic_base: u64,
    /// `HV_REGISTER_PENDING_EVENT0`: an event to deliver at the next resume.
    pub pending_event: [u64; 2],
    pub tsc: u64,
    /// Model-specific registers without a dedicated field (STAR, LSTAR, PAT, ...).
    pub msrs: HashMap<u32, u64>,
    /// Set by HLT until the next run.
    pub halted: bool,
}

impl Cpu {
    /// The architectural state after RESET/INIT (SDM vol. 3, table 10-1).
    pub fn reset(index: u32) -> Self {
        let data = Segment::real(0, 0x93);
        let mut cs = Segment::real(0xf000, 0x9b);
        cs.base = 0xffff_0000;
        let mut gpr = [0u64; 16];
        gpr[2] = 0x600; // EDX: family/model/stepping
        Cpu {
            gpr,
            rip: 0xfff0,
            rflags: 2,
            seg: [data, cs, data, data, data, data],
            tr: Segment {
                attributes: 0x8b,
                limit: 0xffff,
                ..Segment::default()
            },
            ldtr: Segment {
                attributes: 0x82,
                limit: 0xffff,
                ..Segment::default()
            },
            gdtr: Table {
                base: 0,
                limit: 0xffff,
            },
            idtr: Table {
                base: 0,
                limit: 0xffff,
            },
            cr0: 0x6000_0010,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            xmm: [0; 16],
            pending_event: [0; 2],
            apic_base: 0xfee0_0000 | if index == 0 { 0x900 } else { 0x800 },
            tsc: 0,
            msrs: HashMap::new(),
            halted: false,
        }
    }

    /// 16, 32 or 64: the default operand/address size of the code segment.
    #[inline]
    pub fn bitness(&self) -> u32 {
        let cs = &self.seg[CS];
        if self.efer & EFER_LMA != 0 && cs.long() {
            64
        } else if self.cr0 & CR0_PE != 0 && cs.default_big() {
            32
        } else if self.cr0 & CR0_PE == 0 && cs.default_big() {
            // Unreal-mode style big code segment: honour the D bit as hardware does.
            32
        } else {
            16
        }
    }

    pub fn long_mode_active(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    pub fn paging(&self) -> bool {
        self.cr0 & CR0_PG != 0 && self.cr0 & CR0_PE != 0
    }

    /// Recomputes EFER.LMA after a CR0 or EFER write.
    pub fn update_lma(&mut self) {
        if self.cr0 & CR0_PG != 0 && self.efer & EFER_LME != 0 && self.cr4 & CR4_PAE != 0 {
            self.efer |= EFER_LMA;
        } else {
            self.efer &= !EFER_LMA;
        }
    }

    /// Current privilege level.
    pub fn cpl(&self) -> u8 {
        if self.cr0 & CR0_PE == 0 {
            0
        } else {
            (self.seg[CS].selector & 3) as u8
        }
    }
}
