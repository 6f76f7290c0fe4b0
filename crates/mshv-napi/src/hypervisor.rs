//! `Hypervisor`: picks a backend and creates VMs.

use crate::errors::{invalid, to_js, Result};
use crate::vm::Vm;
use hv_core::{HvBackend, RegisterPageMode, UnknownMsr, VmConfig};
use hv_mshv::MshvHypervisor;
use hv_sim::SimHypervisor;
use napi_derive::napi;
use std::sync::Arc;

/// Options for `Hypervisor.createVm`.
#[napi(object)]
pub struct VmOptions {
    /// 'on' (default) | 'off' | 'invalid' (sim only: mapped but never valid).
    pub register_page: Option<String>,
    /// Exit to the VMM on CPUID.
    pub intercept_cpuid: Option<bool>,
    /// MSRs whose accesses exit to the VMM.
    pub intercept_msrs: Option<Vec<u32>>,
    /// MSRs the hypervisor does not implement: 'fault' (default, #GP), 'ignore' (read 0,
    /// drop writes) or 'exit' (sim only: an MSR exit to the VMM).
    pub unknown_msr: Option<String>,
}

/// A hypervisor backend: the real `/dev/mshv` or the built-in simulator.
#[napi]
pub struct Hypervisor {
    backend: Arc<dyn HvBackend>,
}

#[napi]
impl Hypervisor {
    /// Opens a backend: 'auto' (mshv when /dev/mshv opens, else sim), 'mshv' or 'sim'.
    #[napi(factory)]
    pub fn open(backend: String) -> Result<Hypervisor> {
        let backend: Arc<dyn HvBackend> = match backend.as_str() {
            "sim" => Arc::new(SimHypervisor),
            "mshv" => Arc::new(MshvHypervisor::open().map_err(to_js)?),
            "auto" => match MshvHypervisor::open() {
                Ok(h) => Arc::new(h),
                Err(_) => Arc::new(SimHypervisor),
            },
            other => {
                return Err(invalid(format!(
                    "backend must be 'auto', 'mshv' or 'sim', got '{other}'"
                )))
            }
        };
        Ok(Hypervisor { backend })
    }

    /// 'mshv' or 'sim'.
    #[napi(getter)]
    pub fn backend(&self) -> String {
        self.backend.kind().name().to_string()
    }

    /// Creates a partition.
    #[napi]
    pub fn create_vm(&self, options: Option<VmOptions>) -> Result<Vm> {
        let o = options.unwrap_or(VmOptions {
            register_page: None,
            intercept_cpuid: None,
            intercept_msrs: None,
            unknown_msr: None,
        });
        let register_page = match o.register_page.as_deref() {
            None | Some("on") => RegisterPageMode::On,
            Some("off") => RegisterPageMode::Off,
            Some("invalid") => RegisterPageMode::Invalid,
            Some(other) => {
                return Err(invalid(format!(
                    "registerPage must be 'on', 'off' or 'invalid', got '{other}'"
                )))
            }
        };
        let unknown_msr = match o.unknown_msr.as_deref() {
            None | Some("fault") => UnknownMsr::Fault,
            Some("ignore") => UnknownMsr::Ignore,
            Some("exit") => UnknownMsr::Exit,
            Some(other) => {
                return Err(invalid(format!(
                    "unknownMsr must be 'fault', 'ignore' or 'exit', got '{other}'"
                )))
            }
        };
        let config = VmConfig {
            register_page,
            intercept_cpuid: o.intercept_cpuid.unwrap_or(false),
            intercept_msrs: o.intercept_msrs.unwrap_or_default(),
            unknown_msr,
        };
        let vm = self.backend.create_vm(&config).map_err(to_js)?;
        Ok(Vm::new(vm))
    }
}
