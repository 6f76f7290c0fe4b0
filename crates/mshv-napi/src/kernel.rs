//! `unpackKernelPayload`: a bzImage's compressed kernel, unpacked natively
//! (`kernel-payload`), for the TypeScript boot loader.

use crate::errors::{guard, whole, Result};
use napi::bindgen_prelude::{Buffer, Uint8Array};
use napi_derive::napi;

/// Unpacks a kernel payload (xz, gzip or zstd), refusing more than `limit` bytes of
/// output: `EKERNEL` naming the format and what is wrong.
#[napi]
pub fn unpack_kernel_payload(payload: Uint8Array, limit: f64) -> Result<Buffer> {
    guard("unpackKernelPayload", || {
        let limit = whole(limit, "limit", (1u64 << 40) as f64)? as usize;
        kernel_payload::unpack(&payload, limit)
            .map(Buffer::from)
            .map_err(|e| napi::Error::new("EKERNEL".to_string(), e.to_string()))
    })
}
