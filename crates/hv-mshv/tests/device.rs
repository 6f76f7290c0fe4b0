//! The backend checklist (`hv-conformance`) on the real hypervisor. It needs
//! `/dev/mshv` (a Linux root partition on Hyper-V with the mshv driver); where that is
//! absent every check is reported as ignored, not passed.

#[cfg(target_arch = "x86_64")]
fn main() -> std::process::ExitCode {
    use hv_mshv::MshvHypervisor;
    let absent = (!MshvHypervisor::available())
        .then(|| format!("{} is absent on this machine", hv_mshv::DEVICE_PATH));
    let trials =
        hv_conformance::trials(|| Ok(Box::new(MshvHypervisor::open()?)), absent.as_deref());
    libtest_mimic::run(&libtest_mimic::Arguments::from_args(), trials).exit_code()
}

/// The checklist's guests are x86 code.
#[cfg(not(target_arch = "x86_64"))]
fn main() {}
