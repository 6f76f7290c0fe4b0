//! The local APIC the hypervisor emulates for each virtual processor, as MSHV does (a
//! partition created with the LAPIC enabled): the xAPIC register page, interrupt
//! acceptance and priority (IRR, ISR, TMR, TPR, PPR), EOI (with the EOI message for
//! level-triggered vectors), the LVT timer in one-shot, periodic and TSC-deadline
//! modes, LINT0/LINT1, the ICR's IPIs including INIT and SIPI, NMI and ExtINT
//! (Intel SDM vol 3 chapter 11; register offsets: Table 11-1); and x2APIC mode
//! (11.12): the same registers through MSRs 0x800-0x8FF (Table 11-6), the 32-bit
//! read-only x2APIC ID with the logical ID derived from it, the 64-bit ICR, SELF IPI.

pub mod bus;
mod state;
mod timer;

pub(crate) use state::TIMER_VALUES as APIC_TIMER_VALUES;

use hv_core::InterruptKind;
use sim_cpu::{Event, EVENT_MASKABLE, EVENT_RESLICE, EVENT_URGENT};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
pub use timer::{CRYSTAL_HZ, NS_PER_TICK};

/// Register offsets (SDM vol 3 Table 11-1).
pub const ID: u32 = 0x20;
pub const VERSION: u32 = 0x30;
pub const TPR: u32 = 0x80;
pub const APR: u32 = 0x90;
pub const PPR: u32 = 0xa0;
pub const EOI: u32 = 0xb0;
pub const LDR: u32 = 0xd0;
pub const DFR: u32 = 0xe0;
pub const SVR: u32 = 0xf0;
pub const ISR: u32 = 0x100;
pub const TMR: u32 = 0x180;
pub const IRR: u32 = 0x200;
pub const ESR: u32 = 0x280;
pub const LVT_CMCI: u32 = 0x2f0;
pub const ICR_LOW: u32 = 0x300;
pub const ICR_HIGH: u32 = 0x310;
pub const LVT_TIMER: u32 = 0x320;
pub const LVT_THERMAL: u32 = 0x330;
pub const LVT_PERF: u32 = 0x340;
pub const LVT_LINT0: u32 = 0x350;
pub const LVT_LINT1: u32 = 0x360;
pub const LVT_ERROR: u32 = 0x370;
pub const TIMER_INITIAL: u32 = 0x380;
pub const TIMER_CURRENT: u32 = 0x390;
pub const TIMER_DIVIDE: u32 = 0x3e0;
/// x2APIC mode only: the SELF IPI register, MSR 0x83F (SDM vol 3 11.12.11).
pub const SELF_IPI: u32 = 0x3f0;

/// The first x2APIC MSR: MSR 0x800 + n is the register at MMIO offset n << 4 (SDM vol 3
/// 11.12.1.2, Table 11-6).
pub const X2APIC_MSR_BASE: u32 = 0x800;

/// The version register of a P6-family xAPIC: version 0x14, six LVT entries (max LVT
/// index 5: timer, thermal, performance, LINT0, LINT1, error).
pub const VERSION_VALUE: u32 = 0x0005_0014;
const LVT_MASKED: u32 = 1 << 16;
const SVR_ENABLED: u32 = 1 << 8;
/// SVR's bits: the spurious vector, APIC software enable, focus processor checking
/// (SDM vol 3 Figure 11-23). Bit 12 (EOI-broadcast suppression) exists only where the
/// version register's bit 24 says so, and [`VERSION_VALUE`]'s does not.
const SVR_BITS: u32 = 0x3ff;

/// The bits each LVT entry keeps, in [`ApicState::lvt`]'s order (SDM vol 3 Figure
/// 11-8): the vector, the delivery mode (not the timer's or the error entry's), the
/// mask; LINT0/LINT1 their pin polarity and trigger mode; the timer its mode (bits
/// 18:17). The delivery status (bit 12) and LINT's remote IRR (bit 14) are read-only
/// and read 0 here: an interrupt is delivered when it is sent, and LINT's level
/// interrupts are not modelled.
const LVT_BITS: [u32; 7] = [
    0x0001_07ff, // CMCI
    0x0007_00ff, // timer
    0x0001_07ff, // thermal
    0x0001_07ff, // performance
    0x0001_a7ff, // LINT0
    0x0001_a7ff, // LINT1
    0x0001_00ff, // error
];
/// Of the LVT bits beyond [`LVT_BITS`], those that are read-only rather than reserved:
/// writing them is no reserved-bit violation in x2APIC mode (SDM vol 3 11.12.1.3).
const LVT_READ_ONLY: [u32; 7] = [
    1 << 12,
    1 << 12,
    1 << 12,
    1 << 12,
    1 << 12 | 1 << 14,
    1 << 12 | 1 << 14,
    1 << 12,
];
/// The x2APIC ICR's reserved bits (SDM vol 3 Figure 11-28): 12 (no delivery status in
/// x2APIC mode), 13, 17:16 and 31:20; bits 63:32 are the destination.
const X2APIC_ICR_RESERVED: u64 = 1 << 12 | 1 << 13 | 3 << 16 | 0xfff << 20;

/// An inter-processor interrupt the ICR sent, for the bus to route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipi {
    pub kind: InterruptKind,
    pub vector: u8,
    pub destination: u32,
    pub logical: bool,
    pub level: bool,
    /// 0 none, 1 self, 2 all including self, 3 all excluding self.
    pub shorthand: u8,
    pub from: u32,
    /// The destination is an x2APIC ICR's 32 bits (SDM vol 3 11.12.9), not an xAPIC
    /// ICR's 8.
    pub wide: bool,
}

/// A WRMSR or RDMSR of an x2APIC register that raises #GP(0): a register x2APIC mode
/// does not have, a read-only one written, a write-only one read, or a reserved bit
/// set (SDM vol 3 11.12.1.2, 11.12.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X2apicFault;

