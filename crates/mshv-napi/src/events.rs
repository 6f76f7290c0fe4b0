//! `pendingException()`: the `pendingEvent0` register value that injects an exception,
//! encoded by `hv-core` so TypeScript never retypes the bitfield layout.

use crate::errors::{invalid, to_js, Result};
use hv_core::PendingException;
use napi::bindgen_prelude::BigInt;
use napi_derive::napi;

/// The two 64-bit halves of `HV_REGISTER_PENDING_EVENT0` announcing exception `vector`
/// (0..31) as the processor takes it in the current mode (`protectedMode`: CR0.PE):
/// with `errorCode` (default 0) where it pushes one, without it in real mode.
#[napi]
pub fn pending_exception(
    vector: u32,
    error_code: Option<u32>,
    protected_mode: bool,
) -> Result<Vec<BigInt>> {
    let vector = u8::try_from(vector)
        .map_err(|_| invalid(format!("exception vector must be 0..31, got {vector}")))?;
    let v = PendingException::for_mode(vector, error_code, protected_mode)
        .map_err(to_js)?
        .encode();
    Ok(v.iter().map(|&h| BigInt::from(h)).collect())
}
