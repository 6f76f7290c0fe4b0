//! `Vcpu`: run, registers, the register page and the exit message buffer.

use crate::buffers::{external, Detachables};
use crate::errors::{closed, from_napi, invalid, to_js, u64_arg, JsError, Result};
use crate::layout::{EXIT_BUDGET, EXIT_CANCELLED};
use crate::live::{Kind, Live};
use crate::register_page::RegisterPage;
use crate::runner::Runner;
use hv_core::{Canceller, Exit, ExitMessage, HvError, RegisterValue, RunLimits, VcpuBackend};
use napi::bindgen_prelude::{
    ArrayBuffer, AsyncTask, BigInt, BigUint64Array, Function, Uint32Array,
};
use napi::{Env, Task};
use napi_derive::napi;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

/// The native vCPU and its exit message buffer, shared with the worker thread of an
/// async `run()` and with the finalizers of the ArrayBuffers over its memory.
pub(crate) struct Core {
    backend: Mutex<Option<Live<Box<dyn VcpuBackend>>>>,
    /// Set once by `close()`; objects sharing the core check it before touching memory.
    closed: AtomicBool,
    /// Written only by `run()` while `backend` is locked; read by JS between runs.
    msg: Box<UnsafeCell<ExitMessage>>,
}

// SAFETY: `msg` is written only under the `backend` lock (one run at a time); JS reads
// it between runs, as with the kernel's own message buffer.
unsafe impl Sync for Core {}
// SAFETY: every field is Send; the UnsafeCell is guarded as described above.
unsafe impl Send for Core {}

/// Limits for one run, from JS.
#[napi(object)]
#[derive(Clone, Copy)]
pub struct RunOptions {
    /// Stop after this many guest instructions (sim).
    pub max_instructions: Option<f64>,
    /// Stop after this many milliseconds.
    pub timeout_ms: Option<f64>,
}

/// Per-vCPU counters.
#[napi(object)]
pub struct NativeStats {
    pub get_registers: f64,
    pub set_registers: f64,
    pub translate_gva: f64,
    pub registers_read: f64,
    pub registers_written: f64,
    pub runs: f64,
    /// Exits by message type, as [type, count] pairs.
    pub exits: Vec<Vec<f64>>,
    /// Guest instructions retired (sim only; 0 on mshv).
    pub instructions: f64,
}

/// Result of a GVA translation.
#[napi(object)]
pub struct Translation {
    pub gpa: BigInt,
    /// `hv_translate_gva_result_code`: 0 = success.
    pub result: u32,
}

/// A virtual processor.
#[napi]
pub struct Vcpu {
    core: Arc<Core>,
    canceller: Canceller,
    index: u32,
    page_buffers: Arc<Mutex<Detachables>>,
    message_buffers: Detachables,
}

fn limits(o: Option<RunOptions>) -> Result<RunLimits> {
    let Some(o) = o else {
        return Ok(RunLimits::default());
    };
    let count = |v: Option<f64>, what: &str| -> Result<Option<f64>> {
        match v {
            Some(x) if !(x.is_finite() && x >= 0.0) => Err(invalid(format!(
                "{what} must be a non-negative number, got {x}"
            ))),
            other => Ok(other),
        }
    };
    Ok(RunLimits {
        max_instructions: count(o.max_instructions, "maxInstructions")?.map(|x| x as u64),
        timeout: count(o.timeout_ms, "timeoutMs")?.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
    })
}

/// Batched register calls carry two u64 halves per id.
fn check_pairs(ids: &[u32], len: usize, what: &str) -> Result<()> {
    if len != ids.len() * 2 {
        return Err(invalid(format!(
            "{what} must hold 2 u64 per register: {} ids need length {}, got {len}",
            ids.len(),
            ids.len() * 2
        )));
    }
    Ok(())
}

/// The number a run returns to JavaScript: the message type, or a run-end code.
pub(crate) fn exit_code(exit: Exit, msg: &ExitMessage) -> u32 {
    match exit {
        Exit::Message => msg.message_type(),
        Exit::Cancelled => EXIT_CANCELLED,
        Exit::BudgetExhausted => EXIT_BUDGET,
    }
}

impl Core {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `ECLOSED` naming `what` once the vCPU is closed.
    pub(crate) fn check_open(&self, what: &'static str) -> Result<()> {
        if self.is_closed() {
            Err(closed(what))
        } else {
            Ok(())
        }
    }

