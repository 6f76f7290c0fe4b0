//! The run loop around `MSHV_RUN_VP`, separate from the ioctl so it can be tested with
//! any blocking call: a cancel or a deadline ends it; a signal meant for someone else
//! (SIGCHLD on Node's threads, say) and EAGAIN make it run again, as Cloud Hypervisor,
//! OpenVMM and Hyperlight do.

use crate::kernel::{Answer, Vp};
use crate::kick::{DeadlineTimer, RunningThread};
use hv_core::page::ISVALID;
use hv_core::{Canceller, RegisterPagePtr};
use mshv_bindings::hv_message;
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

/// Runs `vp` (`MSHV_RUN_VP` through the seam) until an intercept, a cancel or the
/// deadline; after a run that entered the kernel and ended by a cancel or the deadline,
/// the register page is marked invalid ([`forget_stale_page`]).
pub fn run_vp<V: Vp>(
    vp: &V,
    page: Option<RegisterPagePtr>,
    running: &RunningThread,
    canceller: &Canceller,
    deadline: Option<Instant>,
) -> Answer<Ended<hv_message>> {
    let mut entered = false;
    let ended = run_interruptible(running, canceller, deadline, || {
        entered = true;
        vp.run()
    })?;
    if entered && !matches!(ended, Ended::Done(_)) {
        if let Some(page) = page {
            forget_stale_page(page);
        }
    }
    Ok(ended)
}

/// After a run the VMM interrupted (a signal, then `Cancelled` or `Timeout`), the page
/// holds what the last intercept wrote, though the VP may have run since: the kernel
/// suspends the VP (torvalds/linux drivers/hv/mshv_root_main.c
/// `mshv_run_vp_with_hyp_scheduler` -> `mshv_suspend_vp`; the root scheduler returns
/// between dispatches) and nothing there writes `isvalid`. Read, such a page gives old
/// values; written, one register's dirty bit would apply its whole class from old values
/// at the next resume. So `isvalid` is cleared: reads and writes go by hypercall until
/// the next intercept sets it again.
///
/// Unless dirty bits are still set: the hypervisor clears `dirty` when it applies the
/// classes at a resume (DESIGN.md, "the register page"), so bits still set mean the VP
/// has not resumed since the VMM wrote them (a signal before dispatch:
/// `mshv_pre_guest_mode_work` returns before `mshv_vp_dispatch`), and the page still
/// matches the VP with the VMM's writes pending, which the register cache commits
/// (`commitPage` in src/registers.ts).
pub fn forget_stale_page(page: RegisterPagePtr) {
    if page.dirty() == 0 {
        page.write_u8(ISVALID, 0);
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

    mod stale_page {
        use super::super::*;
        use super::harness;
        use crate::kernel::fake::{errno, Kernel, Op};
        use hv_core::page::{DIRTY, PAGE_SIZE};
        use std::ptr::NonNull;

        /// A page as the last intercept left it: valid, nothing dirty.
        fn page() -> (Box<[u64; PAGE_SIZE / 8]>, RegisterPagePtr) {
            let mut buf = Box::new([0u64; PAGE_SIZE / 8]);
            let ptr = NonNull::new(buf.as_mut_ptr().cast::<u8>()).expect("a box is not null");
            // SAFETY: the box is PAGE_SIZE bytes, 8-byte aligned, and outlives the pointer's uses.
            let p = unsafe { RegisterPagePtr::new(ptr) };
            p.write_u8(ISVALID, 1);
            (buf, p)
        }

        /// The VP ran (the hypervisor applied and cleared the dirty bits), then the
        /// VMM's cancel signalled the thread: MSHV_RUN_VP answers EINTR.
        #[test]
        fn a_cancel_after_the_vp_ran_leaves_the_page_invalid_until_the_next_intercept() {
            let (_buf, p) = page();
            p.write_u32(DIRTY, 1); // the VMM wrote RAX through the page before the run
            let (running, canceller) = harness();
            let k = Kernel::default();
            let remote = canceller.clone();
            k.on_run(move || {
                p.write_u32(DIRTY, 0); // applied at the resume
                remote.cancel();
                Err(errno(libc::EINTR))
            });
            let ended = run_vp(&k, Some(p), &running, &canceller, None).unwrap();
            assert!(matches!(ended, Ended::Cancelled));
            assert!(!p.is_valid(), "stale page marked invalid");
            assert_eq!(k.count(Op::Run), 1);
        }

        #[test]
        fn a_deadline_after_the_vp_ran_leaves_the_page_invalid_too() {
            let (_buf, p) = page();
            let (running, canceller) = harness();
            let k = Kernel::default();
            let deadline = Instant::now() + std::time::Duration::from_millis(5);
            k.on_run(move || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                Err(errno(libc::EINTR))
            });
            let ended = run_vp(&k, Some(p), &running, &canceller, Some(deadline)).unwrap();
            assert!(matches!(ended, Ended::Timeout));
            assert!(!p.is_valid());
        }

        #[test]
        fn an_intercept_leaves_the_page_as_the_hypervisor_wrote_it() {
            let (_buf, p) = page();
            let (running, canceller) = harness();
            let k = Kernel::default();
            let ended = run_vp(&k, Some(p), &running, &canceller, None).unwrap();
            assert!(matches!(ended, Ended::Done(_)));
            assert!(p.is_valid());
            assert_eq!(k.count(Op::Run), 1);
        }

        #[test]
        fn a_cancel_before_the_run_entered_the_kernel_leaves_the_page_valid() {
            let (_buf, p) = page();
            let (running, canceller) = harness();
            canceller.cancel();
            let k = Kernel::default();
            let ended = run_vp(&k, Some(p), &running, &canceller, None).unwrap();
            assert!(matches!(ended, Ended::Cancelled));
            assert!(
                p.is_valid(),
                "the VP did not run: the page still matches it"
            );
            assert_eq!(k.count(Op::Run), 0);
        }

        /// A signal before dispatch (`mshv_pre_guest_mode_work`): the dirty bits are
        /// still set, the VP did not resume, the page and its pending writes stand.
        #[test]
        fn a_cancel_before_dispatch_keeps_the_page_and_its_pending_writes() {
            let (_buf, p) = page();
            p.write_u32(DIRTY, 0b10);
            let (running, canceller) = harness();
            let k = Kernel::default();
            let remote = canceller.clone();
            k.on_run(move || {
                remote.cancel();
                Err(errno(libc::EINTR))
            });
            let ended = run_vp(&k, Some(p), &running, &canceller, None).unwrap();
            assert!(matches!(ended, Ended::Cancelled));
            assert!(p.is_valid());
            assert_eq!(p.dirty(), 0b10);
        }

        #[test]
        fn without_a_page_a_cancel_ends_the_run_all_the_same() {
            let (running, canceller) = harness();
            let k = Kernel::default();
            let remote = canceller.clone();
            k.on_run(move || {
                remote.cancel();
                Err(errno(libc::EINTR))
            });
            let ended = run_vp(&k, None, &running, &canceller, None).unwrap();
            assert!(matches!(ended, Ended::Cancelled));
        }
    }
}
