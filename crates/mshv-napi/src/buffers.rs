//! External (zero-copy) ArrayBuffers over native memory, and their detachment.
//!
//! Safety rests on ownership alone: each buffer's finalizer holds an `Arc` to whatever
//! owns the mapping of its bytes, so no buffer can outlive its memory, even one moved
//! with `ArrayBuffer.prototype.transfer()` where nothing here can detach it. Closing the
//! owner detaches every buffer it still knows of, as a courtesy: a script that kept one
//! gets a TypeError (or, through a transferred copy, zeros) instead of stale state.
//!
//! The finalizer holds the owner through a [`Lease`], which lets go as soon as the
//! buffer is known to be out of JavaScript's reach (detached here, or collected): Node
//! runs external buffers' finalizers from the event loop, so a script that made and
//! closed VMs in a loop without yielding kept every mapping until it ran out of them
//! (`vm.max_map_count`: ENOMEM after ~16,000 VMs).

use crate::errors::{from_napi, Result};
use napi::bindgen_prelude::{ArrayBuffer, JsValue};
use napi::{sys, Env};
use std::any::Any;
use std::ptr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// What a buffer's finalizer holds: the owner of its bytes, until [`Lease::release`].
struct Lease(Mutex<Option<Box<dyn Any + Send>>>);

impl Lease {
    /// Drops the owner now. Only once JavaScript cannot reach the buffer's bytes.
    fn release(&self) {
        let owner = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(owner);
    }
}

/// Weak references to the buffers handed out for one owner, each with its lease (weak
/// too: the owner may be what holds this list, and only the buffer keeps its lease).
#[derive(Default)]
pub struct Detachables {
    refs: Vec<(usize, Weak<Lease>)>,
}

// SAFETY: the raw napi_ref handles are only used on the JS thread that created them
// (every method takes an `Env`); storing them is inert.
unsafe impl Send for Detachables {}
// SAFETY: as above.
unsafe impl Sync for Detachables {}

/// Creates an external ArrayBuffer over `len` bytes at `data`, keeping `owner` alive.
///
/// # Safety
/// `data` must point to `len` bytes that stay valid while `owner` is alive.
pub unsafe fn external<'env, T: Send + 'static>(
    env: &'env Env,
    data: *mut u8,
    len: usize,
    owner: T,
    track: &mut Detachables,
) -> Result<ArrayBuffer<'env>> {
    if let Some(existing) = track.alive(env) {
        return Ok(existing);
    }
    track.forget_collected(env);
    let lease = Arc::new(Lease(Mutex::new(Some(Box::new(owner)))));
    // SAFETY: forwarded from this function's contract; the lease keeps the owner alive
    // until the engine finalizes the buffer or the buffer is out of JavaScript's reach.
    let ab = unsafe {
        ArrayBuffer::from_external(env, data, len, Arc::clone(&lease), |_, lease| drop(lease))
    }
    .map_err(from_napi)?;
    let mut r = ptr::null_mut();
    // SAFETY: a weak (count 0) reference to a live value of this env.
    let status = unsafe { sys::napi_create_reference(env.raw(), ab.raw(), 0, &mut r) };
    // Without a reference the buffer cannot be watched: its lease is kept to the end.
    if status == sys::Status::napi_ok {
        track.refs.push((r as usize, Arc::downgrade(&lease)));
    }
    Ok(ab)
}

impl Detachables {
    /// The most recently created buffer, if the engine has not collected it.
    ///
    /// Handing out one buffer per memory range matters: engines reject two external
    /// buffers over the same bytes.
    pub fn alive<'env>(&self, env: &'env Env) -> Option<ArrayBuffer<'env>> {
        let r = self.refs.last()?.0 as sys::napi_ref;
        let mut value = ptr::null_mut();
        // SAFETY: `r` is a live reference of this env (deleted only in detach_all).
        let ok = unsafe { sys::napi_get_reference_value(env.raw(), r, &mut value) }
            == sys::Status::napi_ok;
        if !ok || value.is_null() {
            return None;
        }
        // SAFETY: `value` is the ArrayBuffer the reference was made for.
        unsafe {
            <ArrayBuffer as napi::bindgen_prelude::FromNapiValue>::from_napi_value(env.raw(), value)
        }
        .ok()
    }

    /// Deletes the references of buffers the engine has collected, so a long-lived
    /// owner that re-wraps its memory many times keeps a handful of references, not
    /// one per buffer ever made.
    fn forget_collected(&mut self, env: &Env) {
        self.refs.retain(|(r, lease)| {
            let r = *r as sys::napi_ref;
            let mut value = ptr::null_mut();
            // SAFETY: `r` is a live reference of this env, deleted at most once (here or
            // in detach_all, which drains the list).
            unsafe {
                let alive = sys::napi_get_reference_value(env.raw(), r, &mut value)
                    == sys::Status::napi_ok
                    && !value.is_null();
                if !alive {
                    sys::napi_delete_reference(env.raw(), r);
                    // Collected: nothing in JavaScript reaches its bytes.
                    if let Some(lease) = lease.upgrade() {
                        lease.release();
                    }
                }
                alive
            }
        });
    }

    /// Detaches every buffer still alive and forgets them. The owner of each buffer
    /// detached here or already collected is let go at once; one found detached already
    /// was moved with `transfer()` (its bytes are reachable from the new buffer), so its
    /// owner stays until the engine finalizes it.
    pub fn detach_all(&mut self, env: &Env) {
        for (r, lease) in self.refs.drain(..) {
            let r = r as sys::napi_ref;
            let mut value = ptr::null_mut();
            // SAFETY: `r` came from napi_create_reference on this env and is deleted once;
            // `value` is the ArrayBuffer it was made for.
            unsafe {
                let alive = sys::napi_get_reference_value(env.raw(), r, &mut value)
                    == sys::Status::napi_ok
                    && !value.is_null();
                let mut detached = false;
                let unreachable = if !alive {
                    true
                } else if sys::napi_is_detached_arraybuffer(env.raw(), value, &mut detached)
                    != sys::Status::napi_ok
                    || detached
                {
                    false
                } else {
                    sys::napi_detach_arraybuffer(env.raw(), value) == sys::Status::napi_ok
                };
                if let Some(lease) = lease.upgrade().filter(|_| unreachable) {
                    lease.release();
                }
                sys::napi_delete_reference(env.raw(), r);
            }
        }
    }
}
