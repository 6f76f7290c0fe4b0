//! Why an instruction did not complete: a guest exception to deliver, or an exit to the
//! hypervisor around the processor. Handlers return the one-byte [`Stop`]; the details
//! sit in the execution context, so the hot path moves no large error values.

use crate::paging::Access;

/// An instruction stopped before completing; see [`crate::Exec::fault`] or
/// [`crate::Exec::exit`] for which and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A guest exception (state as before the instruction, RIP at it).
    Fault,
    /// The hypervisor must act (an intercept, HLT, an unsupported instruction).
    Exit,
}

pub const DE: u8 = 0;
pub const DB: u8 = 1;
pub const NMI: u8 = 2;
pub const BP: u8 = 3;
pub const OF: u8 = 4;
pub const BR: u8 = 5;
pub const UD: u8 = 6;
pub const NM: u8 = 7;
pub const DF: u8 = 8;
pub const TS: u8 = 10;
pub const NP: u8 = 11;
pub const SS: u8 = 12;
pub const GP: u8 = 13;
pub const PF: u8 = 14;
pub const MF: u8 = 16;
pub const AC: u8 = 17;
pub const MC: u8 = 18;
pub const XM: u8 = 19;

/// A guest exception: vector, error code, and for #PF the faulting address (CR2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fault {
    pub vector: u8,
    pub error_code: Option<u32>,
    pub cr2: Option<u64>,
}

/// The exceptions that ended in a shutdown (SDM vol 3 6.15, interrupt 8: "If another
/// exception occurs while attempting to call the double-fault handler, the processor
/// enters shutdown mode"), for the VMM's error: a triple fault's cause is its first
/// exception, which CR2 alone does not say (QEMU's `-d int` prints the same chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownCause {
    /// The exception whose delivery began the chain, with its error code and CR2.
    pub first: Fault,
    /// Every exception raised, by vector, from the first to the one that could not be
    /// delivered (at most [`ShutdownCause::MAX`]: a first exception, three faulting
    /// deliveries and the double faults between them).
    pub vectors: [u8; ShutdownCause::MAX],
    /// How many of `vectors` are meaningful.
    pub count: u8,
}

impl ShutdownCause {
    pub const MAX: usize = 8;

    /// Notes one more exception raised in the chain.
    pub fn push(&mut self, vector: u8) {
        if let Some(slot) = self.vectors.get_mut(self.count as usize) {
            *slot = vector;
            self.count += 1;
        }
    }

    /// The vectors raised, first to last.
    pub fn vectors(&self) -> &[u8] {
        &self.vectors[..self.count as usize]
    }
}

/// Why the processor hands control to the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exit {
    #[default]
    None,
    /// An access outside guest RAM, to an intercepted range, or a write to ROM.
    Mmio {
        gpa: u64,
        gva: u64,
        access: Access,
        intercepted: bool,
    },
    /// IN/OUT/INS/OUTS (after the I/O permission checks passed).
    Io {
        port: u16,
        size: u8,
        input: bool,
        string: bool,
        rep: bool,
    },
    /// HLT (RIP past it).
    Halt,
    /// RDMSR/WRMSR under intercept.
    Msr { msr: u32, write: bool },
    /// An exception could not be delivered (a triple fault): the processor shuts down.
    Shutdown(ShutdownCause),
    /// An instruction this processor should have but does not implement yet.
    Unsupported,
    /// INIT arrived: the hypervisor puts the processor in its INIT state.
    Init,
    /// A start-up IPI arrived (the hypervisor starts a processor waiting for it).
    Sipi(u8),
    /// The EOI of a level-triggered interrupt (the instruction retired).
    ApicEoi(u8),
    /// The hypervisor's debugger stops here ([`crate::Debug`]): before an instruction
    /// at a breakpoint (RIP at it) or after a step; `dr6` says which, as DR6 would.
    Debug { dr6: u64 },
}

/// The error code of a selector-related fault: the selector's index and table bits,
/// with EXT when an external event caused it (SDM vol 3 6.13).
#[inline]
pub fn selector_error(selector: u16) -> u32 {
    (selector & 0xfffc) as u32
}
