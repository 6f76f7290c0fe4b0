//! Interrupting a vCPU blocked in `MSHV_RUN_VP`: a real-time signal with an empty
//! handler, installed without `SA_RESTART`, makes the ioctl return EINTR (the kernel's
//! `mshv_run_vp_with_hyp_scheduler` waits interruptibly and, when a signal arrives,
//! suspends the VP and returns -EINTR; `mshv_pre_guest_mode_work` does the same under
//! the root scheduler; drivers/hv/mshv_root_main.c). Cloud Hypervisor and Hyperlight
//! interrupt their vCPUs the same way.
//!
//! Two races make a single signal unreliable, and both are closed here:
//! - a cancel between the run loop's check of its flag and the ioctl's entry: the
//!   signal lands in user space, the empty handler runs, and the ioctl then blocks.
//!   [`RunningThread::kick`] re-signals until the thread leaves the run (Cloud
//!   Hypervisor re-signals until acknowledged; OpenVMM redirects the signal in a
//!   guarded syscall window);
//! - the target thread leaving the run, and even exiting, between the kicker's read
//!   of its id and the signal: the id is read and signalled under the lock that
//!   [`RunningThread::leave`] takes, so the thread is still inside the run.

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// The signal this library owns (OpenVMM uses SIGRTMIN+1 and KVM users SIGRTMIN).
pub fn signal() -> i32 {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the empty handler once per process.
pub fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a
        // real-time signal this library owns; the sigaction struct is fully initialized,
        // and no SA_RESTART, so a blocking ioctl returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// How long a kick keeps re-signalling a thread that has not left its run.
const KICK_FOR: Duration = Duration::from_millis(100);
/// The pause between two signals of one kick.
const KICK_EVERY: Duration = Duration::from_micros(50);

/// The thread inside a vCPU's run, if any.
#[derive(Default, Clone)]
pub struct RunningThread(Arc<Mutex<Option<libc::pthread_t>>>);

impl RunningThread {
    /// Publishes the calling thread as the one running the vCPU.
    pub fn enter(&self) {
        install_handler();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(me);
    }

    /// Withdraws the calling thread; after this no kick signals it.
    pub fn leave(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether a thread is inside the run (tests wait on it).
    #[cfg(test)]
    pub fn is_running(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Signals the running thread until it leaves the run (at most [`KICK_FOR`]);
    /// returns at once when no thread runs. The caller sets its cancel flag first, so
    /// the thread, back from the interrupted ioctl, sees why and leaves.
    pub fn kick(&self) {
        let until = Instant::now() + KICK_FOR;
        loop {
            {
                let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
                let Some(thread) = *guard else { return };
                // SAFETY: `thread` is inside the run: it cannot leave (nor exit) before
                // this guard is released, so the id names a live thread.
                unsafe { libc::pthread_kill(thread, signal()) };
            }
            if Instant::now() >= until {
                return;
            }
            std::thread::sleep(KICK_EVERY);
        }
    }
}

/// A POSIX timer that signals one thread at a deadline, then every millisecond until
/// it is dropped: a signal that lands just before the ioctl's entry is followed by
/// another inside it.
pub struct DeadlineTimer(libc::timer_t);

impl DeadlineTimer {
    /// Arms a timer for the calling thread at `deadline` (CLOCK_MONOTONIC, the clock
    /// of `Instant`). `None` when the timer cannot be made (then only cancel ends a run).
    pub fn arm(deadline: Instant) -> Option<Self> {
        install_handler();
        // SAFETY: a zeroed sigevent is valid; the fields set below are the ones
        // SIGEV_THREAD_ID reads. gettid names the calling thread.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal();
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `timer` are valid for the call.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let first = if left.is_zero() {
            // A zero it_value disarms: fire as soon as possible instead.
            Duration::from_nanos(1)
        } else {
            left
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            },
            it_value: libc::timespec {
                tv_sec: first.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: first.subsec_nanos() as i64,
            },
        };
        let armed = DeadlineTimer(timer);
        // SAFETY: `timer` was created above; `spec` is valid.
        if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return None;
        }
        Some(armed)
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        // SAFETY: the timer was created by `arm` and is deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A blocking read of an empty pipe, as MSHV_RUN_VP blocks: EINTR when signalled.
    fn blocking_read(fd: i32) -> i32 {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a live local.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        if n < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors were just created and are owned here.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn a_kick_interrupts_a_blocked_run_even_when_it_lands_before_the_syscall() {
        use std::io::Write;
        let (reader, mut writer) = pipe();
        let running = RunningThread::default();
        let inside = running.clone();
        let fd = reader.as_raw_fd();
        let (done, result) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            inside.enter();
            // Stay in user space a while: the first signal lands here, not in the read.
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(20) {
                std::hint::spin_loop();
            }
            let errno = blocking_read(fd);
            inside.leave();
            done.send(errno).unwrap();
        });
        while !running.is_running() {
            std::thread::yield_now();
        }
        running.kick();
        let errno = result.recv_timeout(Duration::from_secs(2));
        if errno.is_err() {
            // A lost kick: release the read before failing.
            writer.write_all(&[0]).unwrap();
        }
        t.join().unwrap();
        assert_eq!(errno, Ok(libc::EINTR), "a later signal reached the read");
        running.kick(); // no thread: returns at once
    }

    #[test]
    fn a_deadline_timer_interrupts_a_blocked_run_at_its_deadline() {
        let (reader, _writer) = pipe();
        let start = Instant::now();
        let timer = DeadlineTimer::arm(start + Duration::from_millis(30)).unwrap();
        let errno = blocking_read(reader.as_raw_fd());
        drop(timer);
        let took = start.elapsed();
        assert_eq!(errno, libc::EINTR);
        assert!(
            took >= Duration::from_millis(29) && took < Duration::from_millis(500),
            "{took:?}"
        );
    }
}
