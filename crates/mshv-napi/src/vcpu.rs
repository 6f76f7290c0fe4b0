//! `Vcpu`: run, registers, the register page and the exit message buffer.

use crate::budget::{Allowance, Budget, RunBudget};
use crate::buffers::{external, Detachables};
use crate::errors::{
    closed, from_napi, guard, invalid, panic_message, to_js, u64_arg, JsError, Result,
};
use crate::layout::{
    EXIT_CANCELLED, EXIT_CLOCK, EXIT_HALTED, EXIT_IDLE, EXIT_INSTRUCTIONS, EXIT_TIMEOUT,
};
use crate::live::{Kind, Live};
use crate::register_page::RegisterPage;
use crate::runner::Runner;
use crate::slot_lock::SlotLock;
use hv_core::{Canceller, Exit, ExitMessage, HostRegion, HvError, RegisterValue, VcpuBackend};
use napi::bindgen_prelude::{
    ArrayBuffer, BigInt, BigUint64Array, Object, ToNapiValue, TypeName, Uint32Array, Unknown,
    ValueType,
};
use napi::{sys, Env};
use napi_derive::napi;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

/// The backend and the message it writes, touched only under [`Core`]'s lock.
struct Slot {
    vcpu: Live<Box<dyn VcpuBackend>>,
    msg: ExitMessage,
    /// How many bytes of the shared message the last publication wrote.
    published: usize,
}

/// The native vCPU and its exit message buffer, shared with its own thread for an
/// async `run()`, with the VM (which closes it) and with the finalizers of the
/// ArrayBuffers over its memory.
pub(crate) struct Core {
    slot: SlotLock<Option<Slot>>,
    /// Set once by `close()`; objects sharing the core check it before touching memory.
    closed: AtomicBool,
    /// The message JavaScript reads: published from the slot's copy after each run
    /// with volatile writes, since JavaScript may read it at any time.
    shared_msg: Box<UnsafeCell<ExitMessage>>,
    canceller: Canceller,
    index: u32,
    /// The register page's mapping, which its buffers keep alive; let go at close.
    page: Mutex<Option<Arc<HostRegion>>>,
    page_buffers: Mutex<Detachables>,
    message_buffers: Mutex<Detachables>,
    /// The vCPU's own thread for async runs (see [`Core::on_own_thread`]).
    own_thread: Mutex<Option<mpsc::Sender<RunJob>>>,
}

/// An async run, sent to the vCPU's own thread.
type RunJob = Box<dyn FnOnce() + Send>;

// SAFETY: `shared_msg` is written only under the `slot` lock (one run at a time), with
// volatile writes through a raw pointer; JavaScript reads it as an external buffer.
unsafe impl Sync for Core {}
// SAFETY: every field is Send; the UnsafeCell is guarded as described above.
unsafe impl Send for Core {}

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
    /// The sim's translating tier on this vCPU (None on mshv).
    pub translator: Option<NativeTranslatorStats>,
}

/// What the sim's translating tier did on one vCPU.
#[napi(object)]
pub struct NativeTranslatorStats {
    pub blocks: f64,
    pub instructions: f64,
    pub bytes: f64,
    pub nanos: f64,
    pub uncovered: f64,
    pub failed: f64,
    pub flushes: f64,
}

/// One CPUID answer for `Vcpu.setCpuid`: registers left out keep the hypervisor's value.
#[napi(object)]
pub struct CpuidAnswer {
    pub leaf: u32,
    /// Omitted: every subleaf.
    pub subleaf: Option<u32>,
    pub eax: Option<u32>,
    pub ebx: Option<u32>,
    pub ecx: Option<u32>,
    pub edx: Option<u32>,
}

/// Result of a GVA translation.
#[napi(object)]
pub struct Translation {
    pub gpa: BigInt,
    /// `hv_translate_gva_result_code`: 0 = success.
    pub result: u32,
}

/// The exceptions behind a triple fault (hv-core `TripleFault`).
#[napi(object)]
pub struct NativeTripleFault {
    /// The vectors raised, the first exception first, the undeliverable one last.
    pub vectors: Vec<u32>,
    /// The first exception's error code, when it pushes one.
    pub error_code: Option<u32>,
    /// The first exception's faulting address, when it was a #PF.
    pub cr2: Option<BigInt>,
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
        Exit::InstructionLimit => EXIT_INSTRUCTIONS,
        Exit::Timeout => EXIT_TIMEOUT,
        Exit::Clock => EXIT_CLOCK,
        Exit::Idle => EXIT_IDLE,
        Exit::Halted => EXIT_HALTED,
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

