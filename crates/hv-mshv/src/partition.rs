//! Creating a partition explicitly, instead of through mshv-ioctls' `create_vm()`.
//!
//! `Mshv::create_vm()` builds its arguments from the host's partition properties and
//! VMM capabilities with `unwrap()` (a panic, so a Node abort, on kernels without
//! `MSHV_ROOT_HVCALL`) and turns on every Hyper-V enlightenment (a SynIC partition the
//! sim does not model). Here the arguments are built from values the caller read, each
//! failure is a typed error, and the enlightenments are an option, off by default, as
//! Hyperlight advises ("create_vm() sets up a SynIC partition by default").

use crate::errors::{map_error, retry};
use hv_core::{HvError, Result};
use mshv_bindings::*;
use mshv_ioctls::{Mshv, VmFd};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The `mshv_create_partition_v2` of a partition with a hypervisor-emulated local APIC
/// (x2APIC-capable), 2 MiB guest pages where the host backs them, and the processor
/// features the host has (`host_features`: `HV_PARTITION_PROPERTY_PROCESSOR_FEATURES0`
/// and `1`, enabled bits), as mshv-ioctls' `make_default_partition_create_arg` builds
/// them: the partition takes *disabled* features, and the reserved bits stay off.
pub fn create_args(host_features: [u64; 2]) -> mshv_create_partition_v2 {
    let pt_flags = (1u64 << MSHV_PT_BIT_LAPIC)
        | (1u64 << MSHV_PT_BIT_X2APIC)
        | (1u64 << MSHV_PT_BIT_GPA_SUPER_PAGES)
        | (1u64 << MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES);
    let mut args = mshv_create_partition_v2 {
        pt_flags,
        pt_isolation: MSHV_PT_ISOLATION_NONE as u64,
        pt_num_cpu_fbanks: MSHV_NUM_CPU_FEATURES_BANKS as u16,
        ..Default::default()
    };
    // SAFETY: both unions are plain u64 views; every bit pattern is valid.
    unsafe {
        let mut xsave = hv_partition_processor_xsave_features {
            as_uint64: u64::MAX,
        };
        let x = &mut xsave.__bindgen_anon_1;
        x.set_xsave_support(0);
        x.set_xsaveopt_support(0);
        x.set_avx_support(0);
        x.set_avx2_support(0);
        x.set_fma_support(0);
        x.set_xsave_comp_support(0);
        x.set_xsave_supervisor_support(0);
        args.pt_disabled_xsave = xsave.as_uint64;

        let mut disabled = hv_partition_processor_features::default();
        disabled.as_uint64[0] = !host_features[0];
        disabled.as_uint64[1] = !host_features[1];
        disabled.__bindgen_anon_1.set_reserved_bank0(u64::MAX);
        args.pt_cpu_fbanks[0] = disabled.as_uint64[0];
        args.pt_cpu_fbanks[1] = disabled.as_uint64[1];
    }
    args
}

/// Reads the host's processor features (two banks), as a typed error when the
/// hypercall is unavailable.
fn host_features(mshv: &Mshv) -> Result<[u64; 2]> {
    let read = |code, what| {
        retry(|| mshv.get_host_partition_property(code)).map_err(|e| map_error(what, e))
    };
    Ok([
        read(
            hv_partition_property_code_HV_PARTITION_PROPERTY_PROCESSOR_FEATURES0,
            "read the host's processor features (bank 0)",
        )?,
        read(
            hv_partition_property_code_HV_PARTITION_PROPERTY_PROCESSOR_FEATURES1,
            "read the host's processor features (bank 1)",
        )?,
    ])
}

/// The synthetic processor features of the partition: none, unless `hyperv`, then
/// mshv-ioctls' default mask (which `unwrap()`s a capability query: its panic becomes
/// an error).
fn synthetic_features(mshv: &Mshv, hyperv: bool) -> Result<u64> {
    if !hyperv {
        return Ok(0);
    }
    catch_unwind(AssertUnwindSafe(|| mshv.make_default_synthetic_features_mask())).map_err(
        |_| {
            HvError::Unsupported(
                "hyperv: this host does not report its VMM capabilities, so the Hyper-V enlightenments cannot be offered"
                    .into(),
            )
        },
    )
}

/// Creates and initializes a partition: the local APIC on, the Hyper-V enlightenments
/// only when `hyperv`. Interrupted ioctls are retried (Cloud Hypervisor retries EINTR
/// here; the kernel returns EAGAIN after depositing pages the hypervisor asked for).
pub fn create(mshv: &Mshv, hyperv: bool) -> Result<VmFd> {
    let args = create_args(host_features(mshv)?);
    let fd =
        retry(|| mshv.create_vm_with_args(&args)).map_err(|e| map_error("create partition", e))?;
    // An 'early' property: set between creation and initialization.
    let features = synthetic_features(mshv, hyperv)?;
    retry(|| {
        fd.set_partition_property(
            hv_partition_property_code_HV_PARTITION_PROPERTY_SYNTHETIC_PROC_FEATURES,
            features,
        )
    })
    .map_err(|e| map_error("set the synthetic processor features", e))?;
    retry(|| fd.initialize()).map_err(|e| map_error("initialize partition", e))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_has_a_local_apic_and_the_hosts_features_only() {
        let args = create_args([0b1011, 0]);
        assert_ne!(args.pt_flags & (1 << MSHV_PT_BIT_LAPIC), 0, "LAPIC on");
        assert_eq!(
            args.pt_flags & (1 << MSHV_PT_BIT_NESTED_VIRTUALIZATION),
            0,
            "no nested virtualization"
        );
        assert_eq!({ args.pt_isolation }, MSHV_PT_ISOLATION_NONE as u64);
        assert_eq!(
            { args.pt_num_cpu_fbanks },
            MSHV_NUM_CPU_FEATURES_BANKS as u16
        );
        // Bank 0: disabled = !enabled, except reserved bits, which stay disabled.
        let mut reserved = hv_partition_processor_features::default();
        // SAFETY: plain u64 views.
        let reserved_bits = unsafe {
            reserved.__bindgen_anon_1.set_reserved_bank0(u64::MAX);
            reserved.as_uint64[0]
        };
        let banks = { args.pt_cpu_fbanks };
        assert_eq!(banks[0] & 0b1111, 0b0100, "the host's bits enabled");
        assert_eq!(banks[0] & reserved_bits, reserved_bits);
        assert_eq!(banks[1], u64::MAX, "nothing enabled in bank 1");
        // XSAVE: the legacy and AVX components the hypervisor supports are enabled.
        let x = hv_partition_processor_xsave_features {
            as_uint64: args.pt_disabled_xsave,
        };
        // SAFETY: plain u64 view.
        unsafe {
            assert_eq!(x.__bindgen_anon_1.xsave_support(), 0);
            assert_eq!(x.__bindgen_anon_1.avx_support(), 0);
        }
    }
}
