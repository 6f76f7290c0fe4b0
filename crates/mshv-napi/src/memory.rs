//! `GuestMemory`: host memory that backs a range of guest RAM, visible to JS without copies.

use crate::buffers::{external, Detachables};
use crate::errors::{closed, Result};
use hv_core::HostRegion;
use napi::bindgen_prelude::{ArrayBuffer, BigInt};
use napi::Env;
use napi_derive::napi;
use std::sync::Arc;

/// Guest RAM mapped at `gpa`.
#[napi]
pub struct GuestMemory {
    /// None once released: unmapped, or its VM closed.
    region: Option<Arc<HostRegion>>,
    gpa: u64,
    size: usize,
    buffers: Detachables,
}

impl GuestMemory {
    pub(crate) fn new(region: Arc<HostRegion>, gpa: u64) -> Self {
        GuestMemory {
            size: region.len(),
            region: Some(region),
            gpa,
            buffers: Detachables::default(),
        }
    }

    pub(crate) fn gpa_value(&self) -> u64 {
        self.gpa
    }
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
    pub fn size(&self) -> f64 {
        self.size as f64
    }

    /// Whether JavaScript may still use the region (not unmapped, its VM not closed).
    #[napi(getter)]
    pub fn mapped(&self) -> bool {
        self.region.is_some()
    }

    /// The memory itself as an ArrayBuffer (no copy). Detached when the region is released.
    #[napi]
    pub fn buffer<'env>(&mut self, env: &'env Env) -> Result<ArrayBuffer<'env>> {
        let region = self
            .region
            .as_ref()
            .ok_or_else(|| closed("guest memory region"))?;
        let owner = Arc::clone(region);
        // SAFETY: the region's bytes live as long as `owner`, which the buffer keeps.
        unsafe { external(env, region.as_ptr(), region.len(), owner, &mut self.buffers) }
    }

    /// Ends JavaScript's access: detaches every buffer over the region and drops this
    /// object's hold on it (the memory is freed once the guest no longer maps it).
    /// `Vm.unmapMemory` and closing the VM call it; calling it twice is harmless.
    #[napi]
    pub fn release(&mut self, env: Env) {
        self.buffers.detach_all(&env);
        self.region = None;
    }
}
