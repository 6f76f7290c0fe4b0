//! Host memory that backs guest RAM: an anonymous, page-aligned mapping owned by Rust.
//!
//! A region is shared by reference count between the VM (which maps it into the guest),
//! the vCPU threads that read and write it, and JavaScript `ArrayBuffer`s over it, so that
//! no holder can outlive the memory it points at.

use crate::error::{HvError, Result};
use crate::page::PAGE_SIZE;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Regions allocated and not yet unmapped in this process (for leak checks).
pub fn live_regions() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// An anonymous private mapping of `len` bytes, zero-filled, unmapped on drop.
#[derive(Debug)]
pub struct HostRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory; concurrent guest and VMM access to guest RAM is
// inherent to virtualization and is done through raw pointers with unaligned,
// non-referencing reads and writes, never through `&`/`&mut` slices held across threads.
unsafe impl Send for HostRegion {}
// SAFETY: as above.
unsafe impl Sync for HostRegion {}

impl HostRegion {
    /// Allocates `len` bytes; `len` must be a non-zero multiple of the 4 KiB page size.
    pub fn new(len: usize) -> Result<Self> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(HvError::InvalidArgument(format!(
                "memory size {len:#x} must be a non-zero multiple of {PAGE_SIZE:#x}"
            )));
        }
        // SAFETY: an anonymous mapping with no address hint touches no existing memory;
        // the result is checked against MAP_FAILED before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOMEM);
            return Err(HvError::ioctl("mmap guest memory", errno));
        }
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| HvError::ioctl("mmap guest memory", libc::ENOMEM))?;
        LIVE.fetch_add(1, Ordering::SeqCst);
        Ok(HostRegion { ptr, len })
    }

    /// Start of the region.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked above; `data` is a distinct Rust slice, so no overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Copies bytes from the region at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: bounds checked above.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(HvError::InvalidArgument(format!(
                "access at offset {offset:#x} of {len:#x} bytes is outside the {:#x}-byte region",
                self.len
            ))),
        }
    }
}

impl Drop for HostRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped exactly once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unaligned_and_empty_sizes() {
        assert_eq!(HostRegion::new(0).unwrap_err().code(), "EINVAL");
        assert_eq!(HostRegion::new(4097).unwrap_err().code(), "EINVAL");
    }

    #[test]
    fn reads_back_what_it_wrote_and_checks_bounds() {
        let r = HostRegion::new(PAGE_SIZE).unwrap();
        r.write(4090, &[1, 2, 3]).unwrap();
        let mut out = [0u8; 3];
        r.read(4090, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        assert!(r.write(4095, &[1, 2]).is_err());
        assert!(r.read(usize::MAX, &mut out).is_err());
    }
}
