//! `sim-cpu`: the x86-64 processor of the sim backend.
//!
//! It executes guest code the way the Intel SDM and AMD APM describe: real, V86, 16- and
//! 32-bit protected, compatibility and 64-bit mode; segmentation and paging with their
//! checks and faults; exceptions and interrupts through the IVT and IDT with privilege
//! changes, task gates and double faults; hardware task switches; the system
//! instructions. Instructions are decoded once with iced-x86 and compiled into blocks
//! of handlers; arithmetic flags are computed lazily.
//!
//! The hypervisor around it (`hv-sim`) owns guest memory and the exits: the processor
//! stops with an [`Exit`] where MSHV would intercept (port I/O, MMIO, HLT, intercepted
//! MSRs) and asks its [`Env`] for what the hypervisor decides (CPUID results, which
//! MSRs exit).

mod cache;
pub mod cpuid;
pub mod decode;
pub mod dr;
mod exec;
pub mod fault;
pub mod flags;
pub mod float;
pub mod fpu;
mod interrupt;
mod jit;
pub mod msr;
mod ops;
pub mod paging;
pub mod phys;
mod run;
mod segment;
pub mod state;
mod task;
mod tlb;
pub mod vendor;

pub use exec::Exec;
pub use fault::{Exit, Fault};
pub use hv_core::UnknownMsr;
pub use jit::{Tier, TranslatorStats, HOT};
pub use run::{Debug, ExitInstruction, Processor, RunEnd, POLL_INTERVAL};

pub use state::{Cpu, Segment, Table};

/// An event from outside the instruction stream, delivered at an instruction boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A maskable external interrupt (from the local APIC, or ExtINT): through the IDT.
    Interrupt(u8),
    /// A non-maskable interrupt: vector 2, NMIs blocked until the next IRET.
    Nmi,
    /// INIT: the processor goes to its INIT state (the hypervisor does that).
    Init,
    /// A start-up IPI for a processor waiting for one: start at page `vector`.
    Sipi(u8),
}

/// Bits of [`Processor::events`]: a maskable interrupt may be deliverable (it waits
/// for RFLAGS.IF and the end of an interrupt shadow), or an event that does not wait
/// for IF (NMI, INIT, SIPI). The processor asks its [`Env`] only when a bit says so.
pub const EVENT_MASKABLE: u32 = 1;
pub const EVENT_URGENT: u32 = 2;
/// The hypervisor's plans for this run changed (the guest re-armed its timer): the
/// run ends at the next block as if its instruction limit were reached, so the
/// hypervisor can set a new one.
pub const EVENT_RESLICE: u32 = 4;

/// What a WRMSR of an x2APIC register did ([`Env::x2apic_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum X2apicWrite {
    Done,
    /// The EOI of a level-triggered interrupt with this vector, which the VMM must
    /// hear of (`Exit::ApicEoi`), as for [`Env::apic_write`].
    Eoi(u8),
    /// #GP(0): a register x2APIC mode lacks, a read-only one, or a reserved bit set.
    Fault,
}

/// What the hypervisor decides for the processor.
pub trait Env {
    /// The CPUID answer for `leaf`/`subleaf`, given the processor's own.
    fn cpuid(&mut self, leaf: u32, subleaf: u32, native: [u32; 4]) -> [u32; 4];
    /// Whether RDMSR/WRMSR of `msr` exits to the VMM.
    fn msr_exits(&self, msr: u32) -> bool;
    /// What an MSR the processor does not implement does.
    fn unknown_msr(&self) -> UnknownMsr;
    /// The processor's local APIC id.
    fn apic_id(&self) -> u32;
    /// The event to deliver now, if any: `interruptible` when RFLAGS.IF is set and no
    /// interrupt shadow holds; `nmi_blocked` while an NMI handler has not returned. An
    /// interrupt taken here is acknowledged (IRR to ISR) by the hypervisor's APIC.
    fn take_event(&mut self, _interruptible: bool, _nmi_blocked: bool, _now: u64) -> Option<Event> {
        None
    }
    /// The time-stamp counter for RDTSC, given the processor's own count (one tick per
    /// retired instruction, as the deterministic clock has it).
    fn tsc(&mut self, local: u64) -> u64 {
        local
    }
    /// Whether the hypervisor emulates a local APIC: accesses to the APIC page (at
    /// IA32_APIC_BASE, while enabled) go to [`Env::apic_read`] and [`Env::apic_write`],
    /// never to memory or the VMM.
    fn has_apic(&self) -> bool {
        false
    }
    /// The guest executed PAUSE at time-stamp count `now`: it spins waiting for another
    /// processor or for time to pass. Returns the ticks the PAUSE takes beyond the one
    /// every instruction counts (a deterministic clock's model of its latency).
    fn pause(&mut self, _now: u64) -> u64 {
        0
    }
    /// Reads the 32-bit APIC register at `offset` (16-byte aligned) of the APIC page.
    /// `now` is the processor's own time-stamp count, as for [`Env::tsc`].
    fn apic_read(&mut self, _offset: u32, _now: u64) -> u32 {
        0
    }
    /// Writes an APIC register; returns the vector of a level-triggered interrupt whose
    /// EOI this was, which the VMM must hear of (`Exit::ApicEoi`).
    fn apic_write(&mut self, _offset: u32, _value: u32, _now: u64) -> Option<u8> {
        None
    }
    /// IA32_APIC_BASE changed from `old` to `new` by a WRMSR the processor allowed
    /// (SDM vol 3 11.4.4, 11.12.5): the hypervisor's local APIC follows its enable and
    /// x2APIC-mode bits.
    fn apic_base_written(&mut self, _old: u64, _new: u64) {}
    /// RDMSR of an x2APIC register in x2APIC mode: MSR 0x800 + `offset` / 16, the
    /// register at APIC page offset `offset` (SDM vol 3 11.12.1.2). None: #GP(0), a
    /// register x2APIC mode lacks or a write-only one.
    fn x2apic_read(&mut self, _offset: u32, _now: u64) -> Option<u64> {
        None
    }
    /// WRMSR of an x2APIC register in x2APIC mode (SDM vol 3 11.12.1.2, 11.12.1.3).
    fn x2apic_write(&mut self, _offset: u32, _value: u64, _now: u64) -> X2apicWrite {
        X2apicWrite::Fault
    }
    /// An MSR the hypervisor keeps (IA32_TSC_DEADLINE, the TSC): its value, or None
    /// for the processor's own MSRs.
    fn read_msr(&mut self, _msr: u32, _now: u64) -> Option<u64> {
        None
    }
    /// A write to an MSR: true when the hypervisor took it; it also sees writes the
    /// processor then stores itself (IA32_APIC_BASE), returning false for those.
    fn write_msr(&mut self, _msr: u32, _value: u64, _now: u64) -> bool {
        false
    }
    /// CR8, when the hypervisor's local APIC holds it: CR8 is TPR[7:4] (SDM vol 3
    /// 11.8.6), one register with the APIC page's TPR, so it reads what an MMIO write
    /// of TPR left. None: the processor keeps CR8 itself ([`Cpu::cr8`]).
    fn read_cr8(&mut self) -> Option<u64> {
        None
    }
    /// MOV to CR8 (bits 3:0, reserved bits already refused): true when the
    /// hypervisor's APIC took it as TPR = value << 4, TPR[3:0] zero (SDM vol 3
    /// 11.8.6), which may unmask an interrupt waiting in its IRR.
    fn write_cr8(&mut self, _value: u64) -> bool {
        false
    }
}
