//! The per-exit run call as a bare N-API function.
//!
//! JavaScript calls it once per exit, so its call overhead is the TypeScript exit
//! loop's floor. A napi-rs class method pays for a borrow registry behind a global lock
//! (about 220 ns here); napi-rs's closure trampoline allocates an argument `Vec` and
//! builds a call context per call. This callback asks N-API only for its one argument.
//!
//! There is one such function (`runVcpuFunction()`), and a vCPU's runner is a number
//! passed to it: the runner's slot in this thread's table, published as the `id` of a
//! handle object (`Vcpu.runnerHandle()`) whose collection frees the slot. One function
//! per runner, as before, made the call site in `Vcpu.run` see a new target for every
//! vCPU: V8 then calls through its generic path, about 27 ns more per exit once a
//! process has made a few vCPUs. A number costs less to check than a tagged external
//! (N-API looks a type tag up as a private property).

use crate::budget::Budget;
use crate::errors::JsError;
use crate::vcpu::Core;
use napi::bindgen_prelude::{FromNapiValue, Function, Unknown};
use napi::{sys, Env};
use std::cell::RefCell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;

const NAME: &str = "runVcpu";

/// What one runner runs: a vCPU within one budget.
pub(crate) struct Runner {
    pub core: Arc<Core>,
    pub budget: Arc<Budget>,
}

/// This thread's runners by slot (each JavaScript environment has its own thread).
#[derive(Default)]
struct Runners {
    slots: Vec<Option<Runner>>,
    free: Vec<u32>,
}

thread_local! {
    /// Reached through thread-local storage only when a runner is made or freed: the
    /// run function carries a pointer to it (a TLS lookup in a shared library is a
    /// call, paid on every exit otherwise).
    static RUNNERS: Rc<RefCell<Runners>> = Rc::default();
}

/// Slots stay below this, so an id is a small integer (a V8 Smi: no allocation).
const MAX_RUNNERS: usize = 1 << 30;

impl Runners {
    fn insert(&mut self, r: Runner) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = Some(r);
            return Some(i);
        }
        if self.slots.len() >= MAX_RUNNERS {
            return None;
        }
        self.slots.push(Some(r));
        Some((self.slots.len() - 1) as u32)
    }

    fn remove(&mut self, i: u32) {
        if let Some(slot) = self.slots.get_mut(i as usize) {
            if slot.take().is_some() {
                self.free.push(i);
            }
        }
    }
}

impl Runner {
    fn run(&self) -> Result<u32, JsError> {
        self.core.run(&self.budget)
    }

    /// A frozen-to-be object `{ id }` naming this runner's slot, which it owns: the
    /// slot is freed when the object is collected.
    pub(crate) fn into_handle(self, env: &Env) -> napi::Result<Unknown<'_>> {
        let id = RUNNERS
            .with(|r| r.borrow_mut().insert(self))
            .ok_or_else(|| napi::Error::from_reason("too many vCPU runners alive"))?;
        let raw = env.raw();
        let mut object = ptr::null_mut();
        let mut number = ptr::null_mut();
        // SAFETY: `raw` is the live env of the calling JS frame; each call writes the
        // value it makes into its out-pointer.
        let made = unsafe {
            sys::napi_create_object(raw, &mut object) == sys::Status::napi_ok
                && sys::napi_create_uint32(raw, id, &mut number) == sys::Status::napi_ok
                && sys::napi_set_named_property(raw, object, c"id".as_ptr(), number)
                    == sys::Status::napi_ok
        };
        if !made
            // SAFETY: `object` (when made) is a value of this env; the finalizer gets
            // the slot number as its data and frees that slot once.
            || unsafe {
                sys::napi_add_finalizer(
                    raw,
                    object,
                    id as usize as *mut c_void,
                    Some(finalize),
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            } != sys::Status::napi_ok
        {
            RUNNERS.with(|r| r.borrow_mut().remove(id));
            return Err(napi::Error::from_reason(
                "creating the runner handle failed",
            ));
        }
        // SAFETY: `object` is a value of this env.
        unsafe { Unknown::from_napi_value(raw, object) }
    }
}

