//! The JavaScript binding: `Hypervisor`, `Vm`, `Vcpu`, `RegisterPage` and `GuestMemory` classes, and the
//! layout tables TypeScript reads its constants from.

#![deny(clippy::all)]
// napi exports are reached from JavaScript only, never from Rust tests.
#![cfg_attr(test, allow(dead_code))]

mod budget;
mod buffers;
mod doctor;
mod errors;
mod events;
mod hypervisor;
mod interrupts;
mod kernel;
mod layout;
mod live;
mod memory;
mod register_page;
mod runner;
mod slot_lock;
mod tap;
mod threads;
mod vcpu;
mod vcpu_state;
mod vm;

pub use budget::RunBudget;
pub use hypervisor::Hypervisor;
pub use memory::GuestMemory;
pub use register_page::RegisterPage;
pub use tap::Tap;
pub use threads::VcpuThreads;
pub use vcpu::Vcpu;
pub use vm::Vm;

/// The unit tests run the binding's pure logic (budgets, argument checks, the panic
/// guard) outside Node, which alone provides N-API. Values they make (a `napi::Error`)
/// carry drop code that names these entry points, so the test executable must define
/// them to load; none is ever called there (each would report a generic failure).
#[cfg(test)]
mod napi_symbols_for_unit_tests {
    use napi::sys::{napi_env, napi_ref, napi_status, napi_threadsafe_function, Status};
    use std::ffi::c_void;

    #[no_mangle]
    extern "C" fn napi_delete_reference(_: napi_env, _: napi_ref) -> napi_status {
        Status::napi_generic_failure
    }

    #[no_mangle]
    extern "C" fn napi_reference_unref(_: napi_env, _: napi_ref, _: *mut u32) -> napi_status {
        Status::napi_generic_failure
    }

    #[no_mangle]
    extern "C" fn napi_call_threadsafe_function(
        _: napi_threadsafe_function,
        _: *mut c_void,
        _: i32,
    ) -> napi_status {
        Status::napi_generic_failure
    }
}