/// The index in [`ApicState::lvt`] of the LVT entry at `offset`.
fn lvt_index(offset: u32) -> Option<usize> {
    Some(match offset {
        LVT_CMCI => 0,
        LVT_TIMER => 1,
        LVT_THERMAL => 2,
        LVT_PERF => 3,
        LVT_LINT0 => 4,
        LVT_LINT1 => 5,
        LVT_ERROR => 6,
        _ => return None,
    })
}

/// The state of one local APIC.
#[derive(Debug, Clone)]
pub struct ApicState {
    pub id: u32,
    pub tpr: u32,
    pub ldr: u32,
    pub dfr: u32,
    pub svr: u32,
    pub isr: [u32; 8],
    pub tmr: [u32; 8],
    pub irr: [u32; 8],
    pub esr: u32,
    pub icr: u64,
    /// CMCI, timer, thermal, performance, LINT0, LINT1, error.
    pub lvt: [u32; 7],
    pub timer: timer::Timer,
    pub nmi_pending: bool,
    pub init_pending: bool,
    pub sipi_pending: Option<u8>,
    /// The 8259's INTR, acknowledged with this vector when the VMM requested it (an
    /// ExtINT request carries its vector): held, as the 8259 holds INTR high, until
    /// LINT0 lets the processor take it ([`ApicState::accepts_pic`]).
    pub extint_pending: Option<u8>,
    /// IA32_APIC_BASE.EN, the APIC's global enable (SDM vol 3 11.4.3): the processor's
    /// MSR, mirrored here because with it clear the 8259's INTR reaches the processor
    /// without LINT0. INIT leaves it (the MSR is not reset, 11.12.5.1); the vCPU's
    /// `apic_base` register says it in a state.
    pub apic_enabled: bool,
    /// Waiting for a start-up IPI (MSHV's startup-suspend activity state).
    pub startup_suspend: bool,
    /// The guest re-armed the timer: the vCPU's run must look at its deadline again
    /// (`EVENT_RESLICE`) until the vCPU's run loop clears this.
    pub reslice: bool,
}

fn bit(v: u8) -> (usize, u32) {
    ((v >> 5) as usize, 1 << (v & 31))
}

fn highest(bits: &[u32; 8]) -> Option<u8> {
    (0..8)
        .rev()
        .find(|&i| bits[i] != 0)
        .map(|i| (i as u32 * 32 + 31 - bits[i].leading_zeros()) as u8)
}

impl ApicState {
    /// The state after RESET or INIT (SDM vol 3 11.4.7.1): every LVT masked, the APIC
    /// software-disabled (SVR 0xFF), DFR all ones.
    pub fn reset(id: u32) -> ApicState {
        ApicState {
            id,
            tpr: 0,
            ldr: 0,
            dfr: 0xffff_ffff,
            svr: 0xff,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            icr: 0,
            lvt: [LVT_MASKED; 7],
            timer: timer::Timer::default(),
            nmi_pending: false,
            init_pending: false,
            sipi_pending: None,
            extint_pending: None,
            apic_enabled: true,
            startup_suspend: false,
            reslice: false,
        }
    }

