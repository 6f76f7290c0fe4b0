//! `RegisterPage`: the vCPU's shared register page, handed to JavaScript zero-copy.

use crate::errors::{guard, invalid, Result};
use crate::vcpu::Core;
use hv_core::page::{ISVALID, PAGE_SIZE};
use hv_core::RegisterPagePtr;
use napi::bindgen_prelude::{ArrayBuffer, BigInt};
use napi::Env;
use napi_derive::napi;
use std::sync::Arc;

/// The mapped `hv_vp_register_page` of one vCPU. Its buffer is the page itself: what
/// JavaScript writes there, the hypervisor reads at the next resume, and the reverse.
///
/// The page's mapping belongs to the vCPU (and to every buffer over it): this object
/// reads through `page` only while the vCPU is open, which every method checks first on
/// the JavaScript thread, the only thread that closes it. So a closed vCPU's mapping goes
/// at `close()`, not when the engine collects this object.
#[napi]
pub struct RegisterPage {
    core: Arc<Core>,
    page: RegisterPagePtr,
}

impl RegisterPage {
    pub(crate) fn new(core: Arc<Core>, page: RegisterPagePtr) -> Self {
        RegisterPage { core, page }
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
        guard("RegisterPage.buffer", || {
            self.check_open()?;
            self.core.page_buffer(env)
        })
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
        guard("RegisterPage.readU64", || {
            self.check_open()?;
            let o = offset as usize;
            if !o.is_multiple_of(8) || o + 8 > PAGE_SIZE {
                return Err(invalid(format!(
                    "register page offset must be a multiple of 8 below {PAGE_SIZE}, got {offset}"
                )));
            }
            Ok(BigInt::from(self.page.read_u64(o)))
        })
    }
}
