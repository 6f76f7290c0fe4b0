//! Turning device and ioctl failures into typed, named errors.

use hv_core::HvError;
use std::path::Path;

/// The device node of the Microsoft Hypervisor root partition driver.
pub const DEVICE_PATH: &str = "/dev/mshv";

/// Checks that `path` exists and opens read-write, as `Mshv::new()` will need.
pub fn check_device(path: &Path) -> Result<(), HvError> {
    let unavailable = |e: std::io::Error| HvError::DeviceUnavailable {
        path: DEVICE_PATH,
        errno: e.raw_os_error().unwrap_or(libc::ENODEV),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{} does not exist (is this a Linux root partition on Microsoft Hypervisor?)",
                path.display()
            )
        } else {
            format!("cannot open {}: {e}", path.display())
        },
    };
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(unavailable)
}

/// Maps an `mshv-ioctls` error from operation `op` to an [`HvError`].
#[cfg(target_arch = "x86_64")]
pub fn map_error(op: &'static str, e: mshv_ioctls::MshvError) -> HvError {
    match e {
        mshv_ioctls::MshvError::Errno(errno) => HvError::ioctl(op, errno.errno()),
        mshv_ioctls::MshvError::Hypercall {
            code, status_raw, ..
        } => HvError::Hypercall {
            op,
            code,
            status: status_raw,
        },
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn map_error(op: &'static str, errno: i32) -> HvError {
    HvError::ioctl(op, errno)
}

/// Retries of one call on EINTR/EAGAIN before its error is reported.
#[cfg(target_arch = "x86_64")]
const RETRIES: u32 = 1000;

/// Calls `f` again while it fails with EINTR (a signal, SIGCHLD say, interrupted the
/// ioctl) or EAGAIN (the kernel deposited memory the hypervisor asked for and wants
/// the call made again: `mshv_ioctl_passthru_hvcall` in drivers/hv/mshv_root_main.c),
/// as Cloud Hypervisor, OpenVMM and Hyperlight do; at most [`RETRIES`] times.
#[cfg(target_arch = "x86_64")]
pub fn retry<T>(
    mut f: impl FnMut() -> Result<T, mshv_ioctls::MshvError>,
) -> Result<T, mshv_ioctls::MshvError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if tries < RETRIES && matches!(e.errno(), libc::EINTR | libc::EAGAIN) => {
                tries += 1
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_enodev_naming_the_path() {
        let e = check_device(Path::new("/nonexistent/mshv")).unwrap_err();
        assert_eq!(e.code(), "ENODEV");
        assert!(e.to_string().contains("/dev/mshv"), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn a_device_that_cannot_be_opened_is_enodev_too() {
        // A directory cannot be opened read-write.
        let e = check_device(Path::new("/")).unwrap_err();
        assert_eq!(e.code(), "ENODEV");
        assert!(e.to_string().contains("cannot open"), "{e}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn interrupted_and_retry_later_calls_are_made_again_and_others_are_not() {
        let mut n = 0;
        let r: Result<u32, _> = retry(|| {
            n += 1;
            match n {
                1 => Err(mshv_ioctls::MshvError::from(libc::EINTR)),
                2 => Err(mshv_ioctls::MshvError::from(libc::EAGAIN)),
                _ => Ok(7),
            }
        });
        assert_eq!(r.unwrap(), 7);
        let mut m = 0;
        let e = retry::<()>(|| {
            m += 1;
            Err(mshv_ioctls::MshvError::from(libc::EINVAL))
        });
        assert_eq!((e.unwrap_err().errno(), m), (libc::EINVAL, 1));
        let mut k = 0;
        let e = retry::<()>(|| {
            k += 1;
            Err(mshv_ioctls::MshvError::from(libc::EINTR))
        });
        assert_eq!(e.unwrap_err().errno(), libc::EINTR, "bounded");
        assert_eq!(k, RETRIES + 1);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn ioctl_and_hypercall_errors_keep_errno_status_and_operation() {
        let e = map_error("run vCPU", mshv_ioctls::MshvError::from(libc::EINTR));
        assert_eq!(e, HvError::ioctl("run vCPU", libc::EINTR));
        assert!(e.to_string().contains("run vCPU"));
        let h = map_error(
            "set registers",
            mshv_ioctls::MshvError::Hypercall {
                code: 0x51,
                status_raw: 5,
                status: None,
            },
        );
        assert_eq!(h.code(), "EHYPERCALL");
        assert!(h.to_string().contains("set registers"));
    }

    #[test]
    fn open_without_the_device_fails_cleanly() {
        if std::path::Path::new(DEVICE_PATH).exists() {
            eprintln!("skipped: {DEVICE_PATH} exists on this machine");
            return;
        }
        let err = crate::MshvHypervisor::open().err().unwrap();
        assert!(matches!(err.code(), "ENODEV" | "ENOTSUP"));
        assert!(!crate::MshvHypervisor::available());
    }
}
