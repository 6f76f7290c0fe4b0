//! `GuestMemory`: host memory that backs a range of guest RAM, visible to JS without copies.

use crate::buffers::{external, Detachables};
use crate::errors::{closed, guard, Result};
use hv_core::HostRegion;
use napi::bindgen_prelude::{ArrayBuffer, BigInt, Uint32Array};
use napi::Env;
use napi_derive::napi;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One region of guest RAM, shared by its `GuestMemory` object and its VM (which
/// releases it when it unmaps the region or closes).
pub(crate) struct Ram {
    /// The mapping, until the region is retired: then only buffers that escaped
    /// detachment keep it (see [`Ram::retire`]).
    region: Mutex<Option<Arc<HostRegion>>>,
    /// The region's size in bytes.
    pub len: usize,
    pub gpa: u64,
    buffers: Mutex<Detachables>,
    released: AtomicBool,
}

impl Ram {
    pub(crate) fn new(region: Arc<HostRegion>, gpa: u64) -> Arc<Self> {
        Arc::new(Ram {
            len: region.len(),
            region: Mutex::new(Some(region)),
            gpa,
            buffers: Mutex::default(),
            released: AtomicBool::new(false),
        })
    }

    /// Ends JavaScript's access: detaches every buffer over the region.
    pub(crate) fn release(&self, env: &Env) {
        self.released.store(true, Ordering::SeqCst);
        self.buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .detach_all(env);
    }

    /// The mapping, while the region is not retired.
    pub(crate) fn region(&self) -> Option<Arc<HostRegion>> {
        self.region
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Releases the region and gives its memory back to the host at once; a buffer
    /// that escaped detachment then reads zeros that belong to nobody. The mapping is
    /// let go here too: unless such a buffer holds it, it is unmapped now, not when the
    /// engine collects this object (a loop that made and closed 30,000 VMs ran out of
    /// mappings, `vm.max_map_count`, before any collection).
    pub(crate) fn retire(&self, env: &Env) {
        self.release(env);
        let region = self.region.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(region) = region {
            region.retire();
        }
    }

    fn is_released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }
}

/// Guest RAM mapped at `gpa`.
#[napi]
pub struct GuestMemory {
    ram: Arc<Ram>,
}

impl GuestMemory {
    pub(crate) fn new(ram: Arc<Ram>) -> Self {
        GuestMemory { ram }
    }

    pub(crate) fn ram(&self) -> &Arc<Ram> {
        &self.ram
    }
}

#[napi]
impl GuestMemory {
    /// Guest physical address of the first byte.
    #[napi(getter)]
    pub fn gpa(&self) -> BigInt {
        BigInt::from(self.ram.gpa)
    }

    /// Size in bytes.
    #[napi(getter)]
    pub fn size(&self) -> f64 {
        self.ram.len as f64
    }

    /// Whether JavaScript may still use the region (not unmapped, its VM not closed).
    #[napi(getter)]
    pub fn mapped(&self) -> bool {
        !self.ram.is_released()
    }

    /// The memory itself as an ArrayBuffer (no copy). Detached when the region is released.
    #[napi]
    pub fn buffer<'env>(&self, env: &'env Env) -> Result<ArrayBuffer<'env>> {
        guard("GuestMemory.buffer", || {
            let region = match self.ram.region() {
                Some(region) if !self.ram.is_released() => region,
                _ => return Err(closed("guest memory region")),
            };
            let owner = Arc::clone(&region);
            let mut buffers = self.ram.buffers.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: the region's bytes stay mapped as long as `owner`, which the buffer
            // keeps (a retired region stays mapped, to zero pages).
            unsafe { external(env, region.as_ptr(), region.len(), owner, &mut buffers) }
        })
    }

    /// The runs of pages that hold a non-zero byte, as (first page, page count) pairs:
    /// what a snapshot writes (zero pages are left out).
    #[napi]
    pub fn nonzero_runs(&self) -> Result<Uint32Array> {
        guard("GuestMemory.nonzeroRuns", || {
            let region = match self.ram.region() {
                Some(region) if !self.ram.is_released() => region,
                _ => return Err(closed("guest memory region")),
            };
            Ok(runs_to_js(&hv_core::page_runs::nonzero_runs(&region)))
        })
    }

    /// Ends JavaScript's access: detaches every buffer over the region. The guest
    /// keeps its memory until the VM unmaps the region or closes (which call this).
    /// Calling it twice is harmless.
    #[napi]
    pub fn release(&self, env: Env) {
        self.ram.release(&env);
    }
}

/// Runs of pages within one region as JavaScript's flat (first page, page count) pairs.
pub(crate) fn runs_to_js(runs: &[hv_core::page_runs::PageRun]) -> Uint32Array {
    // Pages of a region of at most 2^40 bytes fit in 32 bits.
    Uint32Array::new(
        runs.iter()
            .flat_map(|r| [r.first as u32, r.count as u32])
            .collect(),
    )
}
