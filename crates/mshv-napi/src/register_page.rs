//! `RegisterPage`: the vCPU's shared register page, handed to JavaScript zero-copy.

use crate::buffers::{external, Detachables};
use crate::errors::{invalid, Result};
use crate::vcpu::Core;
use hv_core::page::{ISVALID, PAGE_SIZE};
use hv_core::RegisterPagePtr;
use napi::bindgen_prelude::{ArrayBuffer, BigInt};
use napi::Env;
use napi_derive::napi;
use std::sync::{Arc, Mutex};

/// The mapped `hv_vp_register_page` of one vCPU. Its buffer is the page itself: what
/// JavaScript writes there, the hypervisor reads at the next resume, and the reverse.
#[napi]
pub struct RegisterPage {
    core: Arc<Core>,
    page: RegisterPagePtr,
    /// Shared with the vCPU, which detaches them when it closes.
    buffers: Arc<Mutex<Detachables>>,
}

impl RegisterPage {
    pub(crate) fn new(
        core: Arc<Core>,
        page: RegisterPagePtr,
        buffers: Arc<Mutex<Detachables>>,
    ) -> Self {
        RegisterPage {
            core,
            page,
            buffers,
        }
    }

    fn check_open(&self) -> Result<()> {
        self.core.check_open("vCPU (of this register page)")
    }
}

#[napi]
impl RegisterPage {
    /// The page as an ArrayBuffer over the mapped memory (no copy); the same buffer
    /// while it is alive. Detached when the vCPU closes.
    #[napi]
    pub fn buffer<'env>(&self, env: &'env Env) -> Result<ArrayBuffer<'env>> {
        self.check_open()?;
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let owner = Arc::clone(&self.core);
        // SAFETY: the page belongs to the backend inside `core`, which the buffer keeps
        // alive; closing the vCPU detaches the buffer before the backend goes.
        unsafe { external(env, self.page.as_ptr(), PAGE_SIZE, owner, &mut buffers) }
    }

    /// Whether the hypervisor filled the page at the last intercept (`isvalid`).
    #[napi(getter)]
    pub fn valid(&self) -> Result<bool> {
        self.check_open()?;
        Ok(self.page.read_u8(ISVALID) != 0)
    }

    /// Page size in bytes.
    #[napi(getter)]
    pub fn size(&self) -> u32 {
        PAGE_SIZE as u32
    }

    /// Reads the u64 at `offset` through native code: the "native getter" the
    /// benchmarks compare with a DataView over `buffer()`.
    #[napi]
    pub fn read_u64(&self, offset: u32) -> Result<BigInt> {
        self.check_open()?;
        let o = offset as usize;
        if !o.is_multiple_of(8) || o + 8 > PAGE_SIZE {
            return Err(invalid(format!(
                "register page offset must be a multiple of 8 below {PAGE_SIZE}, got {offset}"
            )));
        }
        Ok(BigInt::from(self.page.read_u64(o)))
    }
}
