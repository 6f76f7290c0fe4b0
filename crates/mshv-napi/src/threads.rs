//! `VcpuThreads`: a VM's vCPUs each running on a native thread of its own, their exits
//! handed to the JavaScript thread, as a VMM's vCPU threads hand exits to its device
//! model (QEMU's vCPU threads and its main loop, Cloud Hypervisor's and OpenVMM's
//! per-VP threads).
//!
//! Each member's thread runs its vCPU until an exit, posts it (a code in the member,
//! the member's number in a queue) and waits; the JavaScript thread takes posted
//! exits one at a time ([`VcpuThreads::next`]), handles each, and hands the vCPU back
//! to its thread ([`VcpuThreads::next`]'s `resume`). No promise and no libuv work item
//! is made per exit, and no libuv pool thread is held while a guest runs.
//!
//! A hand-over is a store, and a wake-up only when the other side sleeps: each side
//! spins a little before it parks (`std::thread::park`), so an exit handled quickly
//! costs two cache-line transfers, not two futex round trips.

use crate::budget::{Budget, RunBudget};
use crate::errors::{from_napi, guard, invalid, JsError, Result};
use crate::layout::{EXIT_CANCELLED, EXIT_FAILED};
use crate::vcpu::{run_caught, Core, RunOutcome, Vcpu};
use napi::bindgen_prelude::{ClassInstance, Function};
use napi::Env;
use napi_derive::napi;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// A member waits for JavaScript: its exit (if any) is posted or handled.
const WAITING: u32 = 0;
/// A member's thread runs its vCPU.
const RUNNING: u32 = 1;

/// Spins before a side parks: several times what JavaScript takes to handle a port
/// exit (~0.3 us), and short, since on a host with fewer cores than busy threads a
/// spinning thread holds a core the other side needs (30 us made a 2-core host's
/// exit hand-overs 20 times slower while other VMs ran).
const SPIN: Duration = Duration::from_micros(5);

/// How long a parked member sleeps before it looks at the group's end and its vCPU's
/// close again (both also wake it; this bounds a missed wake-up).
const NAP: Duration = Duration::from_millis(20);

/// A vCPU and what its thread and JavaScript exchange.
struct Member {
    core: Arc<Core>,
    state: AtomicU32,
    /// The posted exit's code (`layout().exits` or a message type).
    code: AtomicU32,
    /// The posted failure, when the code is `EXIT_FAILED`.
    error: Mutex<Option<JsError>>,
    /// The limits of its runs since a `resume` with a budget (else the group's).
    budget: Mutex<Option<Arc<Budget>>>,
    /// The member's thread, once it runs (to wake it).
    thread: OnceLock<Thread>,
    /// Set when its loop has ended.
    done: AtomicBool,
}

struct Group {
    members: Vec<Member>,
    /// Members with a posted exit, in the order they posted.
    posted: Mutex<VecDeque<u32>>,
    /// `posted`'s length, read without the lock while JavaScript spins.
    pending: AtomicUsize,
    /// The thread that made the group and takes its exits (JavaScript's).
    js: Thread,
    stop: AtomicBool,
    /// The limits of every run of the group.
    budget: Arc<Budget>,
}

/// Waits until `ready()`: spins for [`SPIN`], then parks (woken by `unpark`, or after
/// `nap`), looking again each time, for `timeout` at most (none: for ever). Returns
/// whether it became ready. The clock is first read after a few spins, so a wait that
/// ends at once costs none.
fn wait_until(ready: impl Fn() -> bool, nap: Duration, timeout: Option<Duration>) -> bool {
    let mut start = None;
    let mut spins = 0u32;
    loop {
        if ready() {
            return true;
        }
        spins = spins.wrapping_add(1);
        // The clock is read once every 64 spins: a spin is a few ns, a clock read ~20.
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        let began = *start.get_or_insert(now);
        let waited = now.duration_since(began);
        if timeout.is_some_and(|t| waited >= t) {
            return false;
        }
        if waited < SPIN {
            continue;
        }
        let sleep = timeout.map_or(nap, |t| (t - waited).min(nap));
        std::thread::park_timeout(sleep);
    }
}