    /// Whether the 8259's INTR reaches the processor (an ExtINT request is taken): LVT
    /// LINT0 unmasked with delivery mode ExtINT, or the APIC globally disabled, where
    /// LINT0 is the processor's INTR pin (SDM vol 3 11.4.3, 11.5.1: ExtINT "causes the
    /// processor to respond to the interrupt as if the interrupt originated in an
    /// externally connected (8259A-compatible) interrupt controller"; KVM
    /// `kvm_apic_accept_pic_intr`, QEMU `apic_accept_pic_intr`). A software-disabled
    /// APIC has every LVT entry masked (11.4.7.2), so it refuses it too. Held
    /// otherwise, as the 8259's INTR stays high: a guest that later programs LINT0 as
    /// ExtINT takes it then. LINT0 in fixed or NMI mode, which would turn the INTR into
    /// the LVT's own vector, is not modelled: the interrupt waits (KVM, too, takes the
    /// 8259's interrupt only through ExtINT mode).
    pub fn accepts_pic(&self) -> bool {
        let lint0 = self.lvt[4];
        !self.apic_enabled || lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == 7
    }

    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLED != 0
    }

    /// CR8: TPR[7:4] (SDM vol 3 11.8.6). The processor's CR8 and the register page's
    /// TPR are this one register: the TPR here is the only copy.
    pub fn cr8(&self) -> u64 {
        (self.tpr >> 4) as u64
    }

    /// A write of CR8 (a MOV, or the VMM's `HV_X64_REGISTER_CR8`): TPR[7:4] takes
    /// bits 3:0 and TPR[3:0] is cleared (SDM vol 3 11.8.6); higher bits are ignored.
    pub fn set_cr8(&mut self, value: u64) {
        self.tpr = ((value & 0xf) << 4) as u32;
    }

    /// PPR: the TPR or the in-service class, whichever is higher (SDM vol 3 11.8.3.1).
    pub fn ppr(&self) -> u32 {
        let isrv = highest(&self.isr).unwrap_or(0) as u32;
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    /// The highest pending fixed interrupt whose class exceeds PPR's.
    pub fn deliverable(&self) -> Option<u8> {
        let v = highest(&self.irr)?;
        ((v as u32 >> 4) > (self.ppr() >> 4)).then_some(v)
    }

    /// The `EVENT_*` bits this state raises.
    pub fn events(&self) -> u32 {
        let mut e = 0;
        if self.deliverable().is_some() || self.extint_pending.is_some() && self.accepts_pic() {
            e |= EVENT_MASKABLE;
        }
        if self.nmi_pending
            || self.init_pending
            || self.sipi_pending.is_some() && self.startup_suspend
        {
            e |= EVENT_URGENT;
        }
        if self.reslice {
            e |= EVENT_RESLICE;
        }
        e
    }

    /// Accepts an interrupt (SDM vol 3 11.5.2, 11.6): a fixed one sets IRR (and TMR for
    /// level-triggered), unless the APIC is software-disabled, which drops it, or the
    /// vector is an illegal one (0-15), which no APIC sets an IRR bit for (11.5.3,
    /// "Received Illegal Vector"; an x2APIC SELF IPI or an ICR may send one).
    pub fn accept(&mut self, kind: InterruptKind, vector: u8, level: bool) {
        match kind {
            InterruptKind::Fixed | InterruptKind::LowestPriority => {
                if !self.software_enabled() || vector < 16 {
                    return;
                }
                let (i, b) = bit(vector);
                self.irr[i] |= b;
                if level {
                    self.tmr[i] |= b;
                } else {
                    self.tmr[i] &= !b;
                }
            }
            InterruptKind::Nmi => self.nmi_pending = true,
            InterruptKind::Init => {
                self.init_pending = true;
                self.sipi_pending = None;
            }
            InterruptKind::Sipi => {
                // Taken only in wait-for-SIPI, which an INIT not yet processed leads to
                // (SDM vol 3 10.4.2: a SIPI to a processor not waiting for one is
                // ignored).
                if self.startup_suspend || self.init_pending {
                    self.sipi_pending = Some(vector);
                }
            }
            InterruptKind::ExtInt => self.extint_pending = Some(vector),
        }
    }

    /// The event to deliver now (see `sim_cpu::Env::take_event`); a fixed interrupt
    /// moves from IRR to ISR.
    pub fn take(&mut self, interruptible: bool, nmi_blocked: bool) -> Option<Event> {
        if self.init_pending {
            self.init_pending = false;
            return Some(Event::Init);
        }
        if self.startup_suspend {
            // Waiting for SIPI: nothing else is taken (SDM vol 3 10.4.2).
            return self.sipi_pending.take().map(Event::Sipi);
        }
        if self.nmi_pending && !nmi_blocked {
            self.nmi_pending = false;
            return Some(Event::Nmi);
        }
        if !interruptible {
            return None;
        }
        if self.accepts_pic() {
            if let Some(v) = self.extint_pending.take() {
                // ExtINT: the vector comes from the external controller; no IRR or ISR.
                return Some(Event::Interrupt(v));
            }
        }
        let v = self.deliverable()?;
        let (i, b) = bit(v);
        self.irr[i] &= !b;
        self.isr[i] |= b;
        Some(Event::Interrupt(v))
    }

    /// EOI: the highest in-service vector is done. Returns it when it was level-triggered
    /// (the VMM hears of that EOI). The TMR bit stays: SDM vol 3 11.8.4 sets or clears
    /// it only when an interrupt is accepted into the IRR, so it tells the vector's last
    /// trigger mode until the next acceptance (kvm-unit-tests' ioapic.c reads it set
    /// before a second level interrupt, and clear in an edge one's handler).
    pub fn eoi(&mut self) -> Option<u8> {
        let v = highest(&self.isr)?;
        let (i, b) = bit(v);
        self.isr[i] &= !b;
        (self.tmr[i] & b != 0).then_some(v)
    }

    /// Reads register `offset` at guest time `now` (ns).
    pub fn read(&self, offset: u32, now: u64) -> u32 {
        match offset {
            ID => self.id << 24,
            VERSION => VERSION_VALUE,
            TPR => self.tpr,
            APR => 0,
            PPR => self.ppr(),
            LDR => self.ldr,
            DFR => self.dfr,
            SVR => self.svr,
            o if (ISR..ISR + 0x80).contains(&o) => self.isr[((o - ISR) >> 4) as usize],
            o if (TMR..TMR + 0x80).contains(&o) => self.tmr[((o - TMR) >> 4) as usize],
            o if (IRR..IRR + 0x80).contains(&o) => self.irr[((o - IRR) >> 4) as usize],
            ESR => self.esr,
            ICR_LOW => self.icr as u32 & !(1 << 12),
            ICR_HIGH => (self.icr >> 32) as u32,
            LVT_CMCI => self.lvt[0],
            LVT_TIMER => self.lvt[1],
            LVT_THERMAL => self.lvt[2],
            LVT_PERF => self.lvt[3],
            LVT_LINT0 => self.lvt[4],
            LVT_LINT1 => self.lvt[5],
            LVT_ERROR => self.lvt[6],
            TIMER_INITIAL => self.timer.initial,
            TIMER_CURRENT => self.timer.current(now),
            TIMER_DIVIDE => self.timer.divide_config,
            _ => 0,
        }
    }

    /// Writes register `offset`. Returns an IPI to route (an ICR write) and a vector
    /// whose EOI the VMM must hear of.
    pub fn write(&mut self, offset: u32, value: u32, now: u64) -> (Option<Ipi>, Option<u8>) {
        match offset {
            ID => self.id = value >> 24,
            TPR => self.tpr = value & 0xff,
            EOI => return (None, self.eoi()),
            LDR => self.ldr = value & 0xff00_0000,
            DFR => self.dfr = value | 0x0fff_ffff,
            SVR => {
                self.svr = value & SVR_BITS;
                if !self.software_enabled() {
                    // Software disable masks every LVT entry (SDM vol 3 11.4.7.2).
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                }
            }
            ESR => self.esr = 0,
            ICR_HIGH => self.icr = (self.icr & 0xffff_ffff) | (value as u64) << 32,
            ICR_LOW => {
                self.icr = (self.icr & !0xffff_ffff) | value as u64;
                return (self.send(false), None);
            }
            TIMER_INITIAL => {
                self.timer.set_initial(value, self.lvt[1], now);
                self.reslice = true;
            }
            TIMER_DIVIDE => {
                self.timer.set_divide(value, now);
                self.reslice = true;
            }
            // The LVT, or a register that takes no write.
            o => {
                if let Some(i) = lvt_index(o) {
                    let mut v = value & LVT_BITS[i];
                    if !self.software_enabled() {
                        v |= LVT_MASKED;
                    }
                    if i == 1 {
                        self.timer.set_mode(v, now);
                        self.reslice = true;
                    }
                    self.lvt[i] = v;
                }
            }
        }
        (None, None)
    }

    /// The IPI an ICR write sends (SDM vol 3 11.6.1); `wide`: the x2APIC ICR's 32-bit
    /// destination (11.12.9), else the xAPIC ICR's bits 63:56.
    fn send(&self, wide: bool) -> Option<Ipi> {
        let lo = self.icr as u32;
        let kind = match (lo >> 8) & 7 {
            0 => InterruptKind::Fixed,
            1 => InterruptKind::LowestPriority,
            4 => InterruptKind::Nmi,
            5 => {
                // INIT level de-assert (level 0, trigger level): a no-op since the P4.
                if lo & (1 << 14) == 0 && lo & (1 << 15) != 0 {
                    return None;
                }
                InterruptKind::Init
            }
            6 => InterruptKind::Sipi,
            _ => return None,
        };
        Some(Ipi {
            kind,
            vector: lo as u8,
            destination: if wide {
                (self.icr >> 32) as u32
            } else {
                (self.icr >> 56) as u32
            },
            logical: lo & (1 << 11) != 0,
            level: lo & (1 << 15) != 0,
            shorthand: ((lo >> 18) & 3) as u8,
            from: self.id,
            wide,
        })
    }

    /// The logical x2APIC ID, which x2APIC mode derives from the x2APIC ID (SDM vol 3
    /// 11.12.10.2): the cluster (id[19:4]) in bits 31:16, and bit id[3:0] set of the
    /// cluster's 16.
    pub fn x2apic_ldr(&self) -> u32 {
        ((self.id >> 4) << 16) | 1 << (self.id & 0xf)
    }

    /// RDMSR of the x2APIC register at MMIO offset `offset` (MSR 0x800 + offset / 16)
    /// at guest time `now` (SDM vol 3 11.12.1.2, Table 11-6): the ID is the 32-bit
    /// x2APIC ID, the LDR the logical ID derived from it, the ICR one 64-bit register.
    /// EOI and SELF IPI are write-only; x2APIC mode has no DFR, APR or ICR high, and
    /// no CMCI entry where the version register counts six LVT entries.
    pub fn x2apic_read(&self, offset: u32, now: u64) -> Result<u64, X2apicFault> {
        Ok(match offset {
            ID => self.id as u64,
            LDR => self.x2apic_ldr() as u64,
            ICR_LOW => self.icr & !X2APIC_ICR_RESERVED,
            VERSION | TPR | PPR | SVR | ESR | TIMER_INITIAL | TIMER_CURRENT | TIMER_DIVIDE => {
                self.read(offset, now) as u64
            }
            o if (ISR..IRR + 0x80).contains(&o) => self.read(o, now) as u64,
            o if lvt_index(o).is_some_and(|i| i > 0) => self.read(o, now) as u64,
            _ => return Err(X2apicFault),
        })
    }

    /// WRMSR of the x2APIC register at MMIO offset `offset` (SDM vol 3 11.12.1.2,
    /// 11.12.1.3, Table 11-6): the registers RDMSR reads, but for the read-only ones
    /// (ID, version, PPR, LDR, ISR, TMR, IRR, current count), and EOI and SELF IPI.
    /// Bits 63:32 are reserved but in the ICR, and a reserved bit set is #GP; EOI and
    /// the ESR take only 0. What it sends and the EOI the VMM must hear of are
    /// [`ApicState::write`]'s.
    pub fn x2apic_write(
        &mut self,
        offset: u32,
        value: u64,
        now: u64,
    ) -> Result<(Option<Ipi>, Option<u8>), X2apicFault> {
        if offset == ICR_LOW {
            if value & X2APIC_ICR_RESERVED != 0 {
                return Err(X2apicFault);
            }
            self.icr = value;
            return Ok((self.send(true), None));
        }
        let v = u32::try_from(value).map_err(|_| X2apicFault)?;
        let reserved = match offset {
            TPR => !0xff,
            EOI | ESR => !0,
            SVR => !SVR_BITS,
            TIMER_INITIAL => 0,
            TIMER_DIVIDE => !0xb,
            // SDM vol 3 11.12.11: bits 31:8 reserved.
            SELF_IPI => !0xff,
            o => match lvt_index(o) {
                Some(i) if i > 0 => !(LVT_BITS[i] | LVT_READ_ONLY[i]),
                _ => return Err(X2apicFault),
            },
        };
        if v & reserved != 0 {
            return Err(X2apicFault);
        }
        if offset == SELF_IPI {
            // A fixed, edge-triggered IPI to itself (SDM vol 3 11.12.11).
            return Ok((
                Some(Ipi {
                    kind: InterruptKind::Fixed,
                    vector: v as u8,
                    destination: self.id,
                    logical: false,
                    level: false,
                    shorthand: 1,
                    from: self.id,
                    wide: true,
                }),
                None,
            ));
        }
        Ok(self.write(offset, v, now))
    }

    /// The local APIC at power-up (SDM vol 3 11.4.7.1), with the APIC ID register back
    /// at the initial APIC ID `initial_id`: what clearing IA32_APIC_BASE.EN leaves (11.4.3:
    /// "the APIC may return to the state described in Section 11.4.7.1"; KVM sets the
    /// xAPIC ID back to the vCPU's when it is enabled again). NMI, INIT and SIPI
    /// pending stay: they are the processor's, not the APIC's registers.
    pub fn power_up(&mut self, initial_id: u32) {
        let mut s = ApicState::reset(initial_id);
        s.nmi_pending = self.nmi_pending;
        s.init_pending = self.init_pending;
        s.sipi_pending = self.sipi_pending;
        s.extint_pending = self.extint_pending;
        s.apic_enabled = self.apic_enabled;
        s.startup_suspend = self.startup_suspend;
        // The timer is disarmed: the run looks again.
        s.reslice = true;
        *self = s;
    }

    /// Whether this APIC is a target of `destination` in `logical` mode (SDM vol 3
    /// 11.6.2): physical ids match or broadcast 0xFF; logical flat mode ANDs the
    /// 8-bit LDR; cluster mode matches the cluster and ANDs the low four bits.
    /// `x2apic`: this APIC is in x2APIC mode (11.12.9, 11.12.10.2): the 32-bit x2APIC
    /// ID, the logical ID's cluster (bits 31:16) and 16-bit mask, broadcast
    /// 0xFFFFFFFF in both. `wide`: the destination is an x2APIC ICR's 32 bits; an
    /// 8-bit one's 0xFF (an xAPIC ICR's, an I/O APIC's, an MSI's) reaches an x2APIC
    /// APIC as a broadcast, as KVM's `kvm_apic_mda` maps it.
    pub fn is_destination(
        &self,
        destination: u32,
        logical: bool,
        x2apic: bool,
        wide: bool,
    ) -> bool {
        if destination == 0xffff_ffff || x2apic && !wide && destination == 0xff {
            return true;
        }
        if x2apic {
            if !logical {
                return destination == self.id;
            }
            let ldr = self.x2apic_ldr();
            return destination >> 16 == ldr >> 16 && destination & ldr & 0xffff != 0;
        }
        if !logical {
            return destination == 0xff || destination == self.id;
        }
        let ldr = self.ldr >> 24;
        if self.dfr >> 28 == 0xf {
            ldr & destination != 0
        } else {
            ldr >> 4 == destination >> 4 && ldr & destination & 0xf != 0
        }
    }

    /// Fires the LVT timer if it is due at `now`; its next deadline, if armed.
    pub fn tick(&mut self, now: u64) -> Option<u64> {
        if self.timer.due(now) {
            let lvt = self.lvt[1];
            if lvt & LVT_MASKED == 0 {
                self.accept(InterruptKind::Fixed, lvt as u8, false);
            }
            self.timer.fired(now, lvt);
        }
        self.timer.deadline
    }
}

