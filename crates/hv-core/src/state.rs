//! A vCPU's whole state as one value, and the debug state a VMM sets on it: the seam
//! snapshots, restores, forks and the debugger share on both backends (Cloud
//! Hypervisor's `Vcpu::state()`/`set_state()`/`set_guest_debug()`, OpenVMM's
//! `Processor::set_debug_state`).

use crate::regs::RegisterValue;

/// The MSRs a state carries by number (the rest of the guest-visible MSRs have
/// registers of their own in [`crate::regs::REGISTERS`]): IA32_MISC_ENABLE, the MTRRs
/// (SDM vol 3 11.11: MTRRdefType, the eleven fixed-range ones, and the eight variable
/// pairs MTRRCAP.VCNT reports here).
pub const STATE_MSRS: &[u32] = &[
    0x1a0, // IA32_MISC_ENABLE
    0x2ff, // IA32_MTRR_DEF_TYPE
    0x250, // IA32_MTRR_FIX64K_00000
    0x258, // IA32_MTRR_FIX16K_80000
    0x259, // IA32_MTRR_FIX16K_A0000
    0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, // IA32_MTRR_FIX4K_C0000..F8000
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, // IA32_MTRR_PHYSBASE0/MASK0..
    0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f, // ..PHYSBASE7/MASK7
];

/// Bytes of the local APIC's state: its 1 KiB register page in the APIC's MMIO layout
/// (ID at 0x20, TPR at 0x80, ISR/TMR/IRR from 0x100/0x180/0x200, the LVT from 0x2F0,
/// the timer's initial and current counts at 0x380/0x390, its divide at 0x3E0), as
/// MSHV's `HV_GET_SET_VP_STATE_LAPIC_STATE` and KVM's `kvm_lapic_state` carry it.
pub const LAPIC_STATE_SIZE: usize = 1024;

/// Checks a local APIC state's size ([`LAPIC_STATE_SIZE`]) before a backend reads it.
pub fn check_lapic(lapic: &[u8]) -> crate::Result<()> {
    if lapic.len() != LAPIC_STATE_SIZE {
        return Err(crate::HvError::InvalidArgument(format!(
            "the local APIC state is {} bytes; it must be {LAPIC_STATE_SIZE}",
            lapic.len()
        )));
    }
    Ok(())
}

/// A vCPU's whole state: what a restore into a fresh vCPU of the same backend needs
/// for the guest to go on as if nothing happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuState {
    /// Every register of [`crate::regs::REGISTERS`], in table order: general, segment,
    /// control, system, debug, x87/SSE, the MSRs with registers, pending events, the
    /// interrupt shadow and the activity state (halted, waiting for SIPI).
    pub registers: Vec<(u32, RegisterValue)>,
    /// [`STATE_MSRS`], by number.
    pub msrs: Vec<(u32, u64)>,
    /// The local APIC ([`LAPIC_STATE_SIZE`] bytes).
    pub lapic: Vec<u8>,
    /// The XSAVE image (legacy region, header, extended components) where the backend
    /// keeps state beyond the registers (MSHV's `HV_GET_SET_VP_STATE_XSAVE`: AVX and
    /// later); empty on the sim, whose x87/SSE state the registers carry whole.
    pub xsave: Vec<u8>,
    /// What the backend keeps beyond the architecture and needs to resume exactly, by
    /// name (the sim: its APIC timer's deadline in guest nanoseconds, interrupts
    /// accepted but not yet taken, the PAE PDPTE cache, FERR#). A state restores only
    /// into the backend kind that made it when this is not empty.
    pub internal: Vec<(String, u64)>,
}

impl VcpuState {
    /// The value of register `id`, if the state has it.
    pub fn register(&self, id: u32) -> Option<RegisterValue> {
        self.registers
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    /// The value of MSR `msr`, if the state has it.
    pub fn msr(&self, msr: u32) -> Option<u64> {
        self.msrs.iter().find(|(m, _)| *m == msr).map(|(_, v)| *v)
    }

    /// The internal value `name`, if the state has it.
    pub fn internal(&self, name: &str) -> Option<u64> {
        self.internal
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// How the VMM debugs a vCPU: where it stops and whether it steps. A stop is an
/// exception intercept for #DB (vector 1) with RIP at the instruction that did not
/// run yet (a breakpoint) or at the next one (a step), and DR6's bits in the
/// exception parameter: B0..B3 for the breakpoint's index below 4, BS (bit 14) for a
/// step — what MSHV reports for DR0-DR3 and RFLAGS.TF under an exception intercept.
/// A run that resumes from a stop at a breakpoint, or is the first after a
/// `set_state`, runs the instruction there first (RFLAGS.RF's rule, SDM vol 3
/// 18.3.1.1), so a VMM resumes without removing the breakpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugState {
    /// Linear addresses of instruction breakpoints (MSHV: DR0-DR3 with the watchpoints,
    /// so at most [`HARDWARE_BREAKPOINTS`] of both; the sim: any number).
    pub breakpoints: Vec<u64>,
    /// Data breakpoints: a stop after the instruction that accessed the range (a trap,
    /// as DR0-DR3 data breakpoints are, SDM vol 3 18.2.4). At most four on either
    /// backend; they take the first slots, so DR6's B0..B3 name them.
    pub watchpoints: Vec<Watchpoint>,
    /// Stop after every instruction.
    pub single_step: bool,
}

/// Which accesses a watchpoint stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    Write,
    /// Reads only: the sim's (x86 debug registers watch writes, or reads and writes).
    Read,
    Access,
}

/// A range of linear addresses watched for `kind` accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchpoint {
    pub address: u64,
    pub len: u64,
    pub kind: WatchKind,
}

impl Watchpoint {
    /// Whether an access of `size` bytes at `lin` (a write or not) is one it watches.
    pub fn hit(&self, lin: u64, size: u64, write: bool) -> bool {
        let kind = match self.kind {
            WatchKind::Write => write,
            WatchKind::Read => !write,
            WatchKind::Access => true,
        };
        kind && lin < self.address.saturating_add(self.len)
            && self.address < lin.saturating_add(size)
    }
}

/// Debug-register slots a hardware backend has (DR0-DR3): watchpoints and breakpoints together.
pub const HARDWARE_BREAKPOINTS: usize = 4;

/// DR6.BS: the stop was a single step (SDM vol 3 18.2.3).
pub const DR6_BS: u64 = 1 << 14;

/// DR6 for a stop at debug slot `slot`: the watchpoints are slots 0.., the breakpoints
/// follow them; slots past DR3 (the sim's) have no bit.
pub fn dr6_for_slot(slot: usize) -> u64 {
    if slot < HARDWARE_BREAKPOINTS {
        1 << slot
    } else {
        0
    }
}
