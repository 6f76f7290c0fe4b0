//! Guest time for a partition. Deterministic: one nanosecond per retired instruction
//! ([`PAUSE_COST_NS`] for a PAUSE) and [`EXIT_COST_NS`] per exit to the VMM, and halts leap to the next timer, so runs
//! replay exactly (QEMU's icount counts instructions the same way). Real time: the host's monotonic clock. The TSC runs at 1 GHz on either
//! (CPUID leaves 0x15 and 0x16 say so), so TSC ticks are guest nanoseconds.

use hv_core::ClockMode;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Guest time an exit to the VMM costs on the deterministic clock (ns, TSC ticks). On
/// hardware the round trip to a user-space VMM and back takes a microsecond or more of
/// the guest's time (KVM's vmexit benchmarks in kvm-unit-tests measure 1-5 us for an
/// exit QEMU handles); counted as nothing, a guest that polls a device until some time
/// has passed (the RTC's update-in-progress bit, a PM timer calibration, kvm-unit-tests'
/// `vmexit` loops that run until 2^30 TSC ticks have gone by) needs ~10^8 exits where
/// hardware needs ~10^6, and crawls. A fixed cost keeps replays exact.
pub const EXIT_COST_NS: u64 = 1_000;

/// Guest time a PAUSE takes on the deterministic clock (ns, TSC ticks): its latency on
/// recent processors is of this order (Intel's optimization manual gives ~140 cycles
/// from Skylake on; AMD's Zen ~65). At one tick, a spin-wait that polls the TSC until
/// some time has passed (Linux's `delay_tsc`, kvm-unit-tests' `pause` loops waiting
/// 10^6 ticks for another vCPU) runs a hundred times longer than on hardware.
pub const PAUSE_COST_NS: u64 = 100;

/// vCPU indices are a byte.
const VCPUS: usize = 256;

pub struct Clock {
    pub mode: ClockMode,
    /// Deterministic time: the latest each vCPU reached, written only by that vCPU's
    /// run (a plain store: a shared maximum would be a locked instruction on every
    /// exit); partition time is the latest of them.
    reached: Box<[AtomicU64; VCPUS]>,
    /// One past the highest vCPU index made: how many slots `now` looks at.
    vcpus: AtomicUsize,
    start: Instant,
    /// Real time: guest time minus host time since `start` (a restored snapshot's
    /// guest time goes on from where it was).
    offset: AtomicI64,
    /// The VMM's next device timer (guest ns; `u64::MAX`: none): every run ends with
    /// `Exit::Clock` when guest time reaches it.
    device_deadline: AtomicU64,
}

impl Clock {
    pub fn new(mode: ClockMode) -> Clock {
        Clock {
            mode,
            reached: Box::new([const { AtomicU64::new(0) }; VCPUS]),
            vcpus: AtomicUsize::new(0),
            start: Instant::now(),
            offset: AtomicI64::new(0),
            device_deadline: AtomicU64::new(u64::MAX),
        }
    }

    pub fn deterministic(&self) -> bool {
        self.mode == ClockMode::Deterministic
    }

    /// Makes vCPU `index`'s time count (at its creation).
    pub fn add_vcpu(&self, index: u32) {
        self.vcpus.fetch_max(index as usize + 1, Ordering::AcqRel);
    }

    /// Guest time now (ns).
    pub fn now(&self) -> u64 {
        match self.mode {
            ClockMode::Deterministic => {
                let n = self.vcpus.load(Ordering::Acquire).min(VCPUS);
                self.reached[..n]
                    .iter()
                    .map(|r| r.load(Ordering::Acquire))
                    .max()
                    .unwrap_or(0)
            }
            ClockMode::Realtime => (self.start.elapsed().as_nanos() as i64)
                .saturating_add(self.offset.load(Ordering::Acquire))
                .max(0) as u64,
        }
    }

    /// Guest time goes on from `t` (a restored snapshot's): in real time at once; the
    /// deterministic clock only moves forward (each vCPU's restored state carries its
    /// own time, which its run catches up to).
    pub fn set_now(&self, t: u64) {
        match self.mode {
            ClockMode::Realtime => {
                let elapsed = self.start.elapsed().as_nanos() as i64;
                self.offset
                    .store((t as i64).saturating_sub(elapsed), Ordering::Release);
            }
            ClockMode::Deterministic => {
                let n = self.vcpus.load(Ordering::Acquire).clamp(1, VCPUS);
                for slot in &self.reached[..n] {
                    slot.fetch_max(t, Ordering::AcqRel);
                }
            }
        }
    }

    /// Deterministic time moves to `t` if that is later (vCPU `index` ran up to it, or
    /// leapt over a halt to it). Called only by that vCPU's run, so its slot has one
    /// writer and the check and the store need no atomic read-modify-write.
    pub fn advance_to(&self, index: u32, t: u64) {
        if let Some(slot) = self.reached.get(index as usize) {
            if t > slot.load(Ordering::Relaxed) {
                slot.store(t, Ordering::Release);
            }
        }
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
        let host = (t as i64).saturating_sub(self.offset.load(Ordering::Acquire));
        self.start + std::time::Duration::from_nanos(host.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition time is the latest any vCPU reached, and never goes back: what the
    /// shared maximum it replaced gave.
    #[test]
    fn deterministic_time_is_the_latest_a_vcpu_reached_and_never_goes_back() {
        let c = Clock::new(ClockMode::Deterministic);
        c.add_vcpu(0);
        c.add_vcpu(3);
        assert_eq!(c.now(), 0);
        c.advance_to(0, 100);
        c.advance_to(3, 50);
        assert_eq!(c.now(), 100);
        c.advance_to(0, 90); // an earlier time is no move
        assert_eq!(c.now(), 100);
        c.advance_to(3, 250);
        assert_eq!(c.now(), 250);
        c.advance_to(255, 7); // the last index exists; past it, nothing happens
        c.advance_to(256, u64::MAX);
        assert_eq!(c.now(), 250);
    }

    #[test]
    fn set_now_moves_real_time_either_way_and_deterministic_time_only_forward() {
        let r = Clock::new(ClockMode::Realtime);
        r.set_now(5_000_000_000);
        assert!((5_000_000_000..6_000_000_000).contains(&r.now()));
        r.set_now(0);
        assert!(r.now() < 1_000_000_000);
        let d = Clock::new(ClockMode::Deterministic);
        d.add_vcpu(0);
        d.set_now(700);
        assert_eq!(d.now(), 700);
        d.set_now(10);
        assert_eq!(d.now(), 700);
    }

    /// Writers on several threads, each its own slot: the result is the maximum.
    #[test]
    fn vcpus_advancing_on_their_threads_end_at_the_latest() {
        let c = std::sync::Arc::new(Clock::new(ClockMode::Deterministic));
        for i in 0..4 {
            c.add_vcpu(i);
        }
        let threads: Vec<_> = (0..4u32)
            .map(|i| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    for t in 0..10_000u64 {
                        c.advance_to(i, t * 4 + i as u64);
                        assert!(c.now() >= t * 4 + i as u64);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(c.now(), 9_999 * 4 + 3);
    }
}
