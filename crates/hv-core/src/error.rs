//! Typed errors. Each carries a stable `code()` that the binding turns into a JS
//! `Error.code`, and a message naming the offending value.

use thiserror::Error;

/// A specialized result for backend operations.
pub type Result<T> = std::result::Result<T, HvError>;

/// Everything that can go wrong below the TypeScript layer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HvError {
    /// The hypervisor device node is missing or cannot be opened.
    #[error("{path} is not available: {reason} (errno {errno})")]
    DeviceUnavailable {
        path: &'static str,
        errno: i32,
        reason: String,
    },
    /// An ioctl failed; `op` names the operation.
    #[error("{op} failed: {reason} (errno {errno})")]
    Ioctl {
        op: &'static str,
        errno: i32,
        reason: String,
    },
    /// A hypercall made through the root hvcall ioctl returned a failure status.
    #[error("{op} failed: hypercall {code:#x} returned status {status:#x}")]
    Hypercall {
        op: &'static str,
        code: u16,
        status: u16,
    },
    /// A caller-supplied argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A register id is not one this backend knows.
    #[error("unknown register id {0:#x}")]
    UnknownRegister(u32),
    /// A memory mapping overlaps an existing one.
    #[error("memory region at {gpa:#x} (+{size:#x}) overlaps the region at {other:#x} (+{other_size:#x})")]
    MemoryOverlap {
        gpa: u64,
        size: u64,
        other: u64,
        other_size: u64,
    },
    /// No mapping starts at this guest physical address.
    #[error("no memory region is mapped at {0:#x}")]
    NotMapped(u64),
    /// `run()` was called on a vCPU that is already running.
    #[error("vCPU {0} is already running")]
    Busy(u32),
    /// The operation is not available on this backend or host.
    #[error("{0}")]
    Unsupported(String),
    /// The sim backend met an instruction it does not implement.
    #[error("unsupported instruction `{text}` ({bytes}) at rip {rip:#x}")]
    UnsupportedInstruction {
        rip: u64,
        text: String,
        bytes: String,
    },
    /// The object has been closed.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// Guest memory beyond a limit (the VM's, the process's) or beyond what the host has.
    #[error("{requested:#x} more bytes of guest memory exceed the limit of {what}: {in_use:#x} of {limit:#x} bytes are in use")]
    OutOfMemory {
        what: &'static str,
        requested: u64,
        in_use: u64,
        limit: u64,
    },
    /// More memory regions than a process may hold: each is three mappings (the region
    /// and two guard pages) and the kernel allows 65,530 a process (`vm.max_map_count`).
    #[error("this process holds {limit} guest memory regions already (the most it may): use fewer, larger regions")]
    TooManyRegions { limit: usize },
}

impl HvError {
    /// A stable, errno-like code for JavaScript (`err.code`).
    pub fn code(&self) -> &'static str {
        match self {
            HvError::DeviceUnavailable { .. } => "ENODEV",
            // A kernel that cannot back or pin memory (mshv pins each region at map time).
            HvError::Ioctl {
                errno: libc::ENOMEM,
                ..
            } => "ENOMEM",
            HvError::Ioctl { .. } => "EIOCTL",
            HvError::Hypercall { .. } => "EHYPERCALL",
            HvError::InvalidArgument(_) => "EINVAL",
            HvError::UnknownRegister(_) => "EINVAL_REGISTER",
            HvError::MemoryOverlap { .. } => "EOVERLAP",
            HvError::NotMapped(_) => "ENOTMAPPED",
            HvError::Busy(_) => "EBUSY",
            HvError::Unsupported(_) => "ENOTSUP",
            HvError::UnsupportedInstruction { .. } => "EUNSUPPORTED_INSTRUCTION",
            HvError::Closed(_) => "ECLOSED",
            HvError::OutOfMemory { .. } | HvError::TooManyRegions { .. } => "ENOMEM",
        }
    }

    /// Builds an [`HvError::Ioctl`] from an errno.
    pub fn ioctl(op: &'static str, errno: i32) -> Self {
        HvError::Ioctl {
            op,
            errno,
            reason: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ioctl that fails for want of memory (mshv pins every page of a region when it
    /// is mapped: `mshv_region_populate_pages`, drivers/hv/mshv_root_main.c) is the
    /// same `ENOMEM` as a limit this package enforces, so callers handle one code.
    #[test]
    fn an_ioctl_out_of_memory_has_the_enomem_code() {
        let e = HvError::ioctl("map guest memory", libc::ENOMEM);
        assert_eq!(e.code(), "ENOMEM");
        assert!(e.to_string().contains("map guest memory"), "{e}");
        assert_eq!(HvError::ioctl("run", libc::EFAULT).code(), "EIOCTL");
    }
}