    pub(crate) fn cancel(&self) {
        self.canceller.cancel();
    }

    /// Consumes a cancel no run has seen yet: whether there was one.
    pub(crate) fn take_cancel(&self) -> bool {
        self.canceller.take()
    }

    /// Locks the backend for one call; a vCPU busy in an async run is a clear EBUSY.
    fn with_slot<T>(&self, f: impl FnOnce(&mut Slot) -> hv_core::Result<T>) -> Result<T> {
        let Some(mut guard) = self.slot.try_lock() else {
            return Err(to_js(HvError::Busy(self.index)));
        };
        let slot = guard.as_mut().ok_or_else(|| closed("vCPU"))?;
        f(slot).map_err(to_js)
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn VcpuBackend, &mut ExitMessage) -> hv_core::Result<T>,
    ) -> Result<T> {
        self.with_slot(|slot| f(slot.vcpu.get_mut().as_mut(), &mut slot.msg))
    }

    /// One native run within `budget`: the exit code, with the message published.
    pub(crate) fn run(&self, budget: &Budget) -> Result<u32> {
        self.with_slot(|slot| {
            let allowance = budget.allowance(slot.vcpu.get_mut().instructions());
            let limits = match &allowance {
                Allowance::Spent(code) => return Ok(*code),
                Allowance::Run { limits, .. } => *limits,
            };
            let exit = slot.vcpu.get_mut().run(&mut slot.msg, &limits)?;
            if let Some(code) = allowance.end_code(exit) {
                return Ok(code);
            }
            if exit == Exit::Message {
                self.publish(slot);
            }
            Ok(exit_code(exit, &slot.msg))
        })
    }

    /// Runs `job` on the vCPU's own thread, started at the first async run, as a VMM
    /// gives each vCPU a thread. Runs on libuv's pool held a pool thread for as long as
    /// the guest ran: more running vCPUs than pool threads (4) starved the rest, and a
    /// Worker's teardown waited for the run forever, since Node drains pool work before
    /// it calls the cleanup hook that cancels the run (`Environment::RunCleanup`:
    /// `CleanupHandles()` first). The thread ends when the vCPU is closed or dropped.
    pub(crate) fn on_own_thread(&self, job: RunJob) -> Result<()> {
        let mut own = self
            .own_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let job = match own.as_ref() {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return Ok(()),
                // The thread is gone (it cannot panic: each job catches its own): start anew.
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (jobs, queue) = mpsc::channel::<RunJob>();
        std::thread::Builder::new()
            .name(format!("mshv-vcpu{}", self.index))
            .spawn(move || {
                for job in queue {
                    job();
                }
            })
            .map_err(|e| {
                napi::Error::new(
                    "ENOMEM".to_string(),
                    format!("vCPU {}: its thread could not start: {e}", self.index),
                )
            })?;
        jobs.send(job).map_err(|_| closed("vCPU thread"))?;
        *own = Some(jobs);
        Ok(())
    }

    /// Copies the slot's message to the one JavaScript reads: its used bytes, and zeros
    /// over what a longer earlier message left beyond them.
    fn publish(&self, slot: &mut Slot) {
        let used = slot.msg.used_len();
        let shared = self.shared_msg.get().cast::<u8>();
        // SAFETY: `shared_msg` is a live ExitMessage of MESSAGE_SIZE bytes, written only
        // here, under the slot lock; `used` and `published` are at most MESSAGE_SIZE.
        unsafe {
            hv_core::shared::copy_to(shared, &slot.msg.bytes[..used]);
            if slot.published > used {
                let zeros = [0u8; hv_core::MESSAGE_SIZE];
                hv_core::shared::copy_to(shared.add(used), &zeros[..slot.published - used]);
            }
        }
        slot.published = used;
    }

    /// Closes the vCPU: cancels a run in flight and waits for it, then detaches every
    /// buffer and releases the backend and its register page. Idempotent.
    pub(crate) fn close(&self, env: &Env) {
        if self.is_closed() {
            return;
        }
        self.canceller.cancel();
        // Blocks until an async run on the vCPU's thread has returned (it was cancelled).
        let mut slot = self.slot.lock();
        self.closed.store(true, Ordering::Release);
        // The vCPU's thread ends once its queue is empty.
        drop(
            self.own_thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        for buffers in [&self.page_buffers, &self.message_buffers] {
            buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .detach_all(env);
        }
        // Retired, and let go: unmapped now unless a buffer that escaped holds it.
        if let Some(page) = self
            .page
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            page.retire();
        }
        *slot = None;
    }
}

