//! Why the interpreter stopped before completing an instruction.

use crate::mmu::{Access, PageFault};

/// An instruction that could not complete inside the hypervisor. Architectural state is
/// as before the instruction (string instructions keep the iterations they finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// An access outside guest RAM, or to an intercepted range.
    Mmio {
        gpa: u64,
        gva: u64,
        access: Access,
        intercepted: bool,
    },
    /// IN/OUT/INS/OUTS.
    Io {
        port: u16,
        size: u8,
        input: bool,
        string: bool,
        rep: bool,
    },
    /// HLT (RIP already past it).
    Halt,
    /// RDMSR/WRMSR under intercept.
    Msr { msr: u32, write: bool },
    /// A guest page fault.
    PageFault(PageFault),
    /// Any other guest exception (vector, error code).
    Exception { vector: u8, error_code: Option<u32> },
    /// An instruction the sim does not implement.
    Unsupported,
}

pub const DE: u8 = 0;
pub const UD: u8 = 6;
pub const GP: u8 = 13;
pub const PF: u8 = 14;

impl Stop {
    pub fn gp(error_code: u32) -> Self {
        Stop::Exception {
            vector: GP,
            error_code: Some(error_code),
        }
    }
    pub fn ud() -> Self {
        Stop::Exception {
            vector: UD,
            error_code: None,
        }
    }
}
