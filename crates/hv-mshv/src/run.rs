//! The run loop around `MSHV_RUN_VP`, separate from the ioctl so it can be tested with
//! any blocking call: a cancel or a deadline ends it; a signal meant for someone else
//! (SIGCHLD on Node's threads, say) and EAGAIN make it run again, as Cloud Hypervisor,
//! OpenVMM and Hyperlight do.

use crate::kick::{DeadlineTimer, RunningThread};
use hv_core::Canceller;
use mshv_ioctls::MshvError;
use std::time::Instant;

/// How an interruptible run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended<T> {
    Done(T),
    Cancelled,
    Timeout,
}

/// Calls `blocking` (the ioctl) until it returns something other than EINTR/EAGAIN, or
/// a cancel or the deadline comes.
///
/// The thread is published as running *before* the cancel flag is read: a cancel that
/// comes after the read then finds the thread and signals it until it leaves, and one
/// that came before is seen by the read. Either way none is lost.
pub fn run_interruptible<T>(
    running: &RunningThread,
    canceller: &Canceller,
    deadline: Option<Instant>,
    mut blocking: impl FnMut() -> Result<T, MshvError>,
) -> Result<Ended<T>, MshvError> {
    loop {
        let _timer = deadline.and_then(DeadlineTimer::arm);
        running.enter();
        if canceller.take() {
            running.leave();
            return Ok(Ended::Cancelled);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            running.leave();
            return Ok(Ended::Timeout);
        }
        let result = blocking();
        running.leave();
        match result {
            Ok(v) => return Ok(Ended::Done(v)),
            // Interrupted (by us, or by a signal for someone else) or asked to retry:
            // the loop looks at the flags again.
            Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::sync::Arc;
    use std::time::Duration;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    /// A blocking one-byte read, as the run ioctl blocks.
    fn read_byte(fd: i32) -> Result<u8, MshvError> {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a live local.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        if n < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            Err(MshvError::from(errno))
        } else {
            Ok(byte)
        }
    }

    fn harness() -> (RunningThread, Canceller) {
        let running = RunningThread::default();
        let kicked = running.clone();
        (
            running,
            Canceller::with_kick(Arc::new(move || kicked.kick())),
        )
    }

    #[test]
    fn a_cancel_from_another_thread_ends_a_blocked_run() {
        let (reader, _writer) = pipe();
        let (running, canceller) = harness();
        let remote = canceller.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            remote.cancel();
        });
        let fd = reader.as_raw_fd();
        let ended = run_interruptible(&running, &canceller, None, || read_byte(fd)).unwrap();
        t.join().unwrap();
        assert_eq!(ended, Ended::Cancelled);
        assert!(!canceller.is_cancelled(), "the cancel was consumed");
    }

    #[test]
    fn a_cancel_before_the_run_ends_it_before_the_call() {
        let (running, canceller) = harness();
        canceller.cancel();
        let mut called = false;
        let ended = run_interruptible(&running, &canceller, None, || {
            called = true;
            Ok(())
        });
        assert_eq!(ended.unwrap(), Ended::Cancelled);
        assert!(!called);
    }

    #[test]
    fn a_deadline_ends_a_blocked_run_and_eagain_is_retried() {
        let (reader, _writer) = pipe();
        let (running, canceller) = harness();
        let fd = reader.as_raw_fd();
        let mut tries = 0;
        let start = Instant::now();
        let deadline = start + Duration::from_millis(30);
        let ended = run_interruptible(&running, &canceller, Some(deadline), || {
            tries += 1;
            if tries == 1 {
                return Err(MshvError::from(libc::EAGAIN));
            }
            read_byte(fd)
        })
        .unwrap();
        assert_eq!(ended, Ended::Timeout);
        assert!(tries >= 2, "EAGAIN made it call again");
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_signal_for_someone_else_does_not_end_the_run() {
        let (reader, mut writer) = pipe();
        let (running, canceller) = harness();
        let observer = running.clone();
        let fd = reader.as_raw_fd();
        let t = std::thread::spawn(move || {
            let (ended, ()) = (
                run_interruptible(&running, &canceller, None, || read_byte(fd)).unwrap(),
                (),
            );
            ended
        });
        while !observer.is_running() {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(10));
        // A kick without a cancel: EINTR, and the run goes on.
        observer.kick();
        std::thread::sleep(Duration::from_millis(10));
        writer.write_all(&[42]).unwrap();
        assert_eq!(t.join().unwrap(), Ended::Done(42));
    }

    #[test]
    fn other_errors_end_the_run_as_errors() {
        let (running, canceller) = harness();
        let e = run_interruptible::<()>(&running, &canceller, None, || {
            Err(MshvError::from(libc::EFAULT))
        })
        .unwrap_err();
        assert_eq!(e.errno(), libc::EFAULT);
    }
}
