//! `Vm`: a partition's memory map and vCPUs.

use crate::errors::{closed, invalid, to_js, u64_arg, Result};
use crate::live::{Kind, Live};
use crate::memory::GuestMemory;
use crate::vcpu::Vcpu;
use hv_core::{HostRegion, MemoryMapping, VmBackend};
use napi::bindgen_prelude::BigInt;
use napi::Env;
use napi_derive::napi;
use std::sync::Arc;

/// Options for `Vm.mapMemory`.
#[napi(object)]
pub struct MapOptions {
    pub writable: Option<bool>,
    pub executable: Option<bool>,
}

/// A virtual machine (partition).
#[napi]
pub struct Vm {
    inner: Option<Live<Box<dyn VmBackend>>>,
}

impl Vm {
    pub(crate) fn new(inner: Box<dyn VmBackend>) -> Self {
        Vm {
            inner: Some(Live::new(inner, Kind::Vm)),
        }
    }

    fn backend(&mut self) -> Result<&mut Box<dyn VmBackend>> {
        self.inner
            .as_mut()
            .map(Live::get_mut)
            .ok_or_else(|| closed("VM"))
    }
}

#[napi]
impl Vm {
    /// Allocates `size` bytes of zeroed host memory and maps it at `gpa`.
    #[napi]
    pub fn map_memory(
        &mut self,
        gpa: BigInt,
        size: f64,
        options: Option<MapOptions>,
    ) -> Result<GuestMemory> {
        let gpa = u64_arg(&gpa, "gpa")?;
        if !(size.is_finite() && size > 0.0 && size.fract() == 0.0 && size <= (1u64 << 40) as f64) {
            return Err(invalid(format!(
                "size must be a positive whole number of bytes, got {size}"
            )));
        }
        let region = Arc::new(HostRegion::new(size as usize).map_err(to_js)?);
        let o = options.unwrap_or(MapOptions {
            writable: None,
            executable: None,
        });
        self.backend()?
            .map_memory(MemoryMapping {
                gpa,
                region: Arc::clone(&region),
                writable: o.writable.unwrap_or(true),
                executable: o.executable.unwrap_or(true),
            })
            .map_err(to_js)?;
        Ok(GuestMemory::new(region, gpa))
    }

    /// Unmaps a region; its ArrayBuffers are detached.
    #[napi]
    pub fn unmap_memory(&mut self, env: Env, memory: &mut GuestMemory) -> Result<()> {
        if !memory.mapped() {
            return Err(closed("guest memory region"));
        }
        self.backend()?
            .unmap_memory(memory.gpa_value())
            .map_err(to_js)?;
        memory.release(env);
        Ok(())
    }

    /// Makes guest accesses to `[gpa, gpa + size)` exit, even over RAM (sim).
    #[napi]
    pub fn intercept_range(&mut self, gpa: BigInt, size: BigInt) -> Result<()> {
        let gpa = u64_arg(&gpa, "gpa")?;
        let size = u64_arg(&size, "size")?;
        self.backend()?.intercept_range(gpa, size).map_err(to_js)
    }

    /// Creates vCPU `index` (0..=255).
    #[napi]
    pub fn create_vcpu(&mut self, index: u32) -> Result<Vcpu> {
        let i = u8::try_from(index)
            .map_err(|_| invalid(format!("vCPU index must be 0..=255, got {index}")))?;
        let backend = self.backend()?.create_vcpu(i).map_err(to_js)?;
        Ok(Vcpu::new(backend))
    }

    /// Releases the partition. vCPUs keep working until they are closed themselves.
    #[napi]
    pub fn close(&mut self) {
        self.inner = None;
    }

    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.inner.is_none()
    }
}
