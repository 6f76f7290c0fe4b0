//! Guest time for a partition. Deterministic: one nanosecond per retired instruction,
//! and halts leap to the next timer, so runs replay exactly (QEMU's icount does the
//! same). Real time: the host's monotonic clock. The TSC runs at 1 GHz on either
//! (CPUID leaves 0x15 and 0x16 say so), so TSC ticks are guest nanoseconds.

use hv_core::ClockMode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct Clock {
    pub mode: ClockMode,
    /// Deterministic time: the latest any vCPU of the partition reached.
    ns: AtomicU64,
    start: Instant,
    /// The VMM's next device timer (guest ns; `u64::MAX`: none): every run ends with
    /// `Exit::Clock` when guest time reaches it.
    device_deadline: AtomicU64,
}

impl Clock {
    pub fn new(mode: ClockMode) -> Clock {
        Clock {
            mode,
            ns: AtomicU64::new(0),
            start: Instant::now(),
            device_deadline: AtomicU64::new(u64::MAX),
        }
    }

    pub fn deterministic(&self) -> bool {
        self.mode == ClockMode::Deterministic
    }

    /// Guest time now (ns).
    pub fn now(&self) -> u64 {
        match self.mode {
            ClockMode::Deterministic => self.ns.load(Ordering::Acquire),
            ClockMode::Realtime => self.start.elapsed().as_nanos() as u64,
        }
    }

    /// Deterministic time moves to `t` if that is later (a vCPU ran up to it, or leapt
    /// over a halt to it).
    pub fn advance_to(&self, t: u64) {
        self.ns.fetch_max(t, Ordering::AcqRel);
    }

    pub fn device_deadline(&self) -> Option<u64> {
        let d = self.device_deadline.load(Ordering::Acquire);
        (d != u64::MAX).then_some(d)
    }

    pub fn set_device_deadline(&self, t: Option<u64>) {
        self.device_deadline
            .store(t.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The host instant of guest time `t`, for real-time waits.
    pub fn instant_of(&self, t: u64) -> Instant {
        self.start + std::time::Duration::from_nanos(t)
    }
}
