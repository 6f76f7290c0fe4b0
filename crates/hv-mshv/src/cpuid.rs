//! CPUID answers registered with the hypervisor (`HVCALL_REGISTER_INTERCEPT_RESULT`):
//! the hypervisor then answers the guest's CPUID itself, without an exit, as QEMU,
//! OpenVMM and Cloud Hypervisor (`set_cpuid2`) register theirs. Installing a CPUID
//! intercept instead would cover one leaf only (`hv_intercept_parameters.cpuid_index`).
//!
//! mshv-ioctls' `register_intercept_result_cpuid_entry` uses each register's value as
//! its own override mask, so it can set bits but never clear them; this builds the
//! input with whole-register masks.

use crate::errors::{map_error, retry};
use hv_core::{CpuidResult, Result};
use mshv_bindings::*;
use mshv_ioctls::VcpuFd;

/// The hypercall input that makes `result` the answer for vCPU `vp_index`: every
/// register it sets is overridden whole (mask all ones), the others not at all (mask 0),
/// even where the hypervisor's own value is zero (`always_override`).
pub fn intercept_result(vp_index: u32, result: &CpuidResult) -> hv_input_register_intercept_result {
    let value = |i: usize| result.registers[i].unwrap_or(0);
    let mask = |i: usize| {
        if result.registers[i].is_some() {
            u32::MAX
        } else {
            0
        }
    };
    hv_input_register_intercept_result {
        partition_id: 0, // filled in by the kernel
        vp_index,
        intercept_type: hv_intercept_type_HV_INTERCEPT_TYPE_X64_CPUID,
        parameters: hv_register_intercept_result_parameters {
            cpuid: hv_register_x64_cpuid_result_parameters {
                input: hv_register_x64_cpuid_result_parameters__bindgen_ty_1 {
                    eax: result.leaf,
                    ecx: result.subleaf.unwrap_or(0),
                    subleaf_specific: result.subleaf.is_some() as u8,
                    always_override: 1,
                    padding: 0,
                },
                result: hv_register_x64_cpuid_result_parameters__bindgen_ty_2 {
                    eax: value(0),
                    eax_mask: mask(0),
                    ebx: value(1),
                    ebx_mask: mask(1),
                    ecx: value(2),
                    ecx_mask: mask(2),
                    edx: value(3),
                    edx_mask: mask(3),
                },
            },
        },
    }
}

/// Registers `result` for the vCPU.
pub fn register(fd: &VcpuFd, vp_index: u32, result: &CpuidResult) -> Result<()> {
    let input = intercept_result(vp_index, result);
    retry(|| {
        let mut args = make_args!(HVCALL_REGISTER_INTERCEPT_RESULT, input);
        fd.hvcall(&mut args)
    })
    .map_err(|e| map_error("register a CPUID result", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_registers_are_overridden_whole_and_the_others_not_at_all() {
        let input = intercept_result(
            3,
            &CpuidResult {
                leaf: 7,
                subleaf: Some(0),
                registers: [None, Some(0), None, Some(0x8000_0001)],
            },
        );
        assert_eq!(
            ({ input.vp_index }, { input.intercept_type }),
            (3, hv_intercept_type_HV_INTERCEPT_TYPE_X64_CPUID)
        );
        // SAFETY: the CPUID view of the union was the one written.
        let p = unsafe { input.parameters.cpuid };
        assert_eq!(({ p.input.eax }, { p.input.ecx }), (7, 0));
        assert_eq!(p.input.subleaf_specific, 1);
        assert_eq!(p.input.always_override, 1);
        assert_eq!(
            ({ p.result.ebx }, { p.result.ebx_mask }),
            (0, u32::MAX),
            "EBX cleared"
        );
        assert_eq!(
            ({ p.result.eax_mask }, { p.result.ecx_mask }),
            (0, 0),
            "kept"
        );
        assert_eq!(
            ({ p.result.edx }, { p.result.edx_mask }),
            (0x8000_0001, u32::MAX)
        );
        // A leaf-wide answer.
        let wide = intercept_result(
            0,
            &CpuidResult {
                leaf: 1,
                ..Default::default()
            },
        );
        // SAFETY: as above.
        assert_eq!(unsafe { wide.parameters.cpuid.input.subleaf_specific }, 0);
    }
}
