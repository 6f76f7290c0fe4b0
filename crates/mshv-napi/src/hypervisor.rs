//! `Hypervisor`: picks a backend and creates VMs.

use crate::errors::{guard, invalid, to_js, whole, Result};
use crate::vm::{MemoryPolicy, Vm};
use hv_core::{ClockMode, CpuTier, HvBackend, RegisterPageMode, UnknownMsr, VmConfig};
use hv_mshv::MshvHypervisor;
use hv_sim::SimHypervisor;
use napi_derive::napi;
use std::sync::Arc;

/// Options for `Hypervisor.createVm`.
#[napi(object)]
pub struct VmOptions {
    /// 'on' (default) | 'off' | 'invalid' (sim only: mapped but never valid).
    pub register_page: Option<String>,
    /// Offer the guest the Hyper-V enlightenments (mshv only; default off).
    pub hyperv: Option<bool>,
    /// MSRs whose accesses exit to the VMM.
    pub intercept_msrs: Option<Vec<u32>>,
    /// MSRs the hypervisor does not implement: 'fault' (default, #GP), 'ignore' (read 0,
    /// drop writes) or 'exit' (sim only: an MSR exit to the VMM).
    pub unknown_msr: Option<String>,
    /// The most guest RAM this VM may map, in bytes (default: the host's memory).
    pub memory_limit: Option<f64>,
    /// Commit every RAM region's memory when it is mapped, so a host that cannot back
    /// it fails `mapMemory` with ENOMEM instead of OOM-killing the process later.
    pub reserve_memory: Option<bool>,
    /// How guest time passes: 'deterministic' (the sim's default: one nanosecond per
    /// guest instruction, so runs replay exactly) or 'realtime' (the host's clock; the
    /// only choice on mshv).
    pub clock: Option<String>,
    /// Which of the sim's tiers executes guest code: 'interpreter' (the default) or
    /// 'translator' (hot 64-bit blocks compiled to host code; the same exits, counts
    /// and state as the interpreter). Sim only: MSHV refuses either.
    pub cpu: Option<String>,
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
        guard("Hypervisor.open", || Self::open_backend(&backend))
    }
    /// 'mshv' or 'sim'.
    #[napi(getter)]
    pub fn backend(&self) -> String {
        self.backend.kind().name().to_string()
    }

    /// Creates a partition.
    #[napi]
    pub fn create_vm(&self, options: Option<VmOptions>) -> Result<Vm> {
        guard("Hypervisor.createVm", || self.create(options))
    }
}

impl Hypervisor {
    fn open_backend(backend: &str) -> Result<Hypervisor> {
        let backend: Arc<dyn HvBackend> = match backend {
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

    fn create(&self, options: Option<VmOptions>) -> Result<Vm> {
        let o = options.unwrap_or(VmOptions {
            register_page: None,
            hyperv: None,
            intercept_msrs: None,
            unknown_msr: None,
            memory_limit: None,
            reserve_memory: None,
            clock: None,
            cpu: None,
        });
        let limit = match o.memory_limit {
            Some(n) => whole(n, "memoryLimit", (1u64 << 52) as f64)?,
            None => hv_core::memory::host_memory() as u64,
        };
        let register_page = choice(
            o.register_page.as_deref(),
            "registerPage",
            &[
                ("on", RegisterPageMode::On),
                ("off", RegisterPageMode::Off),
                ("invalid", RegisterPageMode::Invalid),
            ],
        )?;
        let unknown_msr = choice(
            o.unknown_msr.as_deref(),
            "unknownMsr",
            &[
                ("fault", UnknownMsr::Fault),
                ("ignore", UnknownMsr::Ignore),
                ("exit", UnknownMsr::Exit),
            ],
        )?;
        let clock = match o.clock.as_deref() {
            None => None,
            Some(c) => Some(choice(
                Some(c),
                "clock",
                &[
                    ("deterministic", ClockMode::Deterministic),
                    ("realtime", ClockMode::Realtime),
                ],
            )?),
        };
        let cpu = match o.cpu.as_deref() {
            None => None,
            Some(c) => Some(choice(
                Some(c),
                "cpu",
                &[
                    ("interpreter", CpuTier::Interpreter),
                    ("translator", CpuTier::Translator),
                ],
            )?),
        };
        let config = VmConfig {
            clock,
            cpu,
            register_page,
            hyperv: o.hyperv.unwrap_or(false),
            intercept_msrs: o.intercept_msrs.unwrap_or_default(),
            unknown_msr,
        };
        let vm = self.backend.create_vm(&config).map_err(to_js)?;
        Ok(Vm::new(
            vm,
            MemoryPolicy {
                limit,
                reserve: o.reserve_memory.unwrap_or(false),
            },
        ))
    }
}

/// The value named by a string option; absent means the first choice. Anything else is
/// an `EINVAL` listing the choices: "what must be 'a', 'b' or 'c', got 'x'".
fn choice<T: Copy>(value: Option<&str>, what: &str, choices: &[(&str, T)]) -> Result<T> {
    let Some(v) = value else {
        return choices
            .first()
            .map(|c| c.1)
            .ok_or_else(|| invalid(format!("{what} has no choices")));
    };
    if let Some(c) = choices.iter().find(|c| c.0 == v) {
        return Ok(c.1);
    }
    let names: Vec<String> = choices.iter().map(|c| format!("'{}'", c.0)).collect();
    let listed = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    };
    Err(invalid(format!("{what} must be {listed}, got '{v}'")))
}
