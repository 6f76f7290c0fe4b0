//! The per-exit run call as a bare N-API function.
//!
//! `Vcpu.runner()` hands JavaScript a function it calls once per exit, so its call
//! overhead is the TypeScript exit loop's floor. A napi-rs class method pays for a
//! borrow registry behind a global lock (about 220 ns here); napi-rs's closure
//! trampoline allocates an argument `Vec` and builds a call context per call. This
//! callback asks N-API only for its data pointer and answers with a u32.

use crate::budget::Budget;
use crate::errors::JsError;
use crate::vcpu::Core;
use napi::bindgen_prelude::{FromNapiValue, Function};
use napi::{sys, Env};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

const NAME: &str = "runVcpu";

/// What one runner function runs: a vCPU within one budget.
pub(crate) struct Runner {
    pub core: Arc<Core>,
    pub budget: Arc<Budget>,
}

impl Runner {
    fn run(&self) -> Result<u32, JsError> {
        self.core.run(&self.budget)
    }

    /// A JavaScript function `() => number` that owns this runner until it is collected.
    pub(crate) fn into_function(self, env: &Env) -> napi::Result<Function<'_, (), u32>> {
        let data = Box::into_raw(Box::new(self));
        let mut value = ptr::null_mut();
        // SAFETY: `env` is the live env of the calling JS frame; `NAME` is valid UTF-8
        // for its length; `data` stays valid until `finalize` frees it, after the
        // function is collected.
        let status = unsafe {
            sys::napi_create_function(
                env.raw(),
                NAME.as_ptr().cast(),
                NAME.len() as isize,
                Some(call),
                data.cast(),
                &mut value,
            )
        };
        if status != sys::Status::napi_ok {
            // SAFETY: no function was made, so nothing else holds `data`.
            drop(unsafe { Box::from_raw(data) });
            return Err(napi::Error::new(
                napi::Status::from(status),
                "napi_create_function failed".to_string(),
            ));
        }
        // SAFETY: `value` is the function just made; `finalize` receives `data` once,
        // when the function is collected or the env torn down.
        let status = unsafe {
            sys::napi_add_finalizer(
                env.raw(),
                value,
                data.cast(),
                Some(finalize),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if status != sys::Status::napi_ok {
            // The function exists and may still be called, so `data` must outlive it:
            // leaked rather than freed under it.
            return Err(napi::Error::new(
                napi::Status::from(status),
                "napi_add_finalizer failed".to_string(),
            ));
        }
        // SAFETY: `value` is a function value of this env.
        unsafe { Function::from_napi_value(env.raw(), value) }
    }
}

/// The N-API callback: runs the vCPU, returns the exit code or throws a coded `Error`.
unsafe extern "C" fn call(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    let mut data: *mut c_void = ptr::null_mut();
    let mut argc = 0usize;
    // SAFETY: `env` and `info` come from N-API for this call; with `argc` 0 no
    // argument is written, and `data` receives the pointer given at creation.
    let status = unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            ptr::null_mut(),
            ptr::null_mut(),
            &mut data,
        )
    };
    if status != sys::Status::napi_ok || data.is_null() {
        throw(env, "ENAPI", "runVcpu: napi_get_cb_info failed");
        return ptr::null_mut();
    }
    // SAFETY: `data` is the `Runner` boxed by `into_function`, freed only by
    // `finalize` after the function (and so this call) can no longer run.
    let runner = unsafe { &*data.cast::<Runner>() };
    match catch_unwind(AssertUnwindSafe(|| runner.run())) {
        Ok(Ok(code)) => {
            let mut result = ptr::null_mut();
            // SAFETY: `env` is live for this call; `result` receives the number.
            let status = unsafe { sys::napi_create_uint32(env, code, &mut result) };
            if status != sys::Status::napi_ok {
                throw(env, "ENAPI", "runVcpu: napi_create_uint32 failed");
                return ptr::null_mut();
            }
            result
        }
        Ok(Err(e)) => {
            throw(env, &e.status, &e.reason);
            ptr::null_mut()
        }
        Err(_) => {
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

/// Frees the runner once its function is collected.
unsafe extern "C" fn finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the box `into_function` leaked; N-API calls this once.
    drop(unsafe { Box::from_raw(data.cast::<Runner>()) });
}
