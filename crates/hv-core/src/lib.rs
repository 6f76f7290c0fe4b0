//! Shared vocabulary of the `mshv` package's backends.
//!
//! Both the real `/dev/mshv` backend and the `sim` software hypervisor implement the
//! traits in [`backend`], produce the same `hv_message` bytes ([`message`]) and expose
//! the same register page ([`page`]). Everything TypeScript needs to know about layouts
//! and ids is exported from here, so no offset is ever typed twice.

pub mod backend;
pub mod counters;
pub mod cpuid;
pub mod error;
pub mod event;
pub mod interrupt;
pub mod lapic;
pub mod memory;
pub mod message;
pub mod page;
pub mod page_runs;
pub mod pio_loop;
pub mod regs;
pub mod shared;
pub mod state;

pub use backend::{
    BackendKind, Canceller, ClockMode, CpuTier, Exit, HvBackend, MemoryMapping, RegisterPageMode,
    RunLimits, TranslatorStats, UnknownMsr, VcpuBackend, VmBackend, VmConfig,
};
pub use counters::{Counters, ExitCounter};
pub use cpuid::CpuidResult;
pub use error::{HvError, Result};
pub use event::{PendingEvent, PendingException, TripleFault};
pub use interrupt::{InterruptKind, InterruptRequest, Interrupts};
pub use memory::{HostRegion, RegionOptions};
pub use message::{ExitMessage, MESSAGE_SIZE};
pub use page::{RegisterPagePtr, PAGE_SIZE};
pub use regs::{RegisterValue, REGISTER_VALUE_SIZE};
pub use state::{DebugState, VcpuState};
