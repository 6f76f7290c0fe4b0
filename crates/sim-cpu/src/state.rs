//! Architectural state of one processor: registers, segment caches, control and system
//! registers, and the MSRs with storage.

use crate::flags::Flags;

/// A segment register with its hidden (descriptor cache) part, in
/// `hv_x64_segment_register` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub base: u64,
    /// Byte-granular limit (the descriptor's limit scaled by G).
    pub limit: u32,
    pub selector: u16,
    /// type:4 s:1 dpl:2 p:1 reserved:4 avl:1 l:1 db:1 g:1; 0 (not present) marks an
    /// unusable segment (a null selector loaded in protected mode).
    pub attributes: u16,
}

pub const ATTR_ACCESSED: u16 = 1;
pub const ATTR_S: u16 = 1 << 4;
pub const ATTR_P: u16 = 1 << 7;
pub const ATTR_L: u16 = 1 << 13;
pub const ATTR_DB: u16 = 1 << 14;
pub const ATTR_G: u16 = 1 << 15;

impl Segment {
    /// The L bit: a 64-bit code segment.
    #[inline]
    pub fn long(&self) -> bool {
        self.attributes & ATTR_L != 0
    }
    /// The D/B bit: 32-bit default size (code), 32-bit stack pointer and upper bound (data).
    #[inline]
    pub fn default_big(&self) -> bool {
        self.attributes & ATTR_DB != 0
    }
    #[inline]
    pub fn present(&self) -> bool {
        self.attributes & ATTR_P != 0
    }
    /// The descriptor type field (4 bits).
    #[inline]
    pub fn kind(&self) -> u16 {
        self.attributes & 0xf
    }
    /// A code or data (not system) descriptor.
    #[inline]
    pub fn is_code_or_data(&self) -> bool {
        self.attributes & ATTR_S != 0
    }
    #[inline]
    pub fn is_code(&self) -> bool {
        self.is_code_or_data() && self.attributes & 8 != 0
    }
    #[inline]
    pub fn dpl(&self) -> u8 {
        ((self.attributes >> 5) & 3) as u8
    }
    /// A real-mode (or V86) segment for `selector`: base = selector * 16.
    pub fn real(selector: u16, attributes: u16) -> Self {
        Segment {
            base: (selector as u64) << 4,
            limit: 0xffff,
            selector,
            attributes,
        }
    }
}

/// Indices into [`Cpu::seg`], in `hv_register_name` / register page order (and the
/// order of the segment-register encodings in ModRM).
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
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_EM: u64 = 1 << 2;
pub const CR0_TS: u64 = 1 << 3;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_AM: u64 = 1 << 18;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;

pub const CR4_VME: u64 = 1 << 0;
pub const CR4_PVI: u64 = 1 << 1;
pub const CR4_TSD: u64 = 1 << 2;
pub const CR4_DE: u64 = 1 << 3;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_MCE: u64 = 1 << 6;
pub const CR4_PGE: u64 = 1 << 7;
pub const CR4_PCE: u64 = 1 << 8;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const CR4_UMIP: u64 = 1 << 11;
pub const CR4_FSGSBASE: u64 = 1 << 16;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
/// Protection keys for user-mode pages (SDM vol 3 2.5, 4.6.2).
pub const CR4_PKE: u64 = 1 << 22;
/// Protection keys for supervisor-mode pages (SDM vol 3 2.5, 4.6.2).
pub const CR4_PKS: u64 = 1 << 24;