/// What an async run settles with: the exit code, or the coded error (resolved, not
/// rejected, so its `code` survives napi-rs's rejection path, which keeps only a
/// status; the TypeScript layer throws it).
pub enum RunOutcome {
    Exit(u32),
    Failed(JsError),
}

impl TypeName for RunOutcome {
    fn type_name() -> &'static str {
        "number | Error"
    }

    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl ToNapiValue for RunOutcome {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        match val {
            // SAFETY: forwarded from this function's contract (a live env).
            RunOutcome::Exit(code) => unsafe { u32::to_napi_value(env, code) },
            // SAFETY: as above; into_value builds an Error object with `code` set.
            RunOutcome::Failed(e) => Ok(unsafe { napi::JsError::from(e).into_value(env) }),
        }
    }
}

/// One async run on the vCPU's own thread: the exit code or the coded error; a panic
/// (which would end the thread and lose the promise) becomes `EPANIC`.
pub(crate) fn run_caught(core: &Core, budget: &Budget) -> RunOutcome {
    match catch_unwind(AssertUnwindSafe(|| core.run(budget))) {
        Ok(Ok(code)) => RunOutcome::Exit(code),
        Ok(Err(e)) => RunOutcome::Failed(e),
        Err(payload) => RunOutcome::Failed(napi::Error::new(
            "EPANIC".to_string(),
            format!(
                "Vcpu.run: the native run panicked ({}); this is a bug in mshv, please report it",
                panic_message(payload.as_ref())
            ),
        )),
    }
}

/// A virtual processor.
#[napi]
pub struct Vcpu {
    pub(crate) core: Arc<Core>,
}

impl Vcpu {
    pub(crate) fn new(env: &Env, backend: Box<dyn VcpuBackend>) -> Self {
        let core = Arc::new(Core {
            canceller: backend.canceller(),
            index: backend.index(),
            page: Mutex::new(backend.register_page_region()),
            slot: SlotLock::new(Some(Slot {
                vcpu: Live::new(backend, Kind::Vcpu),
                msg: ExitMessage::default(),
                published: 0,
            })),
            closed: AtomicBool::new(false),
            own_thread: Mutex::default(),
            shared_msg: Box::new(UnsafeCell::new(ExitMessage::default())),
            page_buffers: Mutex::default(),
            message_buffers: Mutex::default(),
        });
        crate::live::register(env, Arc::downgrade(&core));
        Vcpu { core }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        self.core.check_open("vCPU")
    }
}

fn budget_of(budget: Option<&RunBudget>) -> Arc<Budget> {
    budget.map_or_else(Arc::default, |b| Arc::clone(&b.inner))
}

#[napi]
impl Vcpu {
    #[napi(getter)]
    pub fn index(&self) -> u32 {
        self.core.index
    }

