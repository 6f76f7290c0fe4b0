//! What `mshv doctor` reports about the host before it runs anything: the device, the
//! hypervisor underneath this kernel, the capabilities the partition will use, and the
//! kernel's paths (how partitions are created, how GVAs are translated, which intercepts
//! the hypervisor refused: issue #28 items 1, 7, 9 and 13).

use crate::errors::check_device;
use crate::DEVICE_PATH;
use std::path::Path;

/// Facts about the host. The kernel paths are what this process learned from its
/// partitions, or, before it made any, from a probe: one partition with one VP, made and
/// dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `/dev/mshv` exists.
    pub device_present: bool,
    /// Why `/dev/mshv` cannot be opened read-write, when it cannot.
    pub device_error: Option<String>,
    /// The hypervisor this kernel runs on, from CPUID (`Microsoft Hv` on a root
    /// partition), when the processor reports one.
    pub hypervisor_vendor: Option<String>,
    /// Its version, when it is Microsoft's: `major.minor.build`.
    pub hypervisor_version: Option<String>,
    /// `HV_PARTITION_PROPERTY_VMM_CAPABILITIES` of the host partition (bank 0 bits),
    /// when the device opens; 0 where the hypervisor does not report them.
    pub vmm_capabilities: Option<u64>,
    /// `HV_PARTITION_PROPERTY_PROCESSOR_FEATURES0` and `1` of the host, when they read.
    pub processor_features: Option<[u64; 2]>,
    /// Why a property could not be read, when one could not.
    pub property_error: Option<String>,
    /// How partitions are created on this kernel (`PartitionPath`), once known.
    pub partition_path: Option<String>,
    /// How GVAs are translated on this kernel (`TranslatePath`), once known.
    pub translate_gva_path: Option<String>,
    /// MSR intercepts the hypervisor refused in this process.
    pub refused_intercepts: Vec<String>,
    /// Why the kernel paths are not known, or not all of them, when they are not.
    pub kernel_paths_error: Option<String>,
}