/// One vCPU's local APIC, shared between the vCPU (its register page, its events)
/// and everyone who sends it interrupts (the VMM, the other vCPUs' IPIs).
pub struct LocalApic {
    pub index: u32,
    /// Reached only through [`LocalApic::lock`], whose guard keeps the mirrors below
    /// true.
    state: Mutex<ApicState>,
    /// The processor's `events` word.
    pub events: Arc<AtomicU32>,
    /// Wakes the vCPU when it blocks in a halt.
    pub wake: Condvar,
    pub sleep: Mutex<()>,
    /// For the deterministic clock: [`RUNNING`] while the vCPU executes (or was
    /// stopped mid-run by its budget), else the guest time its halt ends at (`u64::MAX`:
    /// only an interrupt ends it, or it never ran).
    pub wake_at: AtomicU64,
    /// A mirror of the timer's deadline (`u64::MAX`: none), rewritten each time the
    /// state lock is released: the vCPU's run looks at it before every slice, so with
    /// no event pending it needs no lock (see [`LocalApic::quiet`]).
    timer_deadline: AtomicU64,
    /// A mirror of startup suspend, kept as `timer_deadline` is.
    asleep: std::sync::atomic::AtomicBool,
    /// x2APIC mode: IA32_APIC_BASE's EN and EXTD both set (SDM vol 3 11.12.1). It is
    /// the processor's MSR, which INIT leaves as it is (11.12.5.1), so it lives beside
    /// the register state INIT resets; [`LocalApic::set_base`] keeps it.
    x2apic: std::sync::atomic::AtomicBool,
}

