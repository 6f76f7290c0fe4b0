//! `GuestMemory`: host memory that backs a range of guest RAM, visible to JS without copies.

use crate::buffers::{external, Detachables};
use crate::errors::Result;
use hv_core::HostRegion;
use napi::bindgen_prelude::{ArrayBuffer, BigInt};
use napi::Env;
use napi_derive::napi;
use std::sync::Arc;

/// Guest RAM mapped at `gpa`.
#[napi]
pub struct GuestMemory {
    pub(crate) region: Arc<HostRegion>,
    pub(crate) gpa: u64,
    pub(crate) buffers: Detachables,
    pub(crate) mapped: bool,
}

#[napi]
impl GuestMemory {
    /// Guest physical address of the first byte.
    #[napi(getter)]
    pub fn gpa(&self) -> BigInt {
        BigInt::from(self.gpa)
    }

    /// Size in bytes.
    #[napi(getter)]
    pub fn size(&self) -> u32 {
        self.region.len() as u32
    }

    /// Whether the region is still mapped into the guest.
    #[napi(getter)]
    pub fn mapped(&self) -> bool {
        self.mapped
    }

    /// The memory itself as an ArrayBuffer (no copy). Detached when the region is unmapped.
    #[napi]
    pub fn buffer<'env>(&mut self, env: &'env Env) -> Result<ArrayBuffer<'env>> {
        if !self.mapped {
            return Err(crate::errors::closed("guest memory region"));
        }
        let owner = Arc::clone(&self.region);
        // SAFETY: the region's bytes live as long as `owner`, which the buffer keeps.
        unsafe {
            external(
                env,
                self.region.as_ptr(),
                self.region.len(),
                owner,
                &mut self.buffers,
            )
        }
    }
}