impl Group {
    /// A member's thread: run when JavaScript says, post the exit, wait again; until
    /// the group ends or the vCPU is closed.
    fn serve(&self, index: usize) {
        let Some(m) = self.members.get(index) else {
            return;
        };
        // Published before the first look at `state`, both SeqCst, as `resume` stores
        // `state` before it looks for the thread: one of the two sees the other.
        let _ = m.thread.set(std::thread::current());
        loop {
            let go = || {
                m.state.load(Ordering::SeqCst) == RUNNING
                    || self.stop.load(Ordering::SeqCst)
                    || m.core.is_closed()
            };
            wait_until(go, NAP, None);
            if self.stop.load(Ordering::SeqCst) || m.core.is_closed() {
                break;
            }
            let own = m
                .budget
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let budget = own.as_ref().unwrap_or(&self.budget);
            let code = match run_caught(&m.core, budget) {
                RunOutcome::Exit(code) => code,
                RunOutcome::Failed(e) => {
                    *m.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    EXIT_FAILED
                }
            };
            m.code.store(code, Ordering::Release);
            m.state.store(WAITING, Ordering::SeqCst);
            self.post(index as u32);
        }
        m.done.store(true, Ordering::SeqCst);
        self.js.unpark();
    }

    fn post(&self, index: u32) {
        self.posted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(index);
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.js.unpark();
    }

    fn take_posted(&self) -> Option<u32> {
        if self.pending.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let index = self
            .posted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()?;
        self.pending.fetch_sub(1, Ordering::SeqCst);
        Some(index)
    }

    /// Ends every member's loop: cancels the runs in flight and waits for them.
    fn end(&self) {
        let cancelled = self.stop();
        let all_done = || self.members.iter().all(|m| m.done.load(Ordering::SeqCst));
        // Only a thread that never started (it failed to) is not waited for.
        let started = || self.members.iter().all(|m| m.thread.get().is_some());
        if started() {
            wait_until(all_done, NAP, None);
        }
        // A run that ended by itself just as it was cancelled leaves the cancel
        // latched: the group's end consumed it, the next run must not see it.
        for m in cancelled {
            m.core.take_cancel();
        }
    }
}

/// The vCPUs of one `vm.run()`, each on its own native thread; see the module docs.
#[napi]
pub struct VcpuThreads {
    group: Arc<Group>,
}

#[napi]
impl VcpuThreads {
    /// Starts a thread loop for each vCPU (each waits for its first `resume`), whose
    /// runs are each limited by `budget` (none: no limits). The vCPUs must be open and
    /// not running; the group ends at `end()`, or when it is collected.
    #[napi(constructor)]
    pub fn new(vcpus: Vec<ClassInstance<Vcpu>>, budget: Option<&RunBudget>) -> Result<Self> {
        guard("VcpuThreads", || {
            if vcpus.is_empty() || vcpus.len() > 255 {
                return Err(invalid(format!(
                    "VcpuThreads: expected 1 to 255 vCPUs, got {}",
                    vcpus.len()
                )));
            }
            let mut members = Vec::with_capacity(vcpus.len());
            for v in &vcpus {
                v.check_open()?;
                if members
                    .iter()
                    .any(|m: &Member| Arc::ptr_eq(&m.core, v.core()))
                {
                    return Err(invalid(format!(
                        "VcpuThreads: vCPU {} is listed twice",
                        v.index()
                    )));
                }
                members.push(Member {
                    core: Arc::clone(v.core()),
                    state: AtomicU32::new(WAITING),
                    code: AtomicU32::new(EXIT_CANCELLED),
                    error: Mutex::default(),
                    budget: Mutex::default(),
                    thread: OnceLock::new(),
                    done: AtomicBool::new(false),
                });
            }
            let group = Arc::new(Group {
                members,
                posted: Mutex::default(),
                pending: AtomicUsize::new(0),
                js: std::thread::current(),
                stop: AtomicBool::new(false),
                budget: budget.map_or_else(Arc::default, |b| Arc::clone(&b.inner)),
            });
            for (i, m) in group.members.iter().enumerate() {
                let g = Arc::clone(&group);
                if let Err(e) = m.core.on_own_thread(Box::new(move || g.serve(i))) {
                    // The loops that started end by themselves.
                    group.stop();
                    return Err(e);
                }
            }
            Ok(VcpuThreads { group })
        })
    }

    /// Hands member `resume` (its place in the constructor's list; -1 for none) back
    /// to its thread, then waits up to `timeoutMs` for a posted exit. Returns `code *
    /// 256 + member`, or -1 when none came in time. A code of `layout().exits.failed`
    /// means the run threw: take its error with `takeError(member)`. (The exit loop
    /// calls `nextFunction()`'s function instead, which does the same for less.)
    #[napi]
    pub fn next(&self, resume: i32, timeout_ms: f64) -> Result<f64> {
        guard("VcpuThreads.next", || self.group.next(resume, timeout_ms))
    }