    /// Locks the backend for one call; a vCPU busy in an async run is a clear EBUSY.
    pub(crate) fn with<T>(
        &self,
        index: u32,
        f: impl FnOnce(&mut dyn VcpuBackend, &mut ExitMessage) -> hv_core::Result<T>,
    ) -> Result<T> {
        let mut guard = match self.backend.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return Err(to_js(HvError::Busy(index))),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let backend = guard.as_mut().ok_or_else(|| closed("vCPU"))?;
        // SAFETY: the message is only touched while `backend` is locked, which it is.
        let msg = unsafe { &mut *self.msg.get() };
        f(backend.get_mut().as_mut(), msg).map_err(to_js)
    }
}

/// The worker-thread half of `run()`.
pub struct RunTask {
    core: Arc<Core>,
    index: u32,
    limits: RunLimits,
}

impl Task for RunTask {
    type Output = u32;
    type JsValue = u32;

    fn compute(&mut self) -> napi::Result<u32> {
        let limits = self.limits;
        self.core
            .with(self.index, |b, msg| {
                b.run(msg, &limits).map(|e| exit_code(e, msg))
            })
            .map_err(|e: JsError| {
                napi::Error::new(
                    napi::Status::GenericFailure,
                    format!("[{}] {}", e.status, e.reason),
                )
            })
    }

    fn resolve(&mut self, _env: Env, output: u32) -> napi::Result<u32> {
        Ok(output)
    }
}

impl Vcpu {
    pub(crate) fn new(backend: Box<dyn VcpuBackend>) -> Self {
        let canceller = backend.canceller();
        let index = backend.index();
        Vcpu {
            core: Arc::new(Core {
                backend: Mutex::new(Some(Live::new(backend, Kind::Vcpu))),
                closed: AtomicBool::new(false),
                msg: Box::new(UnsafeCell::new(ExitMessage::default())),
            }),
            canceller,
            index,
            page_buffers: Arc::default(),
            message_buffers: Detachables::default(),
        }
    }

    fn check_open(&self) -> Result<()> {
        self.core.check_open("vCPU")
    }
}

