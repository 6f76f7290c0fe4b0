//! `pendingException()`: the `pendingEvent0` register value that injects an exception,
//! encoded by `hv-core` so TypeScript never retypes the bitfield layout.

use crate::errors::{invalid, Result};
use hv_core::PendingException;
use napi::bindgen_prelude::BigInt;
use napi_derive::napi;

/// The two 64-bit halves of `HV_REGISTER_PENDING_EVENT0` announcing exception `vector`
/// (0..31), with `errorCode` pushed when given.
#[napi]
pub fn pending_exception(vector: u32, error_code: Option<u32>) -> Result<Vec<BigInt>> {
    if vector > 31 {
        return Err(invalid(format!(
            "exception vector must be 0..31, got {vector}"
        )));
    }
    let v = PendingException {
        vector: vector as u8,
        error_code,
    }
    .encode();
    Ok(v.iter().map(|&h| BigInt::from(h)).collect())
}
