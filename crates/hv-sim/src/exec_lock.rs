//! The partition's execution lock: one vCPU executes guest instructions at a time.
//!
//! The processor's locked read-modify-writes (LOCK-prefixed instructions, XCHG with
//! memory) read, compute and write guest memory as three steps, not one host atomic:
//! two vCPUs executing them at once on two host threads would lose updates (a
//! spinlock's release store landing between another vCPU's CMPXCHG read and its
//! write-back leaves the lock taken forever). So vCPUs whose runs overlap on host
//! threads (each on a thread of its own, as `vm.run()` runs them) take turns here, as
//! QEMU's TCG took turns before it made every atomic a host atomic (MTTCG): a run holds
//! the lock while it executes, lets it go while it blocks in a halt and when it returns,
//! and hands it on at the end of a slice when another vCPU waits.
//!
//! The lock is a ticket lock: vCPUs get it in the order they asked, so a vCPU spinning
//! on a guest lock cannot starve the one that holds it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a run executes before it hands the lock to a waiting vCPU: long beside the
/// cost of a hand-over (a futex wake, ~10 us), short beside the guest's timer ticks.
pub(crate) const SLICE: Duration = Duration::from_micros(500);

/// Spins before a waiter sleeps: a hand-over between two busy host cores is faster
/// than a futex round trip.
const SPINS: u32 = 2_000;

#[derive(Default)]
pub(crate) struct ExecLock {
    /// The next ticket to give out.
    next: AtomicU64,
    /// The ticket whose holder may execute.
    serving: AtomicU64,
    sleep: Mutex<()>,
    turn: Condvar,
}

/// The lock, held: let go when dropped (a run that returns, or unwinds, lets it go).
pub(crate) struct Held<'a> {
    lock: &'a ExecLock,
    /// When the holder first saw a waiter this turn: its slice counts from there, so a
    /// run nobody waits for never reads the clock for it.
    contended_since: Cell<Option<Instant>>,
}

impl ExecLock {
    /// Waits for this caller's turn.
    pub(crate) fn enter(&self) -> Held<'_> {
        self.wait_turn();
        Held {
            lock: self,
            contended_since: Cell::new(None),
        }
    }

    /// Takes a ticket and waits until it is served.
    fn wait_turn(&self) {
        let ticket = self.next.fetch_add(1, Ordering::AcqRel);
        if self.serving.load(Ordering::Acquire) != ticket {
            self.wait_for(ticket);
        }
    }

    fn wait_for(&self, ticket: u64) {
        for _ in 0..SPINS {
            if self.serving.load(Ordering::Acquire) == ticket {
                return;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under `sleep`, which `leave` takes before it notifies: a turn that
        // comes between this look and the wait is not missed.
        while self.serving.load(Ordering::Acquire) != ticket {
            guard = self
                .turn
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn leave(&self) {
        let serving = self.serving.fetch_add(1, Ordering::AcqRel) + 1;
        if self.next.load(Ordering::Acquire) > serving {
            // Someone waits (maybe asleep): wake the sleepers; the one whose turn it is goes.
            let _guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            self.turn.notify_all();
        }
    }

    /// Whether another vCPU waits for the lock.
    pub(crate) fn contended(&self) -> bool {
        self.next.load(Ordering::Acquire) > self.serving.load(Ordering::Acquire) + 1
    }
}

impl Held<'_> {
    /// Lets the lock go while `f` runs (a halt's wait), and waits for a turn after it.
    pub(crate) fn released<T>(&mut self, f: impl FnOnce() -> T) -> T {
        self.lock.leave();
        let r = f();
        self.lock.wait_turn();
        self.contended_since.set(None);
        r
    }

    /// Whether another vCPU waits for the lock.
    pub(crate) fn contended(&self) -> bool {
        self.lock.contended()
    }

    /// Whether the slice is over and another vCPU waits: time to [`Held::hand_over`].
    pub(crate) fn should_hand_over(&self) -> bool {
        if !self.lock.contended() {
            return false;
        }
        match self.contended_since.get() {
            Some(t) => t.elapsed() >= SLICE,
            None => {
                self.contended_since.set(Some(Instant::now()));
                false
            }
        }
    }

    /// Lets the waiting vCPUs execute, then takes a turn again (after them).
    pub(crate) fn hand_over(&mut self) {
        self.released(|| ());
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.lock.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A read-then-write counter under the lock loses no update across threads, as a
    /// CMPXCHG emulated in three steps must not.
    #[test]
    fn serializes_read_modify_writes_across_threads() {
        let lock = Arc::new(ExecLock::default());
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, counter) = (Arc::clone(&lock), Arc::clone(&counter));
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        let mut held = lock.enter();
                        let v = counter.load(Ordering::Relaxed);
                        std::hint::spin_loop();
                        counter.store(v + 1, Ordering::Relaxed);
                        if i % 100 == 0 {
                            held.released(std::thread::yield_now);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker");
        }
        assert_eq!(counter.load(Ordering::Relaxed), 80_000);
    }

    /// Tickets are served in order: a waiter gets the lock at the holder's hand-over,
    /// before the holder takes it again.
    #[test]
    fn hand_over_lets_a_waiter_go_first() {
        let lock = Arc::new(ExecLock::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut held = lock.enter();
        let waiter = {
            let (lock, order) = (Arc::clone(&lock), Arc::clone(&order));
            std::thread::spawn(move || {
                let _held = lock.enter();
                order.lock().expect("order").push("waiter");
            })
        };
        while !lock.contended() {
            std::thread::yield_now();
        }
        held.hand_over();
        order.lock().expect("order").push("holder");
        drop(held);
        waiter.join().expect("waiter");
        assert_eq!(*order.lock().expect("order"), ["waiter", "holder"]);
    }
}
