//! A Linux TAP device (`Documentation/networking/tuntap.rst`): an Ethernet interface
//! of the host whose frames a process reads and writes through `/dev/net/tun`. The
//! device is opened with `IFF_TAP | IFF_NO_PI` (whole Ethernet frames, no packet
//! information header), non-blocking; a [`Reader`] thread waits for frames with
//! `poll(2)` and hands each to a callback, and stops when told (a pipe wakes it), so no
//! thread stays blocked in `read(2)` on a closed descriptor.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

/// `_IOW('T', 202, int)`: include/uapi/linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// The largest frame read: an Ethernet frame with a VLAN tag and some room (a TAP with
/// the default MTU of 1500 never gives more than 1518 bytes).
pub const MAX_FRAME: usize = 65_536;

/// What can go wrong with a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP interface name must be 1 to 15 bytes without NUL or '/', got {0:?}")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    Open(io::Error),
    #[error("cannot create TAP interface {name:?} (TUNSETIFF): {source}; creating one needs CAP_NET_ADMIN")]
    Create { name: String, source: io::Error },
    #[error("TAP {name}: {op}: {source}")]
    Io {
        name: String,
        op: &'static str,
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (include/uapi/linux/if.h).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Opens (creating it if needed) the TAP interface `name`; a name with `%d` lets
    /// the kernel pick the number (`mshv%d` -> `mshv0`).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name.contains('\0')
            || name.contains('/')
        {
            return Err(TapError::BadName(name.to_owned()));
        }
        // SAFETY: a NUL-terminated path; the flags are valid for open(2).
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(TapError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
            return Err(TapError::Create {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let given = CStr::from_bytes_until_nul(&req.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| name.to_owned());
        Ok(Tap { fd, name: given })
    }

    /// The interface's name (as the kernel gave it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends one Ethernet frame to the host. Returns false when the interface could take
    /// none now (it is down, or its queue is full: the frame is dropped, as a NIC drops it).
    pub fn write(&self, frame: &[u8]) -> Result<bool, TapError> {
        // SAFETY: `frame` is valid for `len` bytes; the descriptor is open.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n >= 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EIO) => Ok(false),
            _ => Err(TapError::Io {
                name: self.name.clone(),
                op: "write",
                source: e,
            }),
        }
    }

    /// Reads one frame into `buf`, if one is waiting.
    pub fn read(&self, buf: &mut [u8]) -> Result<Option<usize>, TapError> {
        // SAFETY: `buf` is valid for writes of its length; the descriptor is open.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EIO) => Ok(None),
            _ => Err(TapError::Io {
                name: self.name.clone(),
                op: "read",
                source: e,
            }),
        }
    }
}

/// A thread that reads frames from a [`Tap`] as they come, until [`Reader::stop`].
#[derive(Debug)]
pub struct Reader {
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts reading `tap`; `on_frame` gets each frame (on the reader's thread),
    /// `on_error` the error that ended the reading, if one did.
    pub fn spawn(
        tap: Arc<Tap>,
        mut on_frame: impl FnMut(Vec<u8>) + Send + 'static,
        on_error: impl FnOnce(TapError) + Send + 'static,
    ) -> Result<Reader, TapError> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(TapError::Io {
                name: tap.name.clone(),
                op: "pipe2",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: pipe2 gave us these two descriptors to own.
        let (stop, wake) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let thread = std::thread::Builder::new()
            .name(format!("tap {}", tap.name))
            .spawn(move || {
                let mut buf = vec![0u8; MAX_FRAME];
                loop {
                    let mut polled = [
                        libc::pollfd {
                            fd: tap.raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: stop.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: two valid pollfd entries.
                    let r = unsafe { libc::poll(polled.as_mut_ptr(), 2, -1) };
                    if r < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() == Some(libc::EINTR) {
                            continue;
                        }
                        on_error(TapError::Io {
                            name: tap.name.clone(),
                            op: "poll",
                            source: e,
                        });
                        return;
                    }
                    if polled[1].revents != 0 {
                        return;
                    }
                    loop {
                        match tap.read(&mut buf) {
                            Ok(Some(n)) => on_frame(buf[..n].to_vec()),
                            Ok(None) => break,
                            Err(e) => {
                                on_error(e);
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| TapError::Io {
                name: String::from("reader"),
                op: "spawn",
                source: e,
            })?;
        Ok(Reader {
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            // SAFETY: one byte from a valid buffer to our pipe's write end.
            unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
            let _ = t.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_cannot_take_are_refused_before_any_system_call() {
        for bad in ["", "a-name-of-16-chars", "a/b", "a\0b"] {
            assert!(matches!(Tap::open(bad), Err(TapError::BadName(n)) if n == bad));
        }
    }

    #[test]
    fn ifreq_has_the_kernels_layout() {
        // struct ifreq is 40 bytes on 64-bit Linux; the flags follow the 16-byte name.
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }
}
