//! The partition's APIC bus: routes the VMM's interrupt requests
//! (`HVCALL_ASSERT_VIRTUAL_INTERRUPT`'s model) and the vCPUs' IPIs to the local APICs
//! they address (SDM vol 3 11.6.2 for destinations, 11.6.2.4 for lowest priority).

use super::{Ipi, LocalApic};
use crate::clock::Clock;
use hv_core::{HvError, InterruptKind, InterruptRequest, Interrupts, Result};
use std::sync::{Arc, RwLock};

pub struct ApicBus {
    apics: RwLock<Vec<Arc<LocalApic>>>,
    clock: Arc<Clock>,
}

impl ApicBus {
    pub fn new(clock: Arc<Clock>) -> ApicBus {
        ApicBus {
            apics: RwLock::default(),
            clock,
        }
    }

    pub fn add(&self, apic: Arc<LocalApic>) {
        if let Ok(mut a) = self.apics.write() {
            a.push(apic);
        }
    }

    fn all(&self) -> Vec<Arc<LocalApic>> {
        self.apics.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Whether a vCPU other than `index` is executing instructions (not halted, not
    /// waiting for a start-up IPI).
    pub fn another_running(&self, index: u32) -> bool {
        // Atomics only, no APIC's lock: read under the bus's lock, without the copy of
        // the list `all` makes (this runs at a spinning guest's PAUSEs).
        self.apics.read().is_ok_and(|apics| {
            apics.iter().any(|a| {
                a.index != index
                    && a.wake_at.load(std::sync::atomic::Ordering::Acquire) == super::RUNNING
            })
        })
    }

    /// When every vCPU waits in a halt: the earliest guest time one of them wakes at
    /// (`u64::MAX`: none wakes by itself). None while any vCPU is executing.
    pub fn earliest_wake(&self) -> Option<u64> {
        let mut earliest = u64::MAX;
        for a in self.all() {
            let w = a.wake_at.load(std::sync::atomic::Ordering::Acquire);
            if w == super::RUNNING {
                return None;
            }
            earliest = earliest.min(w);
        }
        Some(earliest)
    }

    /// Delivers an IPI from the APIC with id `ipi.from`.
    pub fn send(&self, ipi: &Ipi) {
        let targets: Vec<Arc<LocalApic>> = match ipi.shorthand {
            1 => self
                .all()
                .into_iter()
                .filter(|a| a.lock().id == ipi.from)
                .collect(),
            2 => self.all(),
            3 => self
                .all()
                .into_iter()
                .filter(|a| a.lock().id != ipi.from)
                .collect(),
            _ => self.targets(ipi.destination, ipi.logical, ipi.wide),
        };
        self.deliver(&targets, ipi.kind, ipi.vector, ipi.level);
    }

    /// The APICs `destination` addresses, each as its mode reads it (`wide`: an x2APIC
    /// ICR's 32-bit destination; else an 8-bit one).
    fn targets(&self, destination: u32, logical: bool, wide: bool) -> Vec<Arc<LocalApic>> {
        self.all()
            .into_iter()
            .filter(|a| {
                a.lock()
                    .is_destination(destination, logical, a.is_x2apic(), wide)
            })
            .collect()
    }

    fn deliver(&self, targets: &[Arc<LocalApic>], kind: InterruptKind, vector: u8, level: bool) {
        let chosen: Vec<&Arc<LocalApic>> = if kind == InterruptKind::LowestPriority {
            // The target whose processor priority is lowest (ties: the lowest index).
            targets
                .iter()
                .min_by_key(|a| (a.lock().ppr(), a.index))
                .into_iter()
                .collect()
        } else {
            targets.iter().collect()
        };
        for a in chosen {
            let mut s = a.lock();
            s.accept(kind, vector, level);
            a.publish(&s);
        }
    }
}

impl Interrupts for ApicBus {
    fn request(&self, r: &InterruptRequest) -> Result<()> {
        r.check()?;
        // An I/O APIC's or an MSI's 8-bit destination (SDM vol 3 11.11.1).
        let targets = self.targets(r.destination, r.logical, false);
        if targets.is_empty() {
            return Err(HvError::InvalidArgument(format!(
                "no vCPU has {} APIC id {:#x}",
                if r.logical { "logical" } else { "physical" },
                r.destination
            )));
        }
        self.deliver(&targets, r.kind, r.vector, r.level);
        Ok(())
    }

    fn guest_time(&self) -> u64 {
        self.clock.now()
    }

    fn set_guest_time(&self, ns: u64) {
        self.clock.set_now(ns);
    }

    fn next_wake(&self) -> Option<u64> {
        self.earliest_wake()
    }

    fn set_device_deadline(&self, deadline: Option<u64>) {
        self.clock.set_device_deadline(deadline);
        // Halted vCPUs wait for the old deadline: they look again.
        for a in self.all() {
            a.kick();
        }
    }
}
