//! The x87 FPU's state: eight 80-bit data registers addressed as a stack, the control,
//! status and tag words, and the last instruction and data pointers (SDM vol 1 8.1).
//! The MMX registers MM0..7 are the data registers' low 64 bits (vol 1 9.2.1).

/// FSW bits (SDM vol 1 8.1.3).
pub const FSW_SF: u16 = 1 << 6;
pub const FSW_ES: u16 = 1 << 7;
pub const FSW_C0: u16 = 1 << 8;
pub const FSW_C1: u16 = 1 << 9;
pub const FSW_C2: u16 = 1 << 10;
pub const FSW_C3: u16 = 1 << 14;
pub const FSW_B: u16 = 1 << 15;
pub const FSW_TOP_SHIFT: u16 = 11;
pub const FSW_CC: u16 = FSW_C0 | FSW_C1 | FSW_C2 | FSW_C3;

/// The MXCSR bits this processor implements, DAZ included (SDM vol 1 10.5.1.2): what
/// FXSAVE reports as MXCSR_MASK; setting any other bit is #GP.
pub const MXCSR_MASK: u32 = 0xffff;

/// FCW: exception masks in bits 0-5, precision control in 8-9, rounding in 10-11.
pub const FCW_MASKS: u16 = 0x3f;

/// The 2-bit tags FNSTENV and FNSAVE write (SDM vol 1 8.1.7).
pub const TAG_VALID: u16 = 0;
pub const TAG_ZERO: u16 = 1;
pub const TAG_SPECIAL: u16 = 2;
pub const TAG_EMPTY: u16 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fpu {
    /// The physical registers R0..R7 (80 bits each; ST(i) is R((TOP + i) mod 8)).
    pub regs: [u128; 8],
    pub fcw: u16,
    /// FSW with TOP in bits 11-13.
    pub fsw: u16,
    /// Bit i set: physical register i is empty (the processor's own tag state; the full
    /// two-bit tags are computed from the contents when saved).
    pub empty: u8,
    /// The last non-control instruction's opcode (11 bits), address and operand address.
    pub fop: u16,
    pub fip: u64,
    pub fcs: u16,
    pub fdp: u64,
    pub fds: u16,
}

impl Fpu {
    /// The state at RESET (SDM vol 3 Table 10-1): FCW 0x0040, FSW 0, every tag 01 (zero),
    /// the registers +0.
    pub fn reset() -> Fpu {
        Fpu {
            regs: [0; 8],
            fcw: 0x0040,
            fsw: 0,
            empty: 0,
            fop: 0,
            fip: 0,
            fcs: 0,
            fdp: 0,
            fds: 0,
        }
    }

    /// FNINIT (SDM vol 2 FINIT): FCW 0x037F, FSW 0, every register empty, pointers 0.
    pub fn init(&mut self) {
        self.fcw = 0x037f;
        self.fsw = 0;
        self.empty = 0xff;
        self.fop = 0;
        self.fip = 0;
        self.fcs = 0;
        self.fdp = 0;
        self.fds = 0;
    }

    #[inline]
    pub fn top(&self) -> usize {
        ((self.fsw >> FSW_TOP_SHIFT) & 7) as usize
    }

    #[inline]
    pub fn set_top(&mut self, top: usize) {
        self.fsw = (self.fsw & !(7 << FSW_TOP_SHIFT)) | ((top as u16 & 7) << FSW_TOP_SHIFT);
    }

    /// The physical register of ST(i).
    #[inline]
    pub fn phys(&self, i: usize) -> usize {
        (self.top() + i) & 7
    }

    #[inline]
    pub fn is_empty(&self, i: usize) -> bool {
        self.empty & (1 << self.phys(i)) != 0
    }

    #[inline]
    pub fn st(&self, i: usize) -> u128 {
        self.regs[self.phys(i)]
    }

    /// Writes ST(i) and marks it full.
    #[inline]
    pub fn set_st(&mut self, i: usize, v: u128) {
        let p = self.phys(i);
        self.regs[p] = v & ((1 << 80) - 1);
        self.empty &= !(1 << p);
    }

    /// Decrements TOP and writes the new ST(0).
    pub fn push(&mut self, v: u128) {
        let top = (self.top() + 7) & 7;
        self.set_top(top);
        self.set_st(0, v);
    }

    /// Marks ST(0) empty and increments TOP.
    pub fn pop(&mut self) {
        let p = self.phys(0);
        self.empty |= 1 << p;
        self.set_top(self.top() + 1);
    }

    /// The two-bit tag of physical register `p` from its contents.
    pub fn tag(&self, p: usize) -> u16 {
        if self.empty & (1 << p) != 0 {
            return TAG_EMPTY;
        }
        use crate::float::{classify, Class, Fmt};
        match classify(Fmt::F80, self.regs[p]) {
            Class::Zero => TAG_ZERO,
            Class::Normal => TAG_VALID,
            _ => TAG_SPECIAL,
        }
    }

    /// The full tag word (FNSTENV, FNSAVE).
    pub fn tag_word(&self) -> u16 {
        (0..8).fold(0, |w, p| w | self.tag(p) << (2 * p))
    }

    /// Loads the tag word (FLDENV, FRSTOR): only "empty or not" is kept; the processor
    /// recomputes the rest from the contents (SDM vol 1 8.1.7).
    pub fn set_tag_word(&mut self, w: u16) {
        self.empty = (0..8).fold(0, |e, p| {
            e | if (w >> (2 * p)) & 3 == TAG_EMPTY {
                1 << p
            } else {
                0
            }
        });
    }

    /// The abridged tag byte of FXSAVE: bit i set when physical register i is full
    /// (SDM vol 1 10.5.1.1).
    pub fn abridged_tags(&self) -> u8 {
        !self.empty
    }

    /// Sets the exception flags in `flags` (FSW bits 0-5), and ES and B when any of
    /// them is unmasked (SDM vol 1 8.1.3.3).
    pub fn raise(&mut self, flags: u8) {
        self.fsw |= flags as u16;
        self.update_summary();
    }

    /// Recomputes ES and B from the flags and masks (after FLDCW, FLDENV, FRSTOR).
    pub fn update_summary(&mut self) {
        if self.fsw & !self.fcw & FCW_MASKS != 0 {
            self.fsw |= FSW_ES | FSW_B;
        } else {
            self.fsw &= !(FSW_ES | FSW_B);
        }
    }

    /// An unmasked exception is pending: the next waiting x87 instruction raises #MF.
    #[inline]
    pub fn pending(&self) -> bool {
        self.fsw & FSW_ES != 0
    }

    /// MM register `i`: the low 64 bits of physical register i.
    #[inline]
    pub fn mm(&self, i: usize) -> u64 {
        self.regs[i] as u64
    }

    /// Writes MMi: the exponent field becomes all ones (SDM vol 1 9.5.1).
    #[inline]
    pub fn set_mm(&mut self, i: usize, v: u64) {
        self.regs[i] = v as u128 | 0xffff << 64;
    }

    /// Any MMX instruction but EMMS: TOP 0 and every register valid (SDM vol 1 9.5.1).
    #[inline]
    pub fn enter_mmx(&mut self) {
        self.set_top(0);
        self.empty = 0;
    }
}