pub const EFER_SCE: u64 = 1;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// Event-blocking state after an instruction (SDM vol 3 6.8.3, "Masking Exceptions and
/// Interrupts When Switching Stacks", and STI's one-instruction window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shadow {
    /// Interrupts are held off for one instruction (after STI, MOV SS, POP SS).
    pub interrupts: bool,
    /// With `interrupts`: the blocking is MOV SS's or POP SS's, which holds off debug
    /// exceptions too (SDM vol 3 6.8.3): that instruction's single-step trap is
    /// suppressed, instruction breakpoints on the next one do not fire, and data
    /// breakpoints it hit (`pending_db`) are delivered after the next instruction.
    /// STI's blocking does not hold off #DB.
    pub mov_ss: bool,
    /// DR6.B0-B3 of data breakpoints the MOV SS or POP SS hit, owed after the next
    /// instruction (merged into its own #DB, or delivered at the first instruction of
    /// the handler an INT n or INT3 there enters).
    pub pending_db: u8,
}

impl Shadow {
    /// The blocking MOV SS and POP SS leave: interrupts and debug exceptions.
    pub const MOV_SS: Shadow = Shadow {
        interrupts: true,
        mov_ss: true,
        pending_db: 0,
    };

    /// Whether debug exceptions are held off at this instruction boundary.
    #[inline]
    pub fn blocks_debug(&self) -> bool {
        self.interrupts && self.mov_ss
    }
}

/// The MSRs that are plain storage here (their side effects, if any, are elsewhere).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Msrs {
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub tsc_aux: u64,
    /// IA32_PKRS (0x6E1): AD and WD of each supervisor protection key, in PKRU's
    /// layout; bits 63:32 reserved (SDM vol 3 4.6.2).
    pub pkrs: u64,
    pub pat: u64,
    pub misc_enable: u64,
    pub mtrr_def_type: u64,
    pub mtrr_fixed: [u64; 11],
    pub mtrr_var: [u64; 16],
    /// IA32_MCG_STATUS: RIPV, EIPV, MCIP (SDM vol 3 16.3.1.2).
    pub mcg_status: u64,
}

/// The whole register state of a processor.
#[derive(Debug, Clone)]
pub struct Cpu {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub flags: Flags,
    pub seg: [Segment; 6],
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: Table,
    pub idtr: Table,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    /// CR8 (the task-priority register's class bits) of a processor whose [`Env`]
    /// keeps no local APIC; with one, CR8 is its TPR ([`Env::read_cr8`]) and this is
    /// unused.
    ///
    /// [`Env`]: crate::Env
    /// [`Env::read_cr8`]: crate::Env::read_cr8
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    /// PKRU: for key i, bit 2i access-disable (ADi) and bit 2i+1 write-disable (WDi),
    /// which rule user-mode pages with that key while CR4.PKE is set (SDM vol 3 2.7,
    /// 4.6.2). RESET clears it.
    pub pkru: u32,
    pub dr: [u64; 8],
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    /// The x87 FPU (and the MMX registers in it).
    pub fpu: crate::fpu::Fpu,
    /// FERR#: an unmasked x87 exception met a waiting instruction with CR0.NE clear
    /// (the PC routes it to IRQ 13; SDM vol 1 8.7, D.1).
    pub ferr: bool,
    pub apic_base: u64,
    /// `HV_REGISTER_PENDING_EVENT0`: an event to deliver at the next resume.
    pub pending_event: [u64; 2],
    /// The time-stamp counter, in guest ticks.
    pub tsc: u64,
    pub msr: Msrs,
    /// In HLT: no instruction runs until an event wakes the processor.
    pub halted: bool,
    pub shadow: Shadow,
    /// NMIs are blocked until the next IRET (SDM vol 3 6.7.1).
    pub nmi_blocked: bool,
    /// The PAE page-directory-pointer entries, loaded with CR3 (SDM vol 3 4.4.1).
    pub pdpte: [u64; 4],
}

