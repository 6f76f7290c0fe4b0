//! Creating a partition explicitly, instead of through mshv-ioctls' `create_vm()`.
//!
//! `Mshv::create_vm()` builds its arguments from the host's partition properties and
//! VMM capabilities with `unwrap()` (a panic, so a Node abort, on kernels without
//! `MSHV_ROOT_HVCALL` on `/dev/mshv`) and turns on every Hyper-V enlightenment (a SynIC
//! partition the sim does not model). Here the arguments are built from values read
//! through the kernel seam ([`crate::kernel`]), each failure is a typed error, a kernel
//! that cannot take the host-features path gets QEMU's arguments instead, and the
//! enlightenments are an option, off by default, as Hyperlight advises ("create_vm()
//! sets up a SynIC partition by default").

use crate::errors::{map_error, retry};
use crate::kernel::{describe, Device, Partition, PartitionPath};
use hv_core::Result;
use mshv_bindings::*;
use mshv_ioctls::MshvError;

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

/// The arguments of QEMU's `create_partition()` (qemu/qemu accel/mshv/mshv-all.c): a
/// `struct mshv_create_partition` with the LAPIC, X2APIC and GPA-super-pages bits and no
/// isolation, every other field zero. `MSHV_CREATE_PARTITION` encodes that 16-byte
/// struct's size (include/uapi/linux/mshv.h, and mshv-ioctls' `MSHV_CREATE_PARTITION`),
/// and kernels that know the v2 struct copy its first 16 bytes and read the rest only
/// when `MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES` is set ("First, copy v1 struct in case user
/// is on previous versions", the kernel's v2 patch to `mshv_ioctl_create_partition`).
pub fn basic_args() -> mshv_create_partition_v2 {
    mshv_create_partition_v2 {
        pt_flags: (1u64 << MSHV_PT_BIT_LAPIC)
            | (1u64 << MSHV_PT_BIT_X2APIC)
            | (1u64 << MSHV_PT_BIT_GPA_SUPER_PAGES),
        pt_isolation: MSHV_PT_ISOLATION_NONE as u64,
        ..Default::default()
    }
}

/// Reads the host's processor features (two banks).
fn host_features<D: Device>(dev: &D) -> std::result::Result<[u64; 2], MshvError> {
    let read = |code| retry(|| dev.host_property(code));
    Ok([
        read(hv_partition_property_code_HV_PARTITION_PROPERTY_PROCESSOR_FEATURES0)?,
        read(hv_partition_property_code_HV_PARTITION_PROPERTY_PROCESSOR_FEATURES1)?,
    ])
}

/// Whether a kernel that cannot take the host-features path said so: ENOTTY (torvalds/linux
/// drivers/hv/mshv_root_main.c `mshv_dev_ioctl` knows only `MSHV_CREATE_PARTITION`) or
/// EINVAL (`mshv_ioctl_create_partition`: a `pt_flags` bit outside `MSHV_PT_FLAGS_MASK`).
fn refused(e: &MshvError) -> bool {
    matches!(e, MshvError::Errno(n) if matches!(n.errno(), libc::ENOTTY | libc::EINVAL))
}

/// Makes the partition (not yet initialized): with the host's processor features where the
/// kernel reads and takes them, else with QEMU's arguments; says which.
fn make<D: Device>(dev: &D) -> Result<(D::Partition, PartitionPath)> {
    let reason = match host_features(dev) {
        Ok(features) => match retry(|| dev.create_partition(&create_args(features))) {
            Ok(pt) => return Ok((pt, PartitionPath::HostFeatures)),
            Err(e) if refused(&e) => format!(
                "MSHV_CREATE_PARTITION refused MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES ({})",
                describe(&e)
            ),
            Err(e) => return Err(map_error("create partition", e)),
        },
        // A hypercall status: the kernel passed the call through, the hypervisor would not
        // say; the features cannot be named either way.
        Err(e) if refused(&e) || matches!(e, MshvError::Hypercall { .. }) => format!(
            "the host's processor features do not read through MSHV_ROOT_HVCALL on /dev/mshv ({})",
            describe(&e)
        ),
        Err(e) => return Err(map_error("read the host's processor features", e)),
    };
    let pt = retry(|| dev.create_partition(&basic_args()))
        .map_err(|e| map_error("create partition (with QEMU's arguments)", e))?;
    Ok((pt, PartitionPath::Basic { reason }))
}