    /// `next` as a bare function of `(resume, timeoutMs)`, bound to this group: called
    /// once per exit, it skips what a class method pays (napi-rs's borrow registry
    /// behind a global lock, about 220 ns here; see `runner.rs`).
    #[napi(ts_return_type = "(resume: number, timeoutMs: number) => number")]
    pub fn next_function<'env>(&self, env: &'env Env) -> Result<Function<'env, f64, f64>> {
        guard("VcpuThreads.nextFunction", || {
            next_fn::make(env, Arc::clone(&self.group)).map_err(from_napi)
        })
    }

    /// Hands member `member` to its thread: `EINVAL` for a member that is running or
    /// not in the group. With `budget`, the member's runs from now on are limited by it
    /// instead of the group's (a deterministic turn: its quantum of instructions).
    #[napi(js_name = "resume")]
    pub fn resume_member(&self, member: u32, budget: Option<&RunBudget>) -> Result<()> {
        guard("VcpuThreads.resume", || {
            let m = self.group.member(member as usize)?;
            if m.state.load(Ordering::SeqCst) != RUNNING {
                *m.budget.lock().unwrap_or_else(PoisonError::into_inner) =
                    budget.map(|b| Arc::clone(&b.inner));
            }
            self.group.resume(member as usize)
        })
    }

    /// The error of member `member`'s failed run (once), or null.
    #[napi]
    pub fn take_error(&self, member: u32) -> Option<JsError> {
        self.group.members.get(member as usize).and_then(|m| {
            m.error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        })
    }

    /// Ends the group: runs in flight are cancelled and waited for, every thread loop
    /// ends. Exits posted and not taken stay to be taken with `next(-1, 0)`.
    #[napi]
    pub fn end(&self) {
        self.group.end();
    }
}

impl Group {
    fn member(&self, index: usize) -> Result<&Member> {
        self.members.get(index).ok_or_else(|| {
            invalid(format!(
                "VcpuThreads: no member {index} (the group has {})",
                self.members.len()
            ))
        })
    }

    fn resume(&self, index: usize) -> Result<()> {
        let m = self.member(index)?;
        if self.stop.load(Ordering::SeqCst) {
            return Err(invalid("VcpuThreads: the group has ended".to_string()));
        }
        if m.state.load(Ordering::SeqCst) == RUNNING {
            return Err(invalid(format!(
                "VcpuThreads: member {index} is running already"
            )));
        }
        m.state.store(RUNNING, Ordering::SeqCst);
        if let Some(t) = m.thread.get() {
            t.unpark();
        }
        Ok(())
    }

    fn next(&self, resume: i32, timeout_ms: f64) -> Result<f64> {
        if resume >= 0 {
            self.resume(resume as usize)?;
        }
        if !(timeout_ms.is_finite() && timeout_ms >= 0.0) {
            return Err(invalid(format!(
                "VcpuThreads.next: timeoutMs must be a finite number from 0, got {timeout_ms}"
            )));
        }
        let take = || self.pending.load(Ordering::SeqCst) > 0;
        let timeout = Duration::from_secs_f64(timeout_ms / 1000.0);
        if !wait_until(take, Duration::from_secs(3600), Some(timeout)) {
            return Ok(-1.0);
        }
        Ok(match self.take_posted() {
            Some(i) => {
                let code = self.members[i as usize].code.load(Ordering::Acquire);
                f64::from(code) * 256.0 + f64::from(i)
            }
            None => -1.0,
        })
    }

    /// Tells every loop to end: the runs in flight are cancelled (returned), every
    /// thread woken to see it. Nothing is waited for.
    fn stop(&self) -> Vec<&Member> {
        self.stop.store(true, Ordering::SeqCst);
        let mut cancelled = Vec::new();
        for m in &self.members {
            if m.state.load(Ordering::SeqCst) == RUNNING {
                m.core.cancel();
                cancelled.push(m);
            }
            if let Some(t) = m.thread.get() {
                t.unpark();
            }
        }
        cancelled
    }
}

impl Drop for VcpuThreads {
    /// Collected without `end()`: the loops are told to end (their runs cancelled), not
    /// waited for.
    fn drop(&mut self) {
        self.group.stop();
    }
}

