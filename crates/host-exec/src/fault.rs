//! Catching the floating-point exceptions a snippet raises: Linux delivers #DE, #MF
//! and #XM as SIGFPE to the faulting thread. While a snippet runs, a SIGFPE whose RIP
//! lies inside it records the vector (the trap number in the signal context) and
//! resumes at the epilogue, which saves the state as of the fault. Any other SIGFPE
//! gets the default action again.

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// The running snippet's code range and where to resume: `(start, end, resume)`.
    static ACTIVE: Cell<(usize, usize, usize)> = const { Cell::new((0, 0, 0)) };
    static FAULT: Cell<Option<u8>> = const { Cell::new(None) };
}

static INSTALL: Once = Once::new();

extern "C" fn on_sigfpe(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes the interrupted context as the third argument of an
    // SA_SIGINFO handler; it is valid and writable until the handler returns.
    let gregs = unsafe { &mut (*(ctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
    let rip = gregs[libc::REG_RIP as usize] as usize;
    let (start, end, resume) = ACTIVE.with(Cell::get);
    if (start..end).contains(&rip) {
        FAULT.with(|f| f.set(Some(gregs[libc::REG_TRAPNO as usize] as u8)));
        gregs[libc::REG_RIP as usize] = resume as i64;
    } else {
        // Not a snippet's: the default action (terminate) on the re-executed fault.
        // SAFETY: resetting a signal disposition is async-signal-safe.
        unsafe { libc::signal(libc::SIGFPE, libc::SIG_DFL) };
    }
}

/// Installs the handler (once per process) and marks `start..end` as the snippet.
pub fn arm(start: usize, end: usize, resume: usize) {
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction with an SA_SIGINFO handler is valid; installing it
        // replaces only the SIGFPE disposition.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigfpe as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGFPE, &sa, std::ptr::null_mut());
        }
    });
    FAULT.with(|f| f.set(None));
    ACTIVE.with(|a| a.set((start, end, resume)));
}

/// Ends the snippet; the vector it faulted with, if any.
pub fn disarm() -> Option<u8> {
    ACTIVE.with(|a| a.set((0, 0, 0)));
    FAULT.with(Cell::take)
}