impl Cpu {
    /// The architectural state after RESET (SDM vol 3 Table 10-1): real mode at
    /// F000:FFF0 with CS base 0xFFFF0000, EDX holding the processor signature.
    pub fn reset(signature: u32, bsp: bool) -> Self {
        let data = Segment::real(0, 0x93);
        let mut cs = Segment::real(0xf000, 0x9b);
        cs.base = 0xffff_0000;
        let mut gpr = [0u64; 16];
        gpr[2] = signature as u64;
        Cpu {
            gpr,
            rip: 0xfff0,
            flags: Flags::new(2),
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
            cr0: CR0_ET | CR0_CD | CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            xcr0: 1,
            pkru: 0,
            dr: [0, 0, 0, 0, 0xffff_0ff0, 0x400, 0xffff_0ff0, 0x400],
            xmm: [0; 16],
            mxcsr: 0x1f80,
            fpu: crate::fpu::Fpu::reset(),
            ferr: false,
            pending_event: [0; 2],
            apic_base: 0xfee0_0000 | (1 << 11) | if bsp { 1 << 8 } else { 0 },
            tsc: 0,
            msr: Msrs {
                pat: 0x0007_0406_0007_0406,
                misc_enable: 1,
                ..Msrs::default()
            },
            halted: false,
            shadow: Shadow::default(),
            nmi_blocked: false,
            pdpte: [0; 4],
        }
    }

    /// RFLAGS with every lazily kept flag computed.
    #[inline]
    pub fn rflags(&self) -> u64 {
        self.flags.get()
    }

    /// Sets RFLAGS whole (reserved bit 1 set, the others as given).
    #[inline]
    pub fn set_rflags(&mut self, v: u64) {
        self.flags.set(v);
    }

    #[inline]
    pub fn protected(&self) -> bool {
        self.cr0 & CR0_PE != 0
    }

    #[inline]
    pub fn long_mode_active(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// Virtual-8086 mode: EFLAGS.VM in protected mode.
    #[inline]
    pub fn v86(&self) -> bool {
        self.protected() && self.flags.bits & crate::flags::VM != 0
    }

    /// 64-bit mode: long mode with a 64-bit code segment.
    #[inline]
    pub fn mode64(&self) -> bool {
        self.long_mode_active() && self.seg[CS].long()
    }

    /// The linear address offset `off` in segment `seg` stands for, before any check:
    /// in 64-bit mode only FS and GS add their base (SDM vol 1 3.3.7.1), in other modes
    /// every segment's base does, in 32 bits.
    #[inline(always)]
    pub fn linear_of(&self, seg: usize, off: u64) -> u64 {
        if self.mode64() {
            if seg >= FS {
                self.seg[seg].base.wrapping_add(off)
            } else {
                off
            }
        } else {
            self.seg[seg].base.wrapping_add(off) & 0xffff_ffff
        }
    }

    /// 16, 32 or 64: the default operand size of the code segment.
    #[inline]
    pub fn bitness(&self) -> u32 {
        if self.mode64() {
            64
        } else if self.seg[CS].default_big() && !self.v86() {
            32
        } else {
            16
        }
    }

    pub fn paging(&self) -> bool {
        self.cr0 & CR0_PG != 0 && self.cr0 & CR0_PE != 0
    }

    /// Recomputes EFER.LMA after a CR0, CR4 or EFER write (SDM vol 3 10.8.5).
    pub fn update_lma(&mut self) {
        if self.cr0 & CR0_PG != 0 && self.efer & EFER_LME != 0 && self.cr4 & CR4_PAE != 0 {
            self.efer |= EFER_LMA;
        } else {
            self.efer &= !EFER_LMA;
        }
    }

    /// The current privilege level: SS.DPL in protected mode, which every privilege
    /// change keeps equal to CS.RPL (SDM vol 3 5.5; VMX reads the CPL from SS.DPL the
    /// same way, vol 3C 25.4.1), 3 in V86 mode, 0 in real mode.
    #[inline]
    pub fn cpl(&self) -> u8 {
        if self.cr0 & CR0_PE == 0 {
            0
        } else if self.flags.bits & crate::flags::VM != 0 {
            3
        } else {
            self.seg[SS].dpl()
        }
    }

    /// The I/O privilege level, RFLAGS bits 12-13.
    #[inline]
    pub fn iopl(&self) -> u8 {
        ((self.flags.bits >> 12) & 3) as u8
    }
}