/// IA32_APIC_BASE's APIC global enable (EN, bit 11) and x2APIC enable (EXTD, bit 10)
/// (SDM vol 3 11.4.4, 11.12.1).
pub const APIC_BASE_EN: u64 = 1 << 11;
pub const APIC_BASE_EXTD: u64 = 1 << 10;

/// The locked state of a [`LocalApic`]; dropping it refreshes the mirrors.
pub struct ApicGuard<'a> {
    apic: &'a LocalApic,
    state: std::sync::MutexGuard<'a, ApicState>,
}

impl std::ops::Deref for ApicGuard<'_> {
    type Target = ApicState;
    fn deref(&self) -> &ApicState {
        &self.state
    }
}

impl std::ops::DerefMut for ApicGuard<'_> {
    fn deref_mut(&mut self) -> &mut ApicState {
        &mut self.state
    }
}

impl Drop for ApicGuard<'_> {
    fn drop(&mut self) {
        let s = &*self.state;
        self.apic
            .timer_deadline
            .store(s.timer.deadline.unwrap_or(u64::MAX), Ordering::Release);
        self.apic.asleep.store(s.startup_suspend, Ordering::Release);
    }
}

/// [`LocalApic::wake_at`] of a vCPU that is executing instructions.
pub const RUNNING: u64 = 0;

