//! What the hypervisor decides for its processor: CPUID from the results the VMM
//! registered over the processor's own, which MSRs exit, and the local APIC it
//! emulates (register page, events, timer MSRs), on the partition's clock.

use crate::apic::bus::ApicBus;
use crate::apic::LocalApic;
use crate::clock::Clock;
use crate::SimConfig;
use hv_core::{CpuidResult, UnknownMsr};
use sim_cpu::{Event, X2apicWrite};

/// IA32_TSC (0x10), IA32_TSC_ADJUST is not modelled; IA32_TSC_DEADLINE (SDM vol 3
/// 11.5.4.1).
const TSC: u32 = 0x10;
const TSC_DEADLINE: u32 = 0x6e0;

pub struct SimEnv<'a> {
    pub config: &'a SimConfig,
    pub cpuid: &'a [CpuidResult],
    pub apic_id: u32,
    pub apic: &'a LocalApic,
    pub bus: &'a ApicBus,
    pub clock: &'a Clock,
    /// Added to guest time for the guest's view of the TSC (a WRMSR to IA32_TSC).
    pub tsc_offset: &'a mut i64,
    /// Set when the guest executes PAUSE: the run's poll hands the execution lock over.
    pub paused: &'a std::cell::Cell<bool>,
    /// Deterministic clock: the guest time the slice ends at (the next timer or guest
    /// deadline), which PAUSE's cost may not carry the TSC past; `due` is set when it
    /// reaches it, and the run's poll ends the slice.
    pub slice_end: Option<u64>,
    pub due: &'a std::cell::Cell<bool>,
}

impl SimEnv<'_> {
    /// Guest time at the processor's own count `local` (its TSC, one tick per
    /// instruction on the deterministic clock).
    fn time(&self, local: u64) -> u64 {
        if self.clock.deterministic() {
            local
        } else {
            self.clock.now()
        }
    }
}

impl sim_cpu::Env for SimEnv<'_> {
    fn pause(&mut self, now: u64) -> u64 {
        self.paused.set(true);
        if !self.clock.deterministic() {
            return 0;
        }
        // The instruction's own tick is counted by the processor; PAUSE_COST_NS in all,
        // but never past the slice's end (a timer due there fires on time).
        let room = self
            .slice_end
            .map_or(u64::MAX, |end| end.saturating_sub(now.saturating_add(1)));
        let extra = (crate::clock::PAUSE_COST_NS - 1).min(room);
        if extra == room {
            self.due.set(true);
        }
        extra
    }

    fn cpuid(&mut self, leaf: u32, subleaf: u32, native: [u32; 4]) -> [u32; 4] {
        hv_core::cpuid::apply(self.cpuid, leaf, subleaf, native)
    }

    fn msr_exits(&self, msr: u32) -> bool {
        self.config.intercept_msrs.contains(&msr)
    }

    fn unknown_msr(&self) -> UnknownMsr {
        self.config.unknown_msr
    }

    fn apic_id(&self) -> u32 {
        self.apic_id
    }

    fn take_event(&mut self, interruptible: bool, nmi_blocked: bool, now: u64) -> Option<Event> {
        let now = self.time(now);
        let mut s = self.apic.lock();
        s.tick(now);
        let e = s.take(interruptible, nmi_blocked);
        self.apic
            .events
            .store(s.events(), std::sync::atomic::Ordering::Release);
        e
    }

    fn tsc(&mut self, local: u64) -> u64 {
        self.time(local).wrapping_add(*self.tsc_offset as u64)
    }

    fn has_apic(&self) -> bool {
        true
    }

    fn apic_read(&mut self, offset: u32, now: u64) -> u32 {
        let now = self.time(now);
        let mut s = self.apic.lock();
        s.tick(now);
        s.read(offset, now)
    }

    fn apic_write(&mut self, offset: u32, value: u32, now: u64) -> Option<u8> {
        let now = self.time(now);
        let (ipi, eoi) = {
            let mut s = self.apic.lock();
            let r = s.write(offset, value, now);
            self.apic
                .events
                .store(s.events(), std::sync::atomic::Ordering::Release);
            r
        };
        // The sender's lock is released before the targets' are taken.
        if let Some(ipi) = ipi {
            self.bus.send(&ipi);
        }
        eoi
    }

    fn apic_base_written(&mut self, old: u64, new: u64) {
        self.apic.set_base(old, new);
    }

    fn x2apic_read(&mut self, offset: u32, now: u64) -> Option<u64> {
        let now = self.time(now);
        let mut s = self.apic.lock();
        s.tick(now);
        s.x2apic_read(offset, now).ok()
    }

    fn x2apic_write(&mut self, offset: u32, value: u64, now: u64) -> X2apicWrite {
        let now = self.time(now);
        let (ipi, eoi) = {
            let mut s = self.apic.lock();
            let Ok(r) = s.x2apic_write(offset, value, now) else {
                return X2apicWrite::Fault;
            };
            self.apic
                .events
                .store(s.events(), std::sync::atomic::Ordering::Release);
            r
        };
        // The sender's lock is released before the targets' are taken.
        if let Some(ipi) = ipi {
            self.bus.send(&ipi);
        }
        eoi.map_or(X2apicWrite::Done, X2apicWrite::Eoi)
    }

    fn read_cr8(&mut self) -> Option<u64> {
        Some(self.apic.lock().cr8())
    }

    fn write_cr8(&mut self, value: u64) -> bool {
        let mut s = self.apic.lock();
        s.set_cr8(value);
        self.apic
            .events
            .store(s.events(), std::sync::atomic::Ordering::Release);
        true
    }

    fn read_msr(&mut self, msr: u32, now: u64) -> Option<u64> {
        match msr {
            TSC => Some(self.tsc(now)),
            TSC_DEADLINE => Some(self.apic.lock().timer.tsc_deadline),
            _ => None,
        }
    }

    fn write_msr(&mut self, msr: u32, value: u64, now: u64) -> bool {
        match msr {
            TSC => {
                *self.tsc_offset = value.wrapping_sub(self.time(now)) as i64;
                true
            }
            TSC_DEADLINE => {
                let t = self.time(now);
                let deadline = value.wrapping_sub(*self.tsc_offset as u64);
                let mut s = self.apic.lock();
                s.timer
                    .set_tsc_deadline(if value == 0 { 0 } else { deadline.max(1) }, t);
                s.reslice = true;
                self.apic
                    .events
                    .store(s.events(), std::sync::atomic::Ordering::Release);
                true
            }
            _ => false,
        }
    }
}