/// CPUID `leaf` on this processor.
#[cfg(target_arch = "x86_64")]
fn cpuid(leaf: u32) -> [u32; 4] {
    // CPUID exists on every x86-64 processor and has no side effects.
    let r = std::arch::x86_64::__cpuid(leaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The hypervisor vendor and, for Microsoft's, its version. CPUID.1:ECX bit 31 says a
/// hypervisor is present (SDM vol 2 CPUID: "not used, always 0" on bare metal);
/// leaf 0x4000_0000 names it in EBX:ECX:EDX and leaf 0x4000_0002 gives Microsoft's
/// version, build in EAX and major.minor in EBX (Hyper-V TLFS, "Hypervisor Version
/// Identification").
#[cfg(target_arch = "x86_64")]
fn hypervisor_identity() -> (Option<String>, Option<String>) {
    if cpuid(1)[2] & (1 << 31) == 0 {
        return (None, None);
    }
    let [max, b, c, d] = cpuid(0x4000_0000);
    let bytes: Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
    let vendor = String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string();
    let version = (vendor == "Microsoft Hv" && max >= 0x4000_0002).then(|| {
        let [build, major_minor, _, _] = cpuid(0x4000_0002);
        format!("{}.{}.{build}", major_minor >> 16, major_minor & 0xffff)
    });
    (Some(vendor), version)
}

#[cfg(not(target_arch = "x86_64"))]
fn hypervisor_identity() -> (Option<String>, Option<String>) {
    (None, None)
}

/// Reads the host facts. Never fails: what cannot be read is reported as such.
pub fn host_facts() -> HostFacts {
    let path = Path::new(DEVICE_PATH);
    let (hypervisor_vendor, hypervisor_version) = hypervisor_identity();
    let mut facts = HostFacts {
        device_present: path.exists(),
        device_error: check_device(path).err().map(|e| e.to_string()),
        hypervisor_vendor,
        hypervisor_version,
        ..HostFacts::default()
    };
    #[cfg(target_arch = "x86_64")]
    if facts.device_error.is_none() {
        match mshv_ioctls::Mshv::new() {
            Ok(mshv) => {
                read_properties(&mshv, &mut facts);
                if let Err(e) = probe_kernel_paths(&mshv) {
                    facts.kernel_paths_error = Some(format!("probe: {e}"));
                }
            }
            Err(e) => facts.device_error = Some(e.to_string()),
        }
    }
    kernel_paths_into(&mut facts);
    facts
}

/// The kernel paths this process knows, into `facts`; where none is known and nothing
/// says why, why not.
fn kernel_paths_into(facts: &mut HostFacts) {
    #[cfg(target_arch = "x86_64")]
    {
        let k = crate::kernel::kernel_paths();
        facts.partition_path = k.partition.map(|p| p.to_string());
        facts.translate_gva_path =
            (k.translate_gva != crate::TranslatePath::Untried).then(|| k.translate_gva.to_string());
        facts.refused_intercepts = k.refused_intercepts.iter().map(|r| r.to_string()).collect();
    }
    if facts.partition_path.is_none() && facts.kernel_paths_error.is_none() {
        facts.kernel_paths_error = Some(match &facts.device_error {
            Some(e) => format!("not determined: {e}"),
            None => "not determined on this host".into(),
        });
    }
}

/// Creates a partition and a VP and translates one address, when this process has not
/// yet learned how this kernel does both (the paths are recorded as the backend records
/// them; the partition goes when this returns).
#[cfg(target_arch = "x86_64")]
fn probe_kernel_paths(mshv: &mshv_ioctls::Mshv) -> hv_core::Result<()> {
    use crate::kernel::{kernel_paths, record_partition_path, TRANSLATE};
    let known = kernel_paths();
    if known.partition.is_some() && known.translate_gva != crate::TranslatePath::Untried {
        return Ok(());
    }
    let (pt, path) = crate::partition::create(mshv, false)?;
    record_partition_path(&path);
    let vp = crate::vm::create_vp(&pt, 0)?;
    crate::vcpu::translate_gva(
        &vp,
        0,
        0,
        mshv_bindings::HV_TRANSLATE_GVA_VALIDATE_READ as u64,
        &TRANSLATE,
    )
    .map(drop)
}

#[cfg(target_arch = "x86_64")]
fn read_properties(mshv: &mshv_ioctls::Mshv, facts: &mut HostFacts) {
    use crate::errors::{map_error, retry};
    use mshv_bindings::*;
    let read = |code, what| {
        retry(|| mshv.get_host_partition_property(code)).map_err(|e| map_error(what, e))
    };
    let features = read(
        hv_partition_property_code_HV_PARTITION_PROPERTY_PROCESSOR_FEATURES0,
        "read processor features (bank 0)",
    )
    .and_then(|b0| {
        read(
            hv_partition_property_code_HV_PARTITION_PROPERTY_PROCESSOR_FEATURES1,
            "read processor features (bank 1)",
        )
        .map(|b1| [b0, b1])
    });
    match features {
        Ok(f) => facts.processor_features = Some(f),
        Err(e) => facts.property_error = Some(e.to_string()),
    }
    // mshv-ioctls treats AccessDenied/UnknownProperty as "no capabilities" (zeroes).
    match retry(|| mshv.get_vmm_caps()) {
        // SAFETY: the union's u64 view is valid for any bits.
        Ok(caps) => facts.vmm_capabilities = Some(unsafe { caps.__bindgen_anon_1.as_uint64[0] }),
        Err(e) => {
            facts
                .property_error
                .get_or_insert_with(|| map_error("read the VMM capabilities", e).to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_name_the_device_and_never_fail_without_it() {
        let f = host_facts();
        assert_eq!(f.device_present, Path::new(DEVICE_PATH).exists());
        if !f.device_present {
            let e = f.device_error.expect("a missing device is reported");
            assert!(e.contains("/dev/mshv"), "{e}");
            assert_eq!(f.vmm_capabilities, None);
        }
    }

    /// Issue #28 item 13: the doctor names the kernel's paths, or says why it cannot.
    #[test]
    fn the_kernel_paths_are_named_or_said_to_be_undetermined() {
        let f = host_facts();
        if f.device_error.is_some() {
            assert_eq!(f.partition_path, None);
            let e = f.kernel_paths_error.expect("why the paths are unknown");
            assert!(e.starts_with("not determined: /dev/mshv"), "{e}");
        } else {
            assert!(
                f.partition_path.is_some() || f.kernel_paths_error.is_some(),
                "{f:?}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_hypervisor_vendor_is_read_only_when_cpuid_reports_one() {
        let (vendor, version) = hypervisor_identity();
        if cpuid(1)[2] & (1 << 31) == 0 {
            assert_eq!((vendor, version), (None, None));
        } else {
            let vendor = vendor.expect("a vendor when the hypervisor bit is set");
            assert!(vendor.len() <= 12, "{vendor:?}");
            assert_eq!(version.is_some(), vendor == "Microsoft Hv");
        }
    }
}