/// The N-API callback: runs the vCPU, returns the exit code or throws a coded `Error`.
unsafe extern "C" fn call(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    let mut argc = 1usize;
    let mut arg = ptr::null_mut();
    let mut data: *mut c_void = ptr::null_mut();
    let mut id = 0u32;
    // SAFETY: `env` and `info` come from N-API for this call; `argc` says one slot;
    // a non-number argument makes `napi_get_value_uint32` fail (checked).
    let ok = unsafe {
        sys::napi_get_cb_info(env, info, &mut argc, &mut arg, ptr::null_mut(), &mut data)
            == sys::Status::napi_ok
            && argc >= 1
            && !data.is_null()
            && sys::napi_get_value_uint32(env, arg, &mut id) == sys::Status::napi_ok
    };
    if !ok {
        throw(
            env,
            "EINVAL",
            "runVcpu: expected a runner id (Vcpu.runnerHandle().id)",
        );
        return ptr::null_mut();
    }
    // The table stays borrowed while the vCPU runs: the run calls no JavaScript, so
    // nothing can add or free a runner meanwhile.
    // SAFETY: `data` is this thread's runner table (see `run_vcpu_function`), alive while
    // this env can call in.
    let table = unsafe { &*data.cast_const().cast::<RefCell<Runners>>() };
    let outcome = table.try_borrow().ok().and_then(|r| {
        let runner = r.slots.get(id as usize).and_then(Option::as_ref)?;
        Some(catch_unwind(AssertUnwindSafe(|| runner.run())))
    });
    match outcome {
        None => {
            throw(env, "EINVAL", &format!("runVcpu: no runner has id {id}"));
            ptr::null_mut()
        }
        Some(Ok(Ok(code))) => {
            let mut result = ptr::null_mut();
            // SAFETY: `env` is live for this call; `result` receives the number.
            // Bit 31 flipped: every code has it set (message types 0x8000_0000 and up,
            // run-end codes 0xffff_00xx), so the answer is a small integer that V8 does
            // not allocate; `src/native.ts` flips it back.
            let status = unsafe { sys::napi_create_uint32(env, code ^ 0x8000_0000, &mut result) };
            if status != sys::Status::napi_ok {
                throw(env, "ENAPI", "runVcpu: napi_create_uint32 failed");
                return ptr::null_mut();
            }
            result
        }
        Some(Ok(Err(e))) => {
            throw(env, &e.status, &e.reason);
            ptr::null_mut()
        }
        Some(Err(_)) => {
            throw(env, "EPANIC", "runVcpu: the native run panicked");
            ptr::null_mut()
        }
    }
}

/// Throws a JavaScript `Error` with `code`; a failure to throw leaves N-API's own.
fn throw(env: sys::napi_env, code: &str, message: &str) {
    // Best effort: if even throwing fails, N-API has an exception or error pending.
    let _ = Env::from_raw(env).throw_error(message, Some(code));
}

/// Frees a runner's slot once its handle is collected (on the thread that made it).
unsafe extern "C" fn finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    let id = data as usize as u32;
    // At thread exit the table may be gone already, and every runner with it.
    let _ = RUNNERS.try_with(|r| r.borrow_mut().remove(id));
}

/// The one function that runs vCPUs: `runVcpu(id)` with the `id` of a handle from
/// `Vcpu.runnerHandle()` (alive: collecting the handle frees the id), which runs the
/// runner in that slot once. The package fetches it once (`src/native.ts`): every
/// vCPU's exit loop then calls it.
#[napi_derive::napi(ts_return_type = "(id: number) => number")]
pub fn run_vcpu_function(env: &Env) -> napi::Result<Function<'_, u32, u32>> {
    let table = RUNNERS.with(Rc::as_ptr);
    let mut value = ptr::null_mut();
    // SAFETY: `env` is the live env of the calling JS frame; `NAME` is valid UTF-8 for
    // its length. The data is this thread's runner table, which lives as long as the
    // thread, and so longer than the env whose function can be called only on it.
    let status = unsafe {
        sys::napi_create_function(
            env.raw(),
            NAME.as_ptr().cast(),
            NAME.len() as isize,
            Some(call),
            table.cast_mut().cast(),
            &mut value,
        )
    };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::new(
            napi::Status::from(status),
            "napi_create_function failed".to_string(),
        ));
    }
    // SAFETY: `value` is a function value of this env.
    unsafe { Function::from_napi_value(env.raw(), value) }
}