#[napi]
impl Vcpu {
    #[napi(getter)]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// A function that runs this vCPU on the calling thread until its next exit and
    /// returns the message type, or `layout().exits.cancelled` / `.budget`; `options`
    /// limit each of its runs.
    ///
    /// A function rather than a method because it is called once per exit: a napi-rs
    /// class method pays for a borrow registry behind a global lock on every call
    /// (about 220 ns here); see `runner.rs` for what this one costs.
    #[napi(ts_return_type = "() => number")]
    pub fn runner<'env>(
        &self,
        env: &'env Env,
        options: Option<RunOptions>,
    ) -> Result<Function<'env, (), u32>> {
        self.check_open()?;
        Runner {
            core: Arc::clone(&self.core),
            index: self.index,
            limits: limits(options)?,
        }
        .into_function(env)
        .map_err(from_napi)
    }

    /// Runs on a worker thread; the event loop stays free. Resolves like a `runner()`
    /// call.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn run(&self, options: Option<RunOptions>) -> Result<AsyncTask<RunTask>> {
        self.check_open()?;
        Ok(AsyncTask::new(RunTask {
            core: Arc::clone(&self.core),
            index: self.index,
            limits: limits(options)?,
        }))
    }

    /// The benchmark baseline: runs with port exits completed in Rust (OUT dropped, IN
    /// all ones, RIP advanced) until an OUT to `stopPort` or another exit, at most
    /// `maxExits` exits. Returns the port exits completed.
    #[napi]
    pub fn run_rust_pio_loop(&self, stop_port: u32, max_exits: Option<f64>) -> Result<f64> {
        self.check_open()?;
        let port = u16::try_from(stop_port)
            .map_err(|_| invalid(format!("stopPort must be 0..0xffff, got {stop_port}")))?;
        let max = match max_exits {
            None => u64::MAX,
            Some(x) if x.is_finite() && x >= 0.0 => x as u64,
            Some(x) => {
                return Err(invalid(format!(
                    "maxExits must be a non-negative number, got {x}"
                )))
            }
        };
        self.core
            .with(self.index, |b, msg| {
                hv_core::pio_loop::run_pio_loop(b, msg, port, max)
            })
            .map(|end| end.exits as f64)
    }

    /// Interrupts a running vCPU from any thread; a vCPU not running returns at once
    /// from its next run.
    #[napi]
    pub fn cancel(&self) {
        self.canceller.cancel();
    }

    /// One batched get-register hypercall: `out` receives two u64 halves per id.
    #[napi]
    pub fn get_registers(&self, ids: Uint32Array, mut out: BigUint64Array) -> Result<()> {
        self.check_open()?;
        check_pairs(&ids, out.len(), "out")?;
        let mut values: Vec<RegisterValue> = vec![[0, 0]; ids.len()];
        self.core
            .with(self.index, |b, _| b.get_registers(&ids, &mut values))?;
        // SAFETY: `out` is a live typed array of the checked length; the JS thread is
        // inside this call, so nothing else touches it.
        let dst = unsafe { out.as_mut() };
        for (i, v) in values.iter().enumerate() {
            dst[2 * i] = v[0];
            dst[2 * i + 1] = v[1];
        }
        Ok(())
    }

    /// One batched set-register hypercall: two u64 halves per id.
    #[napi]
    pub fn set_registers(&self, ids: Uint32Array, values: BigUint64Array) -> Result<()> {
        self.check_open()?;
        check_pairs(&ids, values.len(), "values")?;
        let v: Vec<RegisterValue> = values.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        self.core.with(self.index, |b, _| b.set_registers(&ids, &v))
    }

    /// One GVA translation hypercall.
    #[napi]
    pub fn translate_gva(&self, gva: BigInt, flags: u32) -> Result<Translation> {
        self.check_open()?;
        let gva = u64_arg(&gva, "gva")?;
        let (gpa, result) = self
            .core
            .with(self.index, |b, _| b.translate_gva(gva, flags as u64))?;
        Ok(Translation {
            gpa: BigInt::from(gpa),
            result,
        })
    }

    /// The vCPU's register page, or null when it has none (no mapping, or the
    /// backend runs without one).
    #[napi]
    pub fn register_page(&self) -> Result<Option<RegisterPage>> {
        self.check_open()?;
        let page = self.core.with(self.index, |b, _| Ok(b.register_page()))?;
        Ok(page
            .map(|p| RegisterPage::new(Arc::clone(&self.core), p, Arc::clone(&self.page_buffers))))
    }

    /// The exit message buffer (256 bytes, rewritten by each run) as an ArrayBuffer.
    #[napi]
    pub fn message_buffer<'env>(&mut self, env: &'env Env) -> Result<ArrayBuffer<'env>> {
        self.check_open()?;
        let ptr = self.core.msg.get().cast::<u8>();
        let owner = Arc::clone(&self.core);
        // SAFETY: the message lives in `core`, which the buffer keeps alive.
        unsafe {
            external(
                env,
                ptr,
                hv_core::MESSAGE_SIZE,
                owner,
                &mut self.message_buffers,
            )
        }
    }

    /// Hypercall and exit counters.
    #[napi]
    pub fn stats(&self) -> Result<NativeStats> {
        self.check_open()?;
        self.core.with(self.index, |b, _| {
            let c = b.counters();
            Ok(NativeStats {
                get_registers: c.get_registers as f64,
                set_registers: c.set_registers as f64,
                translate_gva: c.translate_gva as f64,
                registers_read: c.registers_read as f64,
                registers_written: c.registers_written as f64,
                runs: c.runs as f64,
                exits: c
                    .exits
                    .iter()
                    .map(|e| vec![e.message_type as f64, e.count as f64])
                    .collect(),
                instructions: b.instructions() as f64,
            })
        })
    }

    /// Zeroes the counters.
    #[napi]
    pub fn reset_stats(&self) -> Result<()> {
        self.check_open()?;
        self.core.with(self.index, |b, _| {
            b.reset_counters();
            Ok(())
        })
    }

    /// Closes the vCPU: its buffers are detached and its native resources released.
    #[napi]
    pub fn close(&mut self, env: Env) -> Result<()> {
        if self.core.is_closed() {
            return Ok(());
        }
        self.canceller.cancel();
        let mut guard = self.core.backend.lock().unwrap_or_else(|p| p.into_inner());
        self.core.closed.store(true, Ordering::Release);
        self.page_buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .detach_all(&env);
        self.message_buffers.detach_all(&env);
        *guard = None;
        Ok(())
    }

    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.core.is_closed()
    }
}