    /// A handle `{ id }` for `runVcpuFunction()`'s function: each call with its `id`
    /// runs this vCPU on the calling thread until its next exit and returns the
    /// message type, or `layout().exits.cancelled` / `.instructions` / `.timeout`;
    /// `budget` bounds all of its runs together.
    ///
    /// Not a method because it is called once per exit: a napi-rs class method pays for
    /// a borrow registry behind a global lock on every call (about 220 ns here); see
    /// `runner.rs` for what this one costs.
    #[napi(ts_return_type = "{ readonly id: number }")]
    pub fn runner_handle<'env>(
        &self,
        env: &'env Env,
        budget: Option<&RunBudget>,
    ) -> Result<Unknown<'env>> {
        guard("Vcpu.runnerHandle", || {
            self.check_open()?;
            Runner {
                core: Arc::clone(&self.core),
                budget: budget_of(budget),
            }
            .into_handle(env)
            .map_err(from_napi)
        })
    }

    /// Runs on the vCPU's own thread; the event loop stays free. Resolves with what a
    /// runner call returns, or with the coded `Error` it would throw.
    #[napi(ts_return_type = "Promise<number | Error>")]
    pub fn run<'env>(&self, env: &'env Env, budget: Option<&RunBudget>) -> Result<Object<'env>> {
        guard("Vcpu.run", || {
            self.check_open()?;
            let (deferred, promise) = env.create_deferred().map_err(from_napi)?;
            let core = Arc::clone(&self.core);
            let budget = budget_of(budget);
            self.core.on_own_thread(Box::new(move || {
                let outcome = run_caught(&core, &budget);
                // Settled through a threadsafe function: a no-op once the environment
                // is torn down (napi-rs aborts it in its teardown hook).
                deferred.resolve(move |_| Ok(outcome));
            }))?;
            Ok(promise)
        })
    }

    /// The benchmark baseline: runs with port exits completed in Rust (OUT dropped, IN
    /// all ones, RIP advanced) until an OUT to `stopPort` or another exit, at most
    /// `maxExits` exits. Returns the port exits completed.
    #[napi]
    pub fn run_rust_pio_loop(&self, stop_port: u32, max_exits: Option<f64>) -> Result<f64> {
        guard("Vcpu.runRustPioLoop", || {
            self.check_open()?;
            let port = u16::try_from(stop_port)
                .map_err(|_| invalid(format!("stopPort must be 0..0xffff, got {stop_port}")))?;
            let max = match max_exits {
                None => u64::MAX,
                Some(x) => crate::errors::whole(x, "maxExits", 9_007_199_254_740_991.0)?,
            };
            self.core
                .with(|b, msg| hv_core::pio_loop::run_pio_loop(b, msg, port, max))
                .map(|end| end.exits as f64)
        })
    }

    /// Interrupts a running vCPU from any thread; a vCPU not running returns at once
    /// from its next run.
    #[napi]
    pub fn cancel(&self) {
        self.core.cancel();
    }

    /// Consumes a cancel no run has seen yet: true when there was one. A run that
    /// ended at HLT just as `cancel()` came leaves it pending; a caller about to wait
    /// for a wake-up takes it here instead of waiting.
    #[napi]
    pub fn take_cancel(&self) -> bool {
        self.core.take_cancel()
    }

    /// One batched get-register hypercall: `out` receives two u64 halves per id.
    #[napi]
    pub fn get_registers(&self, ids: Uint32Array, mut out: BigUint64Array) -> Result<()> {
        guard("Vcpu.getRegisters", || {
            self.check_open()?;
            check_pairs(&ids, out.len(), "out")?;
            let mut values: Vec<RegisterValue> = vec![[0, 0]; ids.len()];
            self.core.with(|b, _| b.get_registers(&ids, &mut values))?;
            // SAFETY: `out` is a live typed array of the checked length; the JS thread is
            // inside this call, so nothing else touches it.
            let dst = unsafe { out.as_mut() };
            for (i, v) in values.iter().enumerate() {
                dst[2 * i] = v[0];
                dst[2 * i + 1] = v[1];
            }
            Ok(())
        })
    }

    /// One batched set-register hypercall: two u64 halves per id.
    #[napi]
    pub fn set_registers(&self, ids: Uint32Array, values: BigUint64Array) -> Result<()> {
        guard("Vcpu.setRegisters", || {
            self.check_open()?;
            check_pairs(&ids, values.len(), "values")?;
            let v: Vec<RegisterValue> = values.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
            self.core.with(|b, _| b.set_registers(&ids, &v))
        })
    }

    /// One GVA translation hypercall.
    #[napi]
    pub fn translate_gva(&self, gva: BigInt, flags: u32) -> Result<Translation> {
        guard("Vcpu.translateGva", || {
            self.check_open()?;
            let gva = u64_arg(&gva, "gva")?;
            let (gpa, result) = self.core.with(|b, _| b.translate_gva(gva, flags as u64))?;
            Ok(Translation {
                gpa: BigInt::from(gpa),
                result,
            })
        })
    }

    /// Registers the CPUID answers of this vCPU (replacing earlier ones): the guest's
    /// CPUID is then answered by the hypervisor from them, without an exit.
    #[napi]
    pub fn set_cpuid(&self, answers: Vec<CpuidAnswer>) -> Result<()> {
        guard("Vcpu.setCpuid", || {
            self.check_open()?;
            let results: Vec<hv_core::CpuidResult> = answers
                .iter()
                .map(|a| hv_core::CpuidResult {
                    leaf: a.leaf,
                    subleaf: a.subleaf,
                    registers: [a.eax, a.ebx, a.ecx, a.edx],
                })
                .collect();
            self.core.with(|b, _| b.set_cpuid_results(&results))
        })
    }

    /// The vCPU's register page, or null when it has none (no mapping, or the
    /// backend runs without one).
    #[napi]
    pub fn register_page(&self) -> Result<Option<RegisterPage>> {
        guard("Vcpu.registerPage", || {
            self.check_open()?;
            let ptr = self.core.with(|b, _| Ok(b.register_page()))?;
            let page = self
                .core
                .page
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            Ok(match (ptr, page) {
                (Some(ptr), Some(_)) => Some(RegisterPage::new(Arc::clone(&self.core), ptr)),
                _ => None,
            })
        })
    }

    /// The exit message buffer (256 bytes, rewritten by each run) as an ArrayBuffer.
    #[napi]
    pub fn message_buffer<'env>(&self, env: &'env Env) -> Result<ArrayBuffer<'env>> {
        guard("Vcpu.messageBuffer", || {
            self.check_open()?;
            let ptr = self.core.shared_msg.get().cast::<u8>();
            let owner = Arc::clone(&self.core);
            let mut buffers = self
                .core
                .message_buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // SAFETY: the message lives in `core`, which the buffer keeps alive.
            unsafe { external(env, ptr, hv_core::MESSAGE_SIZE, owner, &mut buffers) }
        })
    }

    /// Hypercall and exit counters.
    #[napi]
    pub fn stats(&self) -> Result<NativeStats> {
        guard("Vcpu.stats", || {
            self.check_open()?;
            self.core.with(|b, _| {
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
                    translator: b.translator_stats().map(|t| NativeTranslatorStats {
                        blocks: t.blocks as f64,
                        instructions: t.instructions as f64,
                        bytes: t.bytes as f64,
                        nanos: t.nanos as f64,
                        uncovered: t.uncovered as f64,
                        failed: t.failed as f64,
                        flushes: t.flushes as f64,
                    }),
                })
            })
        })
    }

    /// Starts (clearing what was recorded) or stops recording a digest of each run's end
    /// (sim only: ENOTSUP on mshv).
    #[napi]
    pub fn record_exits(&self, on: bool) -> Result<()> {
        guard("Vcpu.recordExits", || {
            self.check_open()?;
            self.core.with(|b, _| b.record_exits(on))
        })
    }

    /// The digests recorded: (instructions retired, hash of the run's end) pairs, flat.
    #[napi]
    pub fn exit_digests(&self) -> Result<BigUint64Array> {
        guard("Vcpu.exitDigests", || {
            self.check_open()?;
            self.core.with(|b, _| {
                let flat: Vec<u64> = b.exit_digests().into_iter().flatten().collect();
                Ok(BigUint64Array::new(flat))
            })
        })
    }

    /// The exceptions behind the last run's triple fault, or null when the backend did
    /// not see them (MSHV reports none) or the last run ended otherwise.
    #[napi]
    pub fn triple_fault(&self) -> Result<Option<NativeTripleFault>> {
        guard("Vcpu.tripleFault", || {
            self.check_open()?;
            self.core.with(|b, _| {
                Ok(b.triple_fault().map(|t| NativeTripleFault {
                    vectors: t.vectors.iter().map(|v| u32::from(*v)).collect(),
                    error_code: t.error_code,
                    cr2: t.cr2.map(BigInt::from),
                }))
            })
        })
    }

    /// Zeroes the counters.
    #[napi]
    pub fn reset_stats(&self) -> Result<()> {
        guard("Vcpu.resetStats", || {
            self.check_open()?;
            self.core.with(|b, _| {
                b.reset_counters();
                Ok(())
            })
        })
    }

    /// Closes the vCPU: a run in flight is cancelled and waited for; then its buffers
    /// are detached and its native resources released. Calling it twice is harmless.
    #[napi]
    pub fn close(&self, env: Env) -> Result<()> {
        guard("Vcpu.close", || {
            self.core.close(&env);
            Ok(())
        })
    }

    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.core.is_closed()
    }
}

impl Core {
    /// Creates a register page view's buffer (see `RegisterPage::buffer`).
    pub(crate) fn page_buffer<'env>(&self, env: &'env Env) -> Result<ArrayBuffer<'env>> {
        let region = self
            .page
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| closed("vCPU (of this register page)"))?;
        let mut buffers = self.page_buffers.lock().unwrap_or_else(|p| p.into_inner());
        let owner = Arc::clone(&region);
        // SAFETY: the page's mapping is owned by `region`, which the buffer keeps; a
        // closed vCPU retires it (zero pages at the same address), never unmaps it.
        unsafe { external(env, region.as_ptr(), region.len(), owner, &mut buffers) }
    }
}
