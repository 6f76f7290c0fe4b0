//! `hv-mshv`: the real backend, the Microsoft Hypervisor through `/dev/mshv` and
//! `mshv-ioctls`. Only x86-64 hosts run x86 partitions; elsewhere `open()` reports
//! the backend as unsupported.

#[cfg(target_arch = "x86_64")]
mod cpuid;
mod errors;
mod host;
#[cfg(target_arch = "x86_64")]
mod kernel;
#[cfg(target_arch = "x86_64")]
mod kick;
#[cfg(target_arch = "x86_64")]
mod partition;
#[cfg(target_arch = "x86_64")]
mod run;
mod state;
#[cfg(target_arch = "x86_64")]
mod vcpu;
#[cfg(target_arch = "x86_64")]
mod vm;

pub use errors::{map_error, DEVICE_PATH};
pub use host::{host_facts, HostFacts};
#[cfg(target_arch = "x86_64")]
pub use kernel::{kernel_paths, KernelPaths, PartitionPath, RefusedIntercept, TranslatePath};

use hv_core::{BackendKind, HvBackend, HvError, Result, VmBackend, VmConfig};

/// The `/dev/mshv` hypervisor.
pub struct MshvHypervisor {
    #[cfg(target_arch = "x86_64")]
    mshv: mshv_ioctls::Mshv,
}

impl MshvHypervisor {
    /// Opens `/dev/mshv`. A missing or unopenable device is a clean `ENODEV` error.
    pub fn open() -> Result<Self> {
        #[cfg(not(target_arch = "x86_64"))]
        {
            Err(HvError::Unsupported(format!(
                "the mshv backend runs x86-64 partitions only; this host is {}",
                std::env::consts::ARCH
            )))
        }
        #[cfg(target_arch = "x86_64")]
        {
            errors::check_device(std::path::Path::new(DEVICE_PATH))?;
            let mshv = mshv_ioctls::Mshv::new().map_err(|e| HvError::DeviceUnavailable {
                path: DEVICE_PATH,
                errno: e.errno(),
                reason: e.to_string(),
            })?;
            Ok(MshvHypervisor { mshv })
        }
    }

    /// Whether `/dev/mshv` exists and can be opened read-write.
    pub fn available() -> bool {
        cfg!(target_arch = "x86_64")
            && errors::check_device(std::path::Path::new(DEVICE_PATH)).is_ok()
    }
}

impl HvBackend for MshvHypervisor {
    fn kind(&self) -> BackendKind {
        BackendKind::Mshv
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn VmBackend>> {
        #[cfg(target_arch = "x86_64")]
        {
            Ok(Box::new(vm::MshvVm::create(&self.mshv, config)?))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = config;
            Err(HvError::Unsupported(
                "mshv is not available on this host".into(),
            ))
        }
    }
}
