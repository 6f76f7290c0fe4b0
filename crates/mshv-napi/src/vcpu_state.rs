//! The state-and-debug seam for JavaScript: a vCPU's whole state as typed arrays
//! (`hv_core::VcpuState`), and its debug state (breakpoints, single-step).

use crate::errors::{guard, invalid, Result};
use crate::vcpu::Vcpu;
use hv_core::state::{WatchKind, Watchpoint};
use hv_core::{DebugState, RegisterValue, VcpuState};
use napi::bindgen_prelude::{BigUint64Array, Uint32Array, Uint8Array};
use napi_derive::napi;

/// A vCPU's whole state: registers by `hv_register_name` (two u64 halves each), the
/// MSRs a state carries by number, the local APIC's register page, the XSAVE image
/// (mshv; empty on the sim), and the backend's exact extras by name.
#[napi(object)]
pub struct NativeVcpuState {
    pub register_ids: Uint32Array,
    pub register_values: BigUint64Array,
    pub msrs: Uint32Array,
    pub msr_values: BigUint64Array,
    pub lapic: Uint8Array,
    pub xsave: Uint8Array,
    pub internal_names: Vec<String>,
    pub internal_values: BigUint64Array,
}

/// A vCPU's debug state: instruction breakpoints (linear addresses), watchpoints
/// (address, length and kind `write`/`read`/`access` each), single-step.
#[napi(object)]
pub struct NativeDebugState {
    pub breakpoints: BigUint64Array,
    pub watch_addresses: BigUint64Array,
    pub watch_lengths: BigUint64Array,
    pub watch_kinds: Vec<String>,
    pub single_step: bool,
}

fn to_js(s: VcpuState) -> NativeVcpuState {
    let VcpuState {
        registers,
        msrs,
        lapic,
        xsave,
        internal,
    } = s;
    NativeVcpuState {
        register_ids: Uint32Array::new(registers.iter().map(|(id, _)| *id).collect()),
        register_values: BigUint64Array::new(registers.iter().flat_map(|(_, v)| *v).collect()),
        msrs: Uint32Array::new(msrs.iter().map(|(m, _)| *m).collect()),
        msr_values: BigUint64Array::new(msrs.iter().map(|(_, v)| *v).collect()),
        lapic: Uint8Array::new(lapic),
        xsave: Uint8Array::new(xsave),
        internal_names: internal.iter().map(|(n, _)| n.clone()).collect(),
        internal_values: BigUint64Array::new(internal.iter().map(|(_, v)| *v).collect()),
    }
}

fn from_js(s: &NativeVcpuState) -> Result<VcpuState> {
    let NativeVcpuState {
        register_ids,
        register_values,
        msrs,
        msr_values,
        lapic,
        xsave,
        internal_names,
        internal_values,
    } = s;
    let pairs = |what: &str, ids: usize, values: usize, per: usize| {
        if values == ids * per {
            Ok(())
        } else {
            Err(invalid(format!(
                "state {what}: {ids} ids need {} values, got {values}",
                ids * per
            )))
        }
    };
    pairs("registers", register_ids.len(), register_values.len(), 2)?;
    pairs("MSRs", msrs.len(), msr_values.len(), 1)?;
    pairs(
        "internal values",
        internal_names.len(),
        internal_values.len(),
        1,
    )?;
    Ok(VcpuState {
        registers: register_ids
            .iter()
            .zip(register_values.chunks_exact(2))
            .map(|(id, v)| (*id, [v[0], v[1]] as RegisterValue))
            .collect(),
        msrs: msrs
            .iter()
            .copied()
            .zip(msr_values.iter().copied())
            .collect(),
        lapic: lapic.to_vec(),
        xsave: xsave.to_vec(),
        internal: internal_names
            .iter()
            .cloned()
            .zip(internal_values.iter().copied())
            .collect(),
    })
}

#[napi]
impl Vcpu {
    /// The vCPU's whole state (between runs).
    #[napi]
    pub fn state(&self) -> Result<NativeVcpuState> {
        guard("Vcpu.state", || {
            self.check_open()?;
            self.core.with(|b, _| b.state()).map(to_js)
        })
    }

    /// Replaces the vCPU's whole state; a state that does not fit changes nothing.
    #[napi]
    pub fn set_state(&self, state: NativeVcpuState) -> Result<()> {
        guard("Vcpu.setState", || {
            self.check_open()?;
            let s = from_js(&state)?;
            self.core.with(|b, _| b.set_state(&s))
        })
    }

    /// Where the vCPU stops for the VMM (linear addresses) and whether it steps.
    #[napi]
    pub fn set_debug_state(&self, state: NativeDebugState) -> Result<()> {
        guard("Vcpu.setDebugState", || {
            self.check_open()?;
            let NativeDebugState {
                breakpoints,
                watch_addresses,
                watch_lengths,
                watch_kinds,
                single_step,
            } = &state;
            if watch_lengths.len() != watch_addresses.len()
                || watch_kinds.len() != watch_addresses.len()
            {
                return Err(invalid(format!(
                    "watchpoints: {} addresses need as many lengths and kinds, got {} and {}",
                    watch_addresses.len(),
                    watch_lengths.len(),
                    watch_kinds.len()
                )));
            }
            let watchpoints = watch_addresses
                .iter()
                .zip(watch_lengths.iter())
                .zip(watch_kinds.iter())
                .map(|((a, l), k)| {
                    let kind = match k.as_str() {
                        "write" => WatchKind::Write,
                        "read" => WatchKind::Read,
                        "access" => WatchKind::Access,
                        other => {
                            return Err(invalid(format!(
                                "watchpoint kind must be 'write', 'read' or 'access', got '{other}'"
                            )))
                        }
                    };
                    Ok(Watchpoint {
                        address: *a,
                        len: *l,
                        kind,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let d = DebugState {
                breakpoints: breakpoints.to_vec(),
                watchpoints,
                single_step: *single_step,
            };
            self.core.with(|b, _| b.set_debug_state(&d))
        })
    }
}
