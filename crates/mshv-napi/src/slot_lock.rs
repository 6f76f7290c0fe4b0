//! The lock around a vCPU's backend: taken with one compare-and-swap and released
//! with a plain store. A `std::sync::Mutex` releases with a second locked instruction
//! (to find sleepers), paid twice per exit on the TypeScript exit loop; here nobody
//! sleeps on the lock: the one waiter, `close()`, polls while a cancelled async run
//! ends.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A value behind a try-lock.
pub(crate) struct SlotLock<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a guard, and a guard exists only while
// `busy` was won by its compare-and-swap: one thread at a time touches the value.
unsafe impl<T: Send> Sync for SlotLock<T> {}

impl<T> SlotLock<T> {
    pub(crate) fn new(value: T) -> Self {
        SlotLock {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, unless someone holds it.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<SlotGuard<'_, T>> {
        // `then`, not `then_some`: a guard made eagerly for a failed attempt would be
        // dropped at once, and its drop would release the holder's lock.
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then(|| SlotGuard { lock: self })
    }

    /// The value, waiting for its holder to let go.
    pub(crate) fn lock(&self) -> SlotGuard<'_, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Access to a [`SlotLock`]'s value; dropping it releases the lock (on unwinding too).
pub(crate) struct SlotGuard<'a, T> {
    lock: &'a SlotLock<T>,
}

impl<T> Deref for SlotGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard won the lock; no other reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SlotGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this the only borrow.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SlotGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_holder_at_a_time_and_release_on_drop() {
        let l = SlotLock::new(5);
        let g = l.try_lock().expect("free");
        assert!(l.try_lock().is_none());
        drop(g);
        *l.try_lock().expect("free again") += 1;
        assert_eq!(*l.lock(), 6);
    }

    /// A failed attempt leaves the holder's lock held, however often it is made.
    #[test]
    fn a_failed_try_lock_does_not_release_the_holders_lock() {
        let l = SlotLock::new(0);
        let held = l.try_lock().expect("free");
        for _ in 0..3 {
            assert!(l.try_lock().is_none());
        }
        drop(held);
        assert!(l.try_lock().is_some());
    }

    #[test]
    fn threads_adding_under_the_lock_lose_nothing() {
        let l = Arc::new(SlotLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *l.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(*l.lock(), 40_000);
    }

    #[test]
    fn a_panic_while_held_releases_it() {
        let l = SlotLock::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _g = l.lock();
            panic!("inside");
        }));
        assert!(r.is_err());
        assert!(l.try_lock().is_some());
    }
}
