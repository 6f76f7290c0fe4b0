//! What `mshv doctor` asks of native code: the host's facts, and the backend checklist
//! (`hv-conformance`) one check at a time, so the command can report as it goes.

use crate::errors::{guard, invalid, to_js, Result};
use hv_core::HvBackend;
use hv_mshv::MshvHypervisor;
use hv_sim::SimHypervisor;
use napi_derive::napi;

/// The host as `mshv doctor` reports it. Numbers that may exceed 2^53 are hex strings.
#[napi(object)]
pub struct HostFacts {
    pub device_present: bool,
    pub device_error: Option<String>,
    pub hypervisor_vendor: Option<String>,
    pub hypervisor_version: Option<String>,
    pub vmm_capabilities: Option<String>,
    pub processor_features: Option<Vec<String>>,
    pub property_error: Option<String>,
    /// How partitions are created on this kernel, once known.
    pub partition_path: Option<String>,
    /// How GVAs are translated on this kernel, once known.
    pub translate_gva_path: Option<String>,
    /// MSR intercepts the hypervisor refused in this process.
    pub refused_intercepts: Vec<String>,
    /// Why the kernel paths are not known, when they are not.
    pub kernel_paths_error: Option<String>,
}

/// Reads the host's facts; what cannot be read is reported, never thrown.
#[napi]
pub fn host_facts() -> Result<HostFacts> {
    guard("hostFacts", || {
        let f = hv_mshv::host_facts();
        Ok(HostFacts {
            device_present: f.device_present,
            device_error: f.device_error,
            hypervisor_vendor: f.hypervisor_vendor,
            hypervisor_version: f.hypervisor_version,
            vmm_capabilities: f.vmm_capabilities.map(|v| format!("{v:#x}")),
            processor_features: f
                .processor_features
                .map(|b| b.iter().map(|v| format!("{v:#x}")).collect()),
            property_error: f.property_error,
            partition_path: f.partition_path,
            translate_gva_path: f.translate_gva_path,
            refused_intercepts: f.refused_intercepts,
            kernel_paths_error: f.kernel_paths_error,
        })
    })
}

/// One item of the backend checklist.
#[napi(object)]
pub struct BackendCheck {
    pub name: String,
    pub summary: String,
}

/// The backend checklist, in report order.
#[napi]
pub fn backend_checks() -> Vec<BackendCheck> {
    hv_conformance::checklist()
        .iter()
        .map(|c| BackendCheck {
            name: c.name.to_string(),
            summary: c.summary.to_string(),
        })
        .collect()
}

/// A check's result.
#[napi(object)]
pub struct BackendCheckResult {
    pub passed: bool,
    /// What it saw (passed) or why it failed.
    pub detail: String,
}

/// Runs the backend check `name` on `backend` ('sim' or 'mshv'). A backend that does
/// not open is an error; a check that fails is a result.
#[napi]
pub fn run_backend_check(backend: String, name: String) -> Result<BackendCheckResult> {
    guard("runBackendCheck", || {
        let hv: Box<dyn HvBackend> = match backend.as_str() {
            "sim" => Box::new(SimHypervisor),
            "mshv" => Box::new(MshvHypervisor::open().map_err(to_js)?),
            other => {
                return Err(invalid(format!(
                    "backend must be 'sim' or 'mshv', got '{other}'"
                )))
            }
        };
        let check = hv_conformance::checklist()
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| invalid(format!("no backend check is named '{name}'")))?;
        Ok(match hv_conformance::run_check(check, hv.as_ref()) {
            Ok(detail) => BackendCheckResult {
                passed: true,
                detail,
            },
            Err(e) => BackendCheckResult {
                passed: false,
                detail: e.to_string(),
            },
        })
    })
}
