//! Interrupting a vCPU blocked in `MSHV_RUN_VP`: a real-time signal with an empty
//! handler (installed without SA_RESTART) makes the ioctl return EINTR, as Cloud
//! Hypervisor does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};

fn signal() -> i32 {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_kick(_: libc::c_int) {}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a
        // real-time signal this library owns; the sigaction struct is fully initialized.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// The thread currently inside `run()`, or 0.
#[derive(Default, Clone)]
pub struct RunningThread(Arc<AtomicU64>);

impl RunningThread {
    pub fn enter(&self) {
        install_handler();
        // SAFETY: pthread_self has no preconditions.
        self.0
            .store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
    }

    pub fn leave(&self) {
        self.0.store(0, Ordering::SeqCst);
    }

    /// Signals the running thread, if any.
    pub fn kick(&self) {
        let t = self.0.load(Ordering::SeqCst);
        if t != 0 {
            // SAFETY: `t` is a live thread id: it is cleared before the thread leaves run().
            unsafe {
                libc::pthread_kill(t as libc::pthread_t, signal());
            }
        }
    }
}
