//! The code area: one executable region per processor that every compiled block of it
//! is copied into, rather than a mapping per block (a Linux boot compiles some 25,000
//! blocks per vCPU, and a process may hold at most `vm.max_map_count` mappings, 65,530
//! by default; each `mmap` and `mprotect` also costs 8-16 us, more than emitting a
//! block does).
//!
//! The area is a memfd mapped twice: writable where the compiler copies code in,
//! executable where it runs, so that no page is ever writable and executable at once
//! (W^X) and copying a block in takes no system call. Both views map the same physical
//! pages, and x86 keeps instruction fetch coherent with stores to them by physical
//! address (SDM vol 3 8.1.3: a store to code is seen by later fetches; the jump into
//! the new code serializes enough for the processor that wrote it, and a thread that
//! moves to another core passes a serializing context switch).
//!
//! Space is handed out from the bottom up and never reused one block at a time: code
//! of dropped blocks stays until the area is full, when everything after the
//! permanent head (the flags routine) is dropped at once and the generation moves on
//! (QEMU's `tb_flush` when its code buffer fills). A translation records the
//! generation it was made in and is entered only while that is current.

use super::TranslateError;
use std::os::fd::{FromRawFd, OwnedFd};

/// Bytes of address space an area takes by default: pages are only backed once code is
/// written in them (Debian's boot emits about 11 MiB per vCPU).
pub const SIZE: usize = 64 << 20;

/// One processor's code area.
pub struct CodeArea {
    /// The writable view.
    rw: *mut u8,
    /// The executable view.
    rx: *const u8,
    /// Bytes mapped.
    size: usize,
    /// Bytes in use.
    used: usize,
    /// Bytes kept across flushes (the code put in before [`CodeArea::seal_head`]).
    head: usize,
    /// Moves on at each flush.
    generation: u32,
}

// SAFETY: the views are private to the area, which is moved between threads with its
// processor and used by one thread at a time (`&mut` to write, `&` to run).
unsafe impl Send for CodeArea {}

impl std::fmt::Debug for CodeArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeArea")
            .field("used", &self.used)
            .field("generation", &self.generation)
            .finish()
    }
}

fn os_error() -> TranslateError {
    TranslateError::Map(std::io::Error::last_os_error())
}

impl CodeArea {
    /// Maps an empty area of `size` bytes (a multiple of the page size).
    pub fn new(size: usize) -> Result<CodeArea, TranslateError> {
        // SAFETY: the name is a NUL-terminated string; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"mshv-sim-code".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        // SAFETY: a valid descriptor and a size that fits off_t.
        if unsafe { libc::ftruncate(raw, size as libc::off_t) } != 0 {
            return Err(os_error());
        }
        let map = |prot| {
            // SAFETY: a fresh shared mapping of the whole memfd; the kernel picks the
            // address.
            let p =
                unsafe { libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, raw, 0) };
            if p == libc::MAP_FAILED {
                Err(os_error())
            } else {
                Ok(p.cast::<u8>())
            }
        };
        let rw = map(libc::PROT_READ | libc::PROT_WRITE)?;
        let rx = match map(libc::PROT_READ | libc::PROT_EXEC) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `rw` is the mapping made above, of `size` bytes, used by nothing.
                unsafe { libc::munmap(rw.cast(), size) };
                return Err(e);
            }
        };
        // `fd` closes on return: the mappings keep the memory (a process with many
        // vCPUs holds no descriptor for their code).
        Ok(CodeArea {
            rw,
            rx,
            size,
            used: 0,
            head: 0,
            generation: 0,
        })
    }

    /// The current generation: translations of another are gone.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The executable address of the code at `offset`.
    pub fn address(&self, offset: u32) -> usize {
        self.rx as usize + offset as usize
    }

    /// Whether `len` more bytes fit.
    pub fn fits(&self, len: usize) -> bool {
        len <= self.size - self.used
    }

    /// Drops all code after the head: the generation moves on.
    pub fn flush(&mut self) {
        self.used = self.head;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Keeps the code put in so far across flushes.
    pub fn seal_head(&mut self) {
        self.head = self.used;
    }

    /// Copies `code` (position-independent) in; returns its offset. The caller has
    /// checked that it [`CodeArea::fits`].
    pub fn put(&mut self, code: &[u8]) -> u32 {
        assert!(self.fits(code.len()), "the caller checks that code fits");
        let at = self.used;
        // SAFETY: `at + code.len() <= size` (checked above): the bytes are inside the
        // writable view, and no compiled code runs while the area is borrowed mutably.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.rw.add(at), code.len()) };
        // The next block starts on a 32-byte boundary, where compilers align functions
        // to 16: a loop in it aligned to 32 within its code (`emit`) stays so.
        self.used = (at + code.len() + 31) & !31;
        self.used = self.used.min(self.size);
        at as u32
    }
}

impl Drop for CodeArea {
    fn drop(&mut self) {
        // SAFETY: both views were mapped by `new` with `size` bytes; no translation of
        // this area can run once it is dropped (they live in its processor's cache,
        // which goes with it).
        unsafe {
            libc::munmap(self.rw.cast(), self.size);
            libc::munmap(self.rx.cast_mut().cast(), self.size);
        }
    }
}
