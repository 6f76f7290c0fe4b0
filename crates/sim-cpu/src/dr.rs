//! The guest's own breakpoints: DR0-DR3 as its DR7 enables them (SDM vol 3 18.2), as
//! opposed to the hypervisor's debugger ([`crate::Debug`]), which the guest cannot see.
//!
//! DR7 is decoded once, when it or DR0-DR3 change, into the slots of each kind; the
//! run loop and the memory paths look at that decoded form only where DR7 enables
//! something: blocks holding an instruction breakpoint run one instruction at a time,
//! pages holding a data breakpoint stay out of the TLB (so only accesses to them take
//! the checked path), I/O breakpoints are matched at the port exit.

/// DR6.B0-B3: which breakpoint conditions were met (SDM vol 3 18.2.3).
pub const DR6_B: u64 = 0xf;
/// DR6.BD: the #DB is a general-detect fault (a MOV DR with DR7.GD set).
pub const DR6_BD: u64 = 1 << 13;
/// DR6.BS: the #DB is a single-step trap.
pub const DR6_BS: u64 = 1 << 14;

/// An event the current instruction delivered itself through the IDT, which decides
/// what happens to its debug traps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Gate {
    #[default]
    None,
    /// INT n, INT3, INTO: the gate cleared TF, so no single-step trap follows (SDM vol
    /// 3 18.3.1.4: "the INT n, INT3, and INTO instructions ... clear this flag"); a data
    /// breakpoint owed is delivered at the handler's first instruction.
    Software,
    /// INT1 (ICEBP): its own #DB was delivered; data breakpoints owed are reported in
    /// that #DB's DR6 rather than by a second one (kvm-unit-tests debug "MOV SS +
    /// watchpoint + ICEBP" enters the handler once).
    Icebp,
    /// SYSCALL, SYSRET: the single-step trap follows TF as the instruction leaves it,
    /// not as it found it (kvm-unit-tests syscall.c: "#DB is raised if TF is 1 at the
    /// *end* of syscall/sysret"): none after a SYSCALL whose IA32_FMASK clears TF, one
    /// after a SYSRET that sets it. The handler owes that trap itself.
    Syscall,
}

/// DR0-DR3 as DR7 enables them (L or G set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breakpoints {
    /// Slots (bit n for DRn) that are instruction breakpoints (R/W = 00).
    pub exec: u8,
    /// Slots that break on data writes (R/W = 01).
    pub write: u8,
    /// Slots that break on data reads and writes (R/W = 11).
    pub access: u8,
    /// Slots that break on I/O (R/W = 10, defined only with CR4.DE: SDM vol 3 18.2.4).
    pub io: u8,
    /// DRn, aligned down to the breakpoint's length for data and I/O breakpoints.
    pub address: [u64; 4],
    /// The length (LENn: 1, 2, 8 or 4 bytes) less one.
    pub span: [u64; 4],
}

impl Breakpoints {
    /// Decodes DR7 over DR0-DR3 (`dr` is DR0..DR7). The processor matches the bytes
    /// of an aligned range of LENn bytes (SDM vol 3 18.2.5): DRn's low bits do not count.
    pub fn new(dr: &[u64; 8]) -> Self {
        let dr7 = dr[7];
        let mut b = Breakpoints::default();
        if dr7 & 0xff == 0 {
            return b;
        }
        for n in 0..4 {
            if (dr7 >> (2 * n)) & 3 == 0 {
                continue;
            }
            let rw = (dr7 >> (16 + 4 * n)) & 3;
            let span = [0, 1, 7, 3][((dr7 >> (18 + 4 * n)) & 3) as usize];
            let bit = 1u8 << n;
            match rw {
                // An instruction breakpoint takes LEN = 00: the instruction's first byte.
                0 => {
                    b.exec |= bit;
                    b.address[n] = dr[n];
                    continue;
                }
                1 => b.write |= bit,
                2 => b.io |= bit,
                _ => b.access |= bit,
            }
            b.address[n] = dr[n] & !span;
            b.span[n] = span;
        }
        b
    }

    /// Whether any breakpoint is enabled.
    #[inline(always)]
    pub fn any(&self) -> bool {
        self.exec | self.write | self.access | self.io != 0
    }

    /// Whether a data breakpoint is enabled.
    #[inline(always)]
    pub fn data(&self) -> bool {
        self.write | self.access != 0
    }

