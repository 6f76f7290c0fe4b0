//! Counts of live native resources (partitions, vCPUs, guest memory regions), so that
//! tests and users can check that closing or garbage-collecting releases each once; the
//! registry of running vCPUs that process exit and environment teardown cancel; and the
//! process-wide guest memory limit.

use crate::errors::{guard, to_js, whole, Result};
use crate::vcpu::Core;
use napi::{sys, Env};
use napi_derive::napi;
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, Weak};

static VMS: AtomicI64 = AtomicI64::new(0);
static VCPUS: AtomicI64 = AtomicI64::new(0);

/// Which counter a resource belongs to.
#[derive(Clone, Copy)]
pub enum Kind {
    Vm,
    Vcpu,
}

fn counter(kind: Kind) -> &'static AtomicI64 {
    match kind {
        Kind::Vm => &VMS,
        Kind::Vcpu => &VCPUS,
    }
}

/// A native resource counted from creation to drop.
pub struct Live<T> {
    value: T,
    kind: Kind,
}

impl<T> Live<T> {
    pub fn new(value: T, kind: Kind) -> Self {
        counter(kind).fetch_add(1, Ordering::SeqCst);
        Live { value, kind }
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for Live<T> {
    fn drop(&mut self) {
        counter(self.kind).fetch_sub(1, Ordering::SeqCst);
    }
}

/// Native resources alive in this process.
#[napi(object)]
pub struct LiveResources {
    /// Partitions not yet closed or collected.
    pub vms: i64,
    /// vCPUs not yet closed or collected.
    pub vcpus: i64,
    /// Host memory regions still held in this process (guest RAM and register pages).
    pub memory_regions: i64,
    /// Bytes of guest RAM held in this process.
    pub memory_bytes: f64,
    /// The most guest RAM this process may hold (`setProcessMemoryLimit`).
    pub memory_limit: f64,
}

/// Counts of native resources alive now: each close or garbage collection releases
/// its resource exactly once, so these return to their earlier values.
#[napi]
pub fn live_resources() -> LiveResources {
    LiveResources {
        vms: VMS.load(Ordering::SeqCst),
        vcpus: VCPUS.load(Ordering::SeqCst),
        memory_regions: hv_core::memory::live_regions() as i64,
        memory_bytes: hv_core::memory::live_bytes() as f64,
        memory_limit: hv_core::memory::process_memory_limit() as f64,
    }
}

/// Sets the most guest RAM this process may hold at once (bytes, a multiple of 4 KiB;
/// the default is the host's physical memory). Regions already mapped stay.
#[napi]
pub fn set_process_memory_limit(bytes: f64) -> Result<()> {
    guard("setProcessMemoryLimit", || {
        let n = whole(bytes, "the process memory limit", (1u64 << 52) as f64)?;
        hv_core::memory::set_process_memory_limit(n as usize).map_err(to_js)
    })
}

/// vCPUs not yet closed, with the environment (JS thread) that made each.
static RUNNING: Mutex<Vec<(usize, Weak<Core>)>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this thread's environment has its teardown hook.
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

/// Remembers `core` so that tearing down `env` (or process exit) cancels its runs.
pub fn register(env: &Env, core: Weak<Core>) {
    let key = env.raw() as usize;
    if let Ok(mut all) = RUNNING.lock() {
        all.retain(|(_, c)| c.strong_count() > 0);
        all.push((key, core));
    }
    if !HOOKED.with(Cell::get) {
        // SAFETY: `env` is the live env of this call; the hook and its argument (the
        // env's address, used as a key only) stay valid for the env's life.
        let status =
            unsafe { sys::napi_add_env_cleanup_hook(env.raw(), Some(on_teardown), key as *mut _) };
        HOOKED.with(|h| h.set(status == sys::Status::napi_ok));
    }
}

/// Cancels every vCPU made by the environment `key` (0: every environment).
fn cancel_where(key: usize) -> u32 {
    let cores: Vec<_> = match RUNNING.lock() {
        Ok(all) => all
            .iter()
            .filter(|(k, _)| key == 0 || *k == key)
            .filter_map(|(_, c)| c.upgrade())
            .collect(),
        Err(_) => Vec::new(),
    };
    for c in &cores {
        c.cancel();
    }
    cores.len() as u32
}

/// Runs when an environment is torn down (a worker thread ends, the main thread's
/// environment is freed): a vCPU running on its own thread for it must stop, or it
/// would run on with nobody to hear of it.
unsafe extern "C" fn on_teardown(key: *mut std::ffi::c_void) {
    cancel_where(key as usize);
}

/// Cancels every vCPU this JavaScript environment made: a run in progress returns
/// `cancelled` within a millisecond. The package calls it on `process.exit()`, so a
/// guest running on its vCPU's thread cannot keep the process alive. Returns how many
/// vCPUs it asked.
#[napi]
pub fn cancel_all_vcpus(env: Env) -> u32 {
    cancel_where(env.raw() as usize)
}