/// Creates and initializes a partition: the local APIC on, the Hyper-V enlightenments
/// only when `hyperv`; returns it with the creation path taken. Interrupted ioctls are
/// retried (Cloud Hypervisor retries EINTR here; the kernel returns EAGAIN after
/// depositing pages the hypervisor asked for).
pub fn create<D: Device>(dev: &D, hyperv: bool) -> Result<(D::Partition, PartitionPath)> {
    let (pt, path) = make(dev)?;
    // An 'early' property: set between creation and initialization.
    let features = if hyperv { dev.synthetic_features()? } else { 0 };
    retry(|| {
        pt.set_property(
            hv_partition_property_code_HV_PARTITION_PROPERTY_SYNTHETIC_PROC_FEATURES,
            features,
        )
    })
    .map_err(|e| map_error("set the synthetic processor features", e))?;
    retry(|| pt.initialize()).map_err(|e| map_error("initialize partition", e))?;
    Ok((pt, path))
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

    use crate::kernel::fake::{errno, status, Kernel, Op};

    const V2: u64 = (1 << MSHV_PT_BIT_LAPIC)
        | (1 << MSHV_PT_BIT_X2APIC)
        | (1 << MSHV_PT_BIT_GPA_SUPER_PAGES)
        | (1 << MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES);
    /// QEMU's `create_partition()` flags (qemu/qemu accel/mshv/mshv-all.c).
    const QEMU: u64 =
        (1 << MSHV_PT_BIT_LAPIC) | (1 << MSHV_PT_BIT_X2APIC) | (1 << MSHV_PT_BIT_GPA_SUPER_PAGES);

    fn creates(k: &Kernel) -> Vec<u64> {
        k.calls()
            .into_iter()
            .filter(|(op, _)| *op == Op::CreatePartition)
            .map(|(_, flags)| flags)
            .collect()
    }

    #[test]
    fn qemus_arguments_are_the_three_flags_mainlines_mask_allows_and_nothing_else() {
        let a = basic_args();
        // torvalds/linux include/uapi/linux/mshv.h: MSHV_PT_FLAGS_MASK = (1 << 3) - 1.
        assert_eq!({ a.pt_flags }, QEMU);
        assert_eq!({ a.pt_flags } & !0b111, 0);
        assert_eq!({ a.pt_isolation }, MSHV_PT_ISOLATION_NONE as u64);
        assert_eq!({ a.pt_num_cpu_fbanks }, 0);
        assert_eq!({ a.pt_cpu_fbanks }, [0, 0]);
        assert_eq!({ a.pt_disabled_xsave }, 0);
    }

    #[test]
    fn a_kernel_with_both_features_takes_the_host_features_path() {
        let k = Kernel::default();
        k.answer(Op::HostProperty, Ok(0b1011))
            .answer(Op::HostProperty, Ok(0));
        let (_, path) = create(&k, false).unwrap();
        assert_eq!(path, PartitionPath::HostFeatures);
        assert_eq!(creates(&k), [V2]);
        assert_eq!(k.count(Op::Initialize), 1);
    }

    /// torvalds/linux drivers/hv/mshv_root_main.c `mshv_dev_ioctl`: only
    /// MSHV_CREATE_PARTITION, `-ENOTTY` for MSHV_ROOT_HVCALL on /dev/mshv.
    #[test]
    fn mainline_mshv_dev_ioctl_answers_root_hvcall_with_enotty_and_qemus_arguments_are_taken() {
        let k = Kernel::default();
        k.answer(Op::HostProperty, Err(errno(libc::ENOTTY)));
        let (_, path) = create(&k, false).unwrap();
        assert_eq!(creates(&k), [QEMU], "no v2 attempt without the features");
        let PartitionPath::Basic { reason } = &path else {
            panic!("{path:?}")
        };
        assert!(
            reason.contains("MSHV_ROOT_HVCALL") && reason.contains("ENOTTY"),
            "{reason}"
        );
        assert!(path.to_string().starts_with("QEMU's arguments"), "{path}");
        assert_eq!(k.count(Op::Initialize), 1);
    }

    /// torvalds/linux drivers/hv/mshv_root_main.c `mshv_ioctl_create_partition`:
    /// `-EINVAL` for a pt_flags bit outside a three-bit `MSHV_PT_FLAGS_MASK`.
    #[test]
    fn mshv_ioctl_create_partition_with_a_three_bit_mask_answers_einval_and_qemus_arguments_are_taken(
    ) {
        let k = Kernel::default();
        k.answer(Op::CreatePartition, Err(errno(libc::EINVAL)));
        let (_, path) = create(&k, false).unwrap();
        assert_eq!(creates(&k), [V2, QEMU]);
        let PartitionPath::Basic { reason } = path else {
            panic!()
        };
        assert!(
            reason.contains("MSHV_PT_BIT_CPU_AND_XSAVE_FEATURES") && reason.contains("EINVAL"),
            "{reason}"
        );
    }

    #[test]
    fn a_hypervisor_that_will_not_name_the_features_gets_qemus_arguments_too() {
        let k = Kernel::default();
        k.answer(
            Op::HostProperty,
            Err(status(
                HVCALL_GET_PARTITION_PROPERTY,
                HV_STATUS_ACCESS_DENIED,
            )),
        );
        let (_, path) = create(&k, false).unwrap();
        assert!(matches!(path, PartitionPath::Basic { .. }), "{path:?}");
        assert_eq!(creates(&k), [QEMU]);
    }

    #[test]
    fn other_failures_are_errors_not_another_path() {
        let k = Kernel::default();
        k.answer(Op::CreatePartition, Err(errno(libc::ENOMEM)));
        let e = create(&k, false).unwrap_err();
        assert_eq!(e.code(), "ENOMEM");
        assert_eq!(creates(&k), [V2], "no second attempt");

        let k = Kernel::default();
        k.answer(Op::HostProperty, Err(errno(libc::ENOTTY)))
            .answer(Op::CreatePartition, Err(errno(libc::EPERM)));
        let e = create(&k, false).unwrap_err();
        assert!(e.to_string().contains("QEMU's arguments"), "{e}");
        assert_eq!(k.count(Op::Initialize), 0);

        let k = Kernel::default();
        k.answer(Op::HostProperty, Err(errno(libc::EFAULT)));
        let e = create(&k, false).unwrap_err();
        assert!(e.to_string().contains("processor features"), "{e}");
        assert_eq!(creates(&k), Vec::<u64>::new());
    }

    #[test]
    fn interrupted_creation_is_made_again_on_the_same_path() {
        let k = Kernel::default();
        k.answer(Op::CreatePartition, Err(errno(libc::EINTR)));
        let (_, path) = create(&k, false).unwrap();
        assert_eq!(path, PartitionPath::HostFeatures);
        assert_eq!(creates(&k), [V2, V2]);
    }
}