    /// The slots among `slots` whose range an access of `size` bytes at `at` touches.
    fn touched(&self, slots: u8, at: u64, size: u64) -> u64 {
        let mut hits = 0;
        for n in 0..4 {
            if slots & (1 << n) != 0 {
                let first = self.address[n];
                let last = first.wrapping_add(self.span[n]);
                if at <= last && first <= at.wrapping_add(size - 1) {
                    hits |= 1 << n;
                }
            }
        }
        hits
    }

    /// DR6.B0-B3 for a data access of `size` bytes at linear address `lin`.
    pub fn data_hits(&self, lin: u64, size: usize, write: bool) -> u64 {
        let slots = if write {
            self.write | self.access
        } else {
            self.access
        };
        if slots == 0 {
            return 0;
        }
        self.touched(slots, lin, size.max(1) as u64)
    }

    /// DR6.B0-B3 for an I/O access of `size` bytes at `port`.
    pub fn io_hits(&self, port: u16, size: u8) -> u64 {
        if self.io == 0 {
            return 0;
        }
        self.touched(self.io, port as u64, size.max(1) as u64)
    }

    /// DR6.B0-B3 for an instruction whose first byte (prefixes included) is at `lin`.
    #[inline]
    pub fn exec_hits(&self, lin: u64) -> u64 {
        let mut hits = 0;
        for n in 0..4 {
            if self.exec & (1 << n) != 0 && self.address[n] == lin {
                hits |= 1 << n;
            }
        }
        hits
    }

    /// Whether an instruction breakpoint lies in the `len` bytes from `lin`.
    pub fn exec_within(&self, lin: u64, len: u64) -> bool {
        (0..4).any(|n| self.exec & (1 << n) != 0 && self.address[n].wrapping_sub(lin) < len)
    }

    /// Whether the 4 KiB page of `lin` holds a byte a data breakpoint watches: such a
    /// page stays out of the TLB, so every access to it takes the checked path.
    pub fn on_page(&self, lin: u64) -> bool {
        self.data() && self.touched(self.write | self.access, lin & !0xfff, 0x1000) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr(dr7: u64, at: [u64; 4]) -> [u64; 8] {
        [at[0], at[1], at[2], at[3], 0, 0, 0xffff_0ff0, dr7]
    }

    /// SDM vol 3 18.2.4 and 18.2.5: R/W 00 execute, 01 write, 10 I/O, 11 read/write;
    /// LEN 00 one byte, 01 two, 10 eight, 11 four; the range is aligned to its length.
    #[test]
    fn dr7_fields_decode_as_sdm_18_2_4() {
        // DR1: read/write, 4 bytes (as kvm-unit-tests' 0x00f0040a, G1); DR2: execute (G2).
        let b = Breakpoints::new(&dr(0x00f0_0428, [0, 0x1002, 0x3000, 0]));
        assert_eq!((b.access, b.exec, b.write, b.io), (2, 4, 0, 0));
        assert_eq!(b.data_hits(0x1000, 1, false), 2, "the aligned range");
        assert_eq!(b.data_hits(0x0ffd, 4, true), 2, "an access ending in it");
        assert_eq!(b.data_hits(0x1004, 4, true), 0);
        assert_eq!(b.exec_hits(0x3000), 4);
        assert!(b.exec_within(0x2ff0, 0x11) && !b.exec_within(0x2ff0, 0x10));
        assert!(b.on_page(0x1fff) && !b.on_page(0x2000));
        // DR0: write, 8 bytes; DR3: I/O port 0x3f8, 2 bytes. A disabled slot is nothing.
        let b = Breakpoints::new(&dr(0x6009_0041, [0x2005, 0xdead, 0, 0x3f9]));
        assert_eq!((b.write, b.io, b.access, b.exec), (1, 8, 0, 0));
        assert_eq!(b.data_hits(0x2007, 1, true), 1);
        assert_eq!(
            b.data_hits(0x2007, 1, false),
            0,
            "a write breakpoint ignores reads"
        );
        assert_eq!(b.io_hits(0x3f8, 1), 8);
        assert_eq!(b.io_hits(0x3fa, 1), 0);
        assert!(!Breakpoints::new(&dr(0x400, [1, 2, 3, 4])).any());
    }
}