impl LocalApic {
    pub fn new(index: u32, events: Arc<AtomicU32>) -> LocalApic {
        LocalApic {
            index,
            state: Mutex::new(ApicState::reset(index)),
            events,
            wake: Condvar::new(),
            sleep: Mutex::new(()),
            wake_at: AtomicU64::new(u64::MAX),
            timer_deadline: AtomicU64::new(u64::MAX),
            asleep: std::sync::atomic::AtomicBool::new(false),
            x2apic: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the APIC is in x2APIC mode.
    pub fn is_x2apic(&self) -> bool {
        self.x2apic.load(Ordering::Acquire)
    }

    /// The mode IA32_APIC_BASE `base` says, as a restored state sets it: no transition.
    pub fn restore_mode(&self, base: u64) {
        self.x2apic.store(
            base & (APIC_BASE_EN | APIC_BASE_EXTD) == APIC_BASE_EN | APIC_BASE_EXTD,
            Ordering::Release,
        );
    }

    /// IA32_APIC_BASE went from `old` to `new`. Clearing EN puts the APIC in its
    /// power-up state, the APIC ID register at the initial APIC ID (SDM vol 3 11.4.3,
    /// 11.4.7.1); setting it again finds the initial ID there too (KVM's
    /// `kvm_lapic_set_base`, which kvm-unit-tests' apic.c "correct xapic id after
    /// reset" reads). Entering x2APIC mode makes the ID the x2APIC ID, the initial
    /// APIC ID, read-only from then on (11.12.5.1; KVM's `kvm_apic_set_x2apic_id`).
    /// The transitions are the processor's to check (11.12.5).
    pub fn set_base(&self, old: u64, new: u64) {
        let mut s = self.lock();
        if old & APIC_BASE_EN != 0 && new & APIC_BASE_EN == 0 {
            s.power_up(self.index);
        }
        if old & APIC_BASE_EN == 0 && new & APIC_BASE_EN != 0
            || old & APIC_BASE_EXTD == 0 && new & APIC_BASE_EXTD != 0
        {
            s.id = self.index;
        }
        s.apic_enabled = new & APIC_BASE_EN != 0;
        self.x2apic.store(
            new & (APIC_BASE_EN | APIC_BASE_EXTD) == APIC_BASE_EN | APIC_BASE_EXTD,
            Ordering::Release,
        );
        self.events.store(s.events(), Ordering::Release);
    }

    pub fn lock(&self) -> ApicGuard<'_> {
        ApicGuard {
            apic: self,
            state: self.state.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The timer's deadline and startup suspend when nothing can have changed them
    /// since the last look: no event pending (an APIC write that re-arms the timer
    /// raises `EVENT_RESLICE`, an INIT or SIPI `EVENT_URGENT`) and the deadline not yet
    /// due at `now`. Else the run takes the lock.
    #[inline]
    pub fn quiet(&self, now: u64) -> Option<Option<u64>> {
        if self.events.load(Ordering::Acquire) != 0 || self.asleep.load(Ordering::Acquire) {
            return None;
        }
        let d = self.timer_deadline.load(Ordering::Acquire);
        (now < d).then_some((d != u64::MAX).then_some(d))
    }

    /// Publishes `state`'s events and wakes the vCPU if something arrived.
    pub fn publish(&self, state: &ApicState) {
        let e = state.events();
        self.events.store(e, Ordering::Release);
        if e != 0 {
            // Something may wake it: until it looks, it counts as running, so no
            // other vCPU leaps the deterministic clock past its interrupt.
            self.wake_at.store(RUNNING, Ordering::Release);
            self.kick();
        }
    }

    /// Wakes the vCPU from a blocking halt.
    pub fn kick(&self) {
        let _g = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> ApicState {
        let mut s = ApicState::reset(0);
        s.write(SVR, 0x1ff, 0);
        s
    }

    #[test]
    fn priority_arbitration_takes_the_highest_class_above_ppr() {
        let mut s = enabled();
        s.accept(InterruptKind::Fixed, 0x31, false);
        s.accept(InterruptKind::Fixed, 0x52, false);
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x52)));
        // 0x31's class (3) is below the in-service class (5): it waits.
        assert_eq!(s.take(true, false), None);
        assert_eq!(s.ppr(), 0x50);
        assert_eq!(s.eoi(), None);
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x31)));
        // TPR masks a class: 0x40 holds off 0x45 but not 0x55.
        s.eoi();
        s.write(TPR, 0x40, 0);
        s.accept(InterruptKind::Fixed, 0x45, false);
        assert_eq!(s.take(true, false), None);
        s.accept(InterruptKind::Fixed, 0x55, false);
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x55)));
    }

    /// SDM vol 3 11.4.7.1 (every LVT entry masked after RESET) and 11.5.1 (LINT0's
    /// delivery mode ExtINT hands the 8259's INTR to the processor); KVM's
    /// `kvm_apic_accept_pic_intr`: the 8259's interrupt waits, held as its INTR is,
    /// until the guest unmasks LINT0 in ExtINT mode, and is taken once.
    #[test]
    fn sdm_11_5_1_an_extint_waits_while_lint0_is_masked_and_is_taken_once_lint0_is_extint() {
        let mut s = enabled();
        s.accept(InterruptKind::ExtInt, 0x08, false);
        assert!(!s.accepts_pic(), "LINT0 masked at reset");
        assert_eq!(s.events() & EVENT_MASKABLE, 0, "nothing wakes the vCPU");
        assert_eq!(s.take(true, false), None);
        assert_eq!(s.extint_pending, Some(0x08), "held, not dropped");
        // Fixed mode, unmasked: not the 8259's path (the LVT's own vector); it waits.
        s.write(LVT_LINT0, 0x0000_0031, 0);
        assert_eq!(s.take(true, false), None);
        // ExtINT, level (SeaBIOS `smp_setup`'s 0x8700).
        s.write(LVT_LINT0, 0x0000_8700, 0);
        assert_ne!(s.events() & EVENT_MASKABLE, 0);
        assert_eq!(s.take(false, false), None, "IF clear: not yet");
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x08)));
        assert_eq!(s.take(true, false), None, "taken once");
        assert_eq!(s.isr, [0; 8], "an ExtINT has no ISR bit");
    }

    /// SDM vol 3 11.4.7.2: software disable (SVR bit 8 clear) masks every LVT entry, so
    /// the 8259's interrupt waits; 11.4.3: with IA32_APIC_BASE.EN clear LINT0 is the
    /// processor's INTR pin and it is taken whatever the LVT says (QEMU
    /// `apic_accept_pic_intr`, KVM `kvm_apic_accept_pic_intr`: `!apic_hw_enabled`).
    #[test]
    fn sdm_11_4_3_extint_taken_with_the_apic_globally_disabled_held_when_software_disabled() {
        let mut s = enabled();
        s.write(LVT_LINT0, 0x700, 0);
        assert!(s.accepts_pic());
        s.write(SVR, 0xff, 0);
        assert_eq!(s.read(LVT_LINT0, 0), LVT_MASKED | 0x700);
        s.accept(InterruptKind::ExtInt, 0x20, false);
        assert_eq!(s.take(true, false), None, "software-disabled: LINT0 masked");
        s.apic_enabled = false;
        assert_ne!(s.events() & EVENT_MASKABLE, 0);
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x20)));
    }

    /// The VMM's `set_lint` (CH, QEMU) and KVM's LINT0_REENABLED reset give the BSP an
    /// unmasked ExtINT LINT0 with the APIC software-disabled (SVR 0xFF): the 8259's
    /// interrupts reach a guest that never touches its APIC, as after a BIOS.
    #[test]
    fn kvm_lint0_reenabled_the_bsps_extint_is_taken_with_the_apic_software_disabled() {
        let mut s = ApicState::reset(0);
        let mut page = s.save(0, false).0;
        hv_core::lapic::lint_page(&mut page, true).unwrap();
        let mut s2 = ApicState::restore(&page, |_| None, false, 0, false).unwrap();
        assert_eq!(s2.read(LVT_LINT0, 0), 0x700);
        assert_eq!(s2.read(LVT_LINT1, 0), LVT_MASKED | 0x400);
        assert_eq!(s2.read(SVR, 0), 0xff);
        s2.accept(InterruptKind::ExtInt, 0x08, false);
        assert_eq!(s2.take(true, false), Some(Event::Interrupt(0x08)));
        s.accept(InterruptKind::ExtInt, 0x08, false);
        assert_eq!(
            s.take(true, false),
            None,
            "without set_lint: the SDM's reset state"
        );
    }

    #[test]
    fn a_level_triggered_eoi_is_reported_and_a_disabled_apic_drops_fixed_interrupts() {
        let mut s = enabled();
        s.accept(InterruptKind::Fixed, 0x40, true);
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x40)));
        assert_eq!(s.write(EOI, 0, 0), (None, Some(0x40)));
        let mut off = ApicState::reset(0);
        off.accept(InterruptKind::Fixed, 0x40, false);
        assert_eq!(off.irr, [0; 8]);
        off.accept(InterruptKind::Nmi, 0, false);
        assert_eq!(off.take(false, false), Some(Event::Nmi));
    }

    #[test]
    fn tmr_changes_at_acceptance_not_at_eoi_sdm_11_8_4() {
        let mut s = enabled();
        let tmr = |s: &ApicState| s.read(TMR + 0x30, 0) & (1 << (0x79 - 0x60)) != 0;
        s.accept(InterruptKind::Fixed, 0x79, true);
        assert!(tmr(&s), "a level-triggered acceptance sets TMR");
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x79)));
        assert_eq!(s.eoi(), Some(0x79));
        assert!(tmr(&s), "the EOI leaves TMR as the last acceptance set it");
        s.accept(InterruptKind::Fixed, 0x79, false);
        assert!(!tmr(&s), "an edge-triggered acceptance clears it");
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x79)));
        assert_eq!(s.eoi(), None, "an edge-triggered EOI is not the VMM's");
    }

    #[test]
    fn destinations_physical_flat_and_cluster() {
        let mut s = enabled();
        s.id = 3;
        s.write(LDR, 0x0400_0000, 0);
        let xapic = |s: &ApicState, d, logical| s.is_destination(d, logical, false, false);
        assert!(xapic(&s, 3, false) && xapic(&s, 0xff, false) && !xapic(&s, 1, false));
        assert!(xapic(&s, 0x06, true) && !xapic(&s, 0x01, true));
        s.write(DFR, 0x0fff_ffff, 0);
        s.write(LDR, 0x2400_0000, 0);
        assert!(xapic(&s, 0x26, true) && !xapic(&s, 0x16, true));
    }

    /// SDM vol 3 11.12.9, 11.12.10.2: in x2APIC mode the physical destination is the
    /// 32-bit x2APIC ID, the logical one a cluster (bits 31:16) and a 16-bit mask, the
    /// logical ID derived from the x2APIC ID; 0xFFFFFFFF is the broadcast in both.
    #[test]
    fn x2apic_destinations_physical_cluster_and_broadcast_sdm_11_12_9() {
        let mut s = enabled();
        s.id = 0x25; // cluster 2, bit 5
        assert_eq!(s.x2apic_ldr(), 0x0002_0020);
        assert_eq!(s.x2apic_read(LDR, 0), Ok(0x0002_0020));
        let x2 = |d, logical| s.is_destination(d, logical, true, true);
        assert!(x2(0x25, false) && !x2(0x05, false) && !x2(0x125, false));
        assert!(x2(0x0002_0030, true) && !x2(0x0002_0010, true) && !x2(0x0003_0020, true));
        assert!(x2(0xffff_ffff, false) && x2(0xffff_ffff, true));
        // An 8-bit destination (an I/O APIC's): 0xFF is the broadcast; a logical one
        // is cluster 0 (kvm-unit-tests ioapic test_ioapic_logical_destination_mode).
        s.id = 2;
        assert!(s.is_destination(0xff, false, true, false));
        assert!(s.is_destination(0x0d, true, true, false));
        assert!(!s.is_destination(0x0b, true, true, false));
    }

    /// SDM vol 3 11.12.1.2 (Table 11-6), 11.12.1.3: which registers the x2APIC MSRs
    /// reach, read-only and write-only ones, reserved bits, the 64-bit ICR, SELF IPI.
    #[test]
    fn x2apic_msr_interface_sdm_11_12_1() {
        let mut s = enabled();
        s.id = 7;
        assert_eq!(s.x2apic_read(ID, 0), Ok(7));
        assert_eq!(s.x2apic_read(VERSION, 0), Ok(VERSION_VALUE as u64));
        for absent in [
            0x00, 0x10, APR, DFR, ICR_HIGH, LVT_CMCI, 0x3a0, 0x400, 0xff0,
        ] {
            assert_eq!(s.x2apic_read(absent, 0), Err(X2apicFault), "{absent:#x}");
            assert_eq!(
                s.x2apic_write(absent, 0, 0),
                Err(X2apicFault),
                "{absent:#x}"
            );
        }
        for write_only in [EOI, SELF_IPI] {
            assert_eq!(s.x2apic_read(write_only, 0), Err(X2apicFault));
        }
        for read_only in [ID, VERSION, PPR, LDR, ISR, TMR + 0x70, IRR, TIMER_CURRENT] {
            assert_eq!(
                s.x2apic_write(read_only, 0, 0),
                Err(X2apicFault),
                "{read_only:#x}"
            );
        }
        // Bits 63:32 reserved everywhere but the ICR; reserved bits in the low half.
        assert_eq!(s.x2apic_write(TPR, 1 << 32, 0), Err(X2apicFault));
        assert_eq!(s.x2apic_write(TPR, 0x100, 0), Err(X2apicFault));
        assert_eq!(s.x2apic_write(LVT_TIMER, 0x0008_0000, 0), Err(X2apicFault));
        assert_eq!(s.x2apic_write(TIMER_DIVIDE, 4, 0), Err(X2apicFault));
        assert_eq!(s.x2apic_write(ESR, 1, 0), Err(X2apicFault));
        assert_eq!(s.x2apic_write(EOI, 1, 0), Err(X2apicFault));
        assert_eq!(s.x2apic_write(SELF_IPI, 0x100, 0), Err(X2apicFault));
        assert_eq!(s.x2apic_write(ICR_LOW, 1 << 12, 0), Err(X2apicFault));
        // Read-only LVT bits (delivery status, remote IRR) are no violation.
        assert_eq!(s.x2apic_write(LVT_LINT0, 0x0001_5700, 0), Ok((None, None)));
        assert_eq!(s.x2apic_read(LVT_LINT0, 0), Ok(0x0001_0700));
        assert_eq!(s.x2apic_write(TPR, 0x20, 0), Ok((None, None)));
        assert_eq!(s.x2apic_read(TPR, 0), Ok(0x20));
        // The ICR: 32-bit destination in bits 63:32.
        let (ipi, _) = s.x2apic_write(ICR_LOW, 0x1234_5678_0000_48f1, 0).unwrap();
        let ipi = ipi.unwrap();
        assert_eq!(
            (ipi.destination, ipi.logical, ipi.vector, ipi.wide),
            (0x1234_5678, true, 0xf1, true)
        );
        assert_eq!(s.x2apic_read(ICR_LOW, 0), Ok(0x1234_5678_0000_48f1));
        // SELF IPI: a fixed edge IPI to itself.
        let (ipi, _) = s.x2apic_write(SELF_IPI, 0x41, 0).unwrap();
        let ipi = ipi.unwrap();
        assert_eq!(
            (ipi.kind, ipi.vector, ipi.shorthand, ipi.level),
            (InterruptKind::Fixed, 0x41, 1, false)
        );
        // EOI of a level-triggered vector is reported.
        s.accept(InterruptKind::Fixed, 0x50, true);
        assert_eq!(s.take(true, false), Some(Event::Interrupt(0x50)));
        assert_eq!(s.x2apic_write(EOI, 0, 0), Ok((None, Some(0x50))));
    }

    /// SDM vol 3 11.5.3: an illegal vector (0-15) sets no IRR bit.
    #[test]
    fn an_illegal_vector_is_not_accepted_sdm_11_5_3() {
        let mut s = enabled();
        s.accept(InterruptKind::Fixed, 0, false);
        s.accept(InterruptKind::Fixed, 15, false);
        assert_eq!(s.irr, [0; 8]);
    }

    /// SDM vol 3 11.4.3, 11.4.7.1: clearing IA32_APIC_BASE.EN returns the APIC to its
    /// power-up state, the ID at the initial APIC ID (kvm-unit-tests apic "correct
    /// xapic id after reset"); entering x2APIC mode makes the ID the x2APIC ID.
    #[test]
    fn disabling_the_apic_resets_it_and_x2apic_mode_takes_the_initial_id_sdm_11_4_3() {
        let apic = LocalApic::new(1, Arc::new(AtomicU32::new(0)));
        let on = 0xfee0_0000 | APIC_BASE_EN;
        {
            let mut s = apic.lock();
            s.write(SVR, 0x1ff, 0);
            s.write(ID, 5 << 24, 0);
            s.write(TPR, 0x20, 0);
            s.accept(InterruptKind::Fixed, 0x40, false);
            s.accept(InterruptKind::Nmi, 0, false);
        }
        apic.set_base(on, on & !APIC_BASE_EN);
        apic.set_base(on & !APIC_BASE_EN, on);
        {
            let s = apic.lock();
            assert_eq!(s.read(ID, 0), 1 << 24, "the initial APIC ID");
            assert_eq!((s.tpr, s.svr, s.irr), (0, 0xff, [0; 8]));
            assert!(s.nmi_pending, "an NMI is the processor's");
        }
        assert!(!apic.is_x2apic());
        apic.lock().write(ID, 9 << 24, 0);
        apic.set_base(on, on | APIC_BASE_EXTD);
        assert!(apic.is_x2apic());
        assert_eq!(apic.lock().x2apic_read(ID, 0), Ok(1));
    }
}

#[cfg(test)]
mod property;