/// The bare N-API function behind `nextFunction()`.
mod next_fn {
    use super::Group;
    use napi::bindgen_prelude::{FromNapiValue, Function};
    use napi::{sys, Env};
    use std::ffi::c_void;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::ptr;
    use std::sync::Arc;

    const NAME: &str = "nextExit";

    /// A function whose data is one strong count of `group`, released by its finalizer.
    pub(super) fn make(env: &Env, group: Arc<Group>) -> napi::Result<Function<'_, f64, f64>> {
        let data = Arc::into_raw(group).cast_mut().cast::<c_void>();
        let raw = env.raw();
        let mut value = ptr::null_mut();
        // SAFETY: `raw` is the live env of the calling JS frame; `NAME` is valid UTF-8
        // for its length; `data` stays valid until the finalizer added below runs.
        let made = unsafe {
            sys::napi_create_function(
                raw,
                NAME.as_ptr().cast(),
                NAME.len() as isize,
                Some(call),
                data,
                &mut value,
            ) == sys::Status::napi_ok
                && sys::napi_add_finalizer(
                    raw,
                    value,
                    data,
                    Some(finalize),
                    ptr::null_mut(),
                    ptr::null_mut(),
                ) == sys::Status::napi_ok
        };
        if !made {
            // SAFETY: no finalizer owns `data`: the count taken above is given back once.
            drop(unsafe { Arc::from_raw(data.cast_const().cast::<Group>()) });
            return Err(napi::Error::from_reason(
                "creating the next-exit function failed",
            ));
        }
        // SAFETY: `value` is a function value of this env.
        unsafe { Function::from_napi_value(raw, value) }
    }

    /// `(resume, timeoutMs) => code * 256 + member | -1`, or a thrown coded `Error`.
    unsafe extern "C" fn call(
        env: sys::napi_env,
        info: sys::napi_callback_info,
    ) -> sys::napi_value {
        let mut argc = 2usize;
        let mut args = [ptr::null_mut(); 2];
        let mut data: *mut c_void = ptr::null_mut();
        let (mut resume, mut timeout) = (0i32, 0f64);
        // SAFETY: `env` and `info` come from N-API for this call; `argc` says two slots;
        // a non-number argument makes the napi_get_value_* calls fail (checked).
        let ok = unsafe {
            sys::napi_get_cb_info(
                env,
                info,
                &mut argc,
                args.as_mut_ptr(),
                ptr::null_mut(),
                &mut data,
            ) == sys::Status::napi_ok
                && argc >= 2
                && !data.is_null()
                && sys::napi_get_value_int32(env, args[0], &mut resume) == sys::Status::napi_ok
                && sys::napi_get_value_double(env, args[1], &mut timeout) == sys::Status::napi_ok
        };
        if !ok {
            throw(
                env,
                "EINVAL",
                "nextExit: expected (resume: number, timeoutMs: number)",
            );
            return ptr::null_mut();
        }
        // SAFETY: `data` is the group this function holds a count of (see `make`).
        let group = unsafe { &*data.cast_const().cast::<Group>() };
        match catch_unwind(AssertUnwindSafe(|| group.next(resume, timeout))) {
            Ok(Ok(r)) => {
                let mut result = ptr::null_mut();
                // SAFETY: `env` is live for this call; `result` receives the number.
                if unsafe { sys::napi_create_double(env, r, &mut result) } != sys::Status::napi_ok {
                    throw(env, "ENAPI", "nextExit: napi_create_double failed");
                    return ptr::null_mut();
                }
                result
            }
            Ok(Err(e)) => {
                throw(env, &e.status, &e.reason);
                ptr::null_mut()
            }
            Err(_) => {
                throw(
                    env,
                    "EPANIC",
                    "nextExit: the native code panicked; this is a bug in mshv, please report it",
                );
                ptr::null_mut()
            }
        }
    }

    fn throw(env: sys::napi_env, code: &str, message: &str) {
        // Best effort: if even throwing fails, N-API has an exception or error pending.
        let _ = Env::from_raw(env).throw_error(message, Some(code));
    }

    /// Gives back the function's count of its group once the function is collected.
    unsafe extern "C" fn finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
        // SAFETY: `data` is the count `make` took, given back here once.
        drop(unsafe { Arc::from_raw(data.cast_const().cast::<Group>()) });
    }
}
