//! Host memory that backs guest RAM and the register page: page-aligned mappings owned
//! by Rust, shared by reference count with everything that points into them.
//!
//! A region is shared between the VM (which maps it into the guest), the vCPU threads
//! that read and write it, and JavaScript `ArrayBuffer`s over it. The rule that keeps
//! JavaScript out of host memory: **whoever can reach the bytes owns the mapping**. An
//! `ArrayBuffer` holds an `Arc<HostRegion>`, so its address range stays mapped for as long
//! as the engine can reach the buffer, even after `ArrayBuffer.prototype.transfer()` moved
//! it where the binding cannot detach it.
//!
//! Closing a VM must still give its memory back at once (V8 does not see this memory,
//! so nothing would trigger a garbage collection): [`HostRegion::retire`] replaces the
//! pages with fresh anonymous zero pages in place. Physical memory (and, for a register
//! page, the reference to the vCPU file) goes at once; the addresses stay mapped until
//! the last holder drops, and a stale buffer then reads zeros that belong to nobody.

use crate::error::{HvError, Result};
use crate::page::PAGE_SIZE;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// 0 = not set yet: the host's physical memory (read on first use).
static PROCESS_LIMIT: AtomicUsize = AtomicUsize::new(0);

/// `MADV_POPULATE_WRITE` (Linux 5.14, `include/uapi/asm-generic/mman-common.h`): fault
/// every page in writable now, failing with ENOMEM instead of OOM-killing later. The
/// libc crate does not define it.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// A huge page (x86-64's 2 MiB): regions this large or larger start on one, so the
/// host can back them with transparent huge pages and the hypervisor map them with its
/// GPA super pages (the partition asks for them: `MSHV_PT_BIT_GPA_SUPER_PAGES`).
pub const HUGE_PAGE: usize = 2 << 20;

/// The most regions (guest RAM and register pages) a process may hold: each is three
/// mappings, and past `vm.max_map_count` (65,530) mmap fails and V8 then aborts on its own
/// next mapping. KVM caps a VM's memory slots the same way (KVM_USER_MEM_SLOTS).
pub const MAX_REGIONS: usize = 8192;

/// Regions allocated and not yet released in this process (for leak checks).
pub fn live_regions() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Bytes of guest RAM allocated and not yet released in this process.
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::SeqCst)
}

/// The memory this process may use: the host's physical memory, or less where the
/// process's memory cgroup (a container's) says so ([`cgroup_memory_limit`]): there the
/// kernel's OOM killer acts at the cgroup's limit, not at the host's size.
pub fn host_memory() -> usize {
    // Read once: every region's allocation asks (through the default process limit), and
    // the cgroup walk reads a file per level.
    static HOST: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *HOST.get_or_init(|| {
        let physical = physical_memory();
        cgroup_memory_limit().map_or(physical, |limit| limit.min(physical))
    })
}

/// The lowest memory limit along this process's cgroup path (cgroup v2's `memory.max`,
/// v1's `memory.limit_in_bytes`; `Documentation/admin-guide/cgroup-v2.rst`), if one is set.
pub fn cgroup_memory_limit() -> Option<usize> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_limit_under(std::path::Path::new("/sys/fs/cgroup"), &own)
}

/// [`cgroup_memory_limit`] for a cgroup file system mounted at `root` and the process's
/// `/proc/self/cgroup` text `own`: every directory from the cgroup's up to the mount (in a
/// container the mount is the cgroup itself, and the path does not exist under it).
fn cgroup_limit_under(root: &std::path::Path, own: &str) -> Option<usize> {
    let mut lowest: Option<usize> = None;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (mount, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = std::path::PathBuf::from(path.trim_start_matches('/'));
        loop {
            if let Some(limit) = read_limit(&mount.join(&dir).join(file)) {
                lowest = Some(lowest.map_or(limit, |l| l.min(limit)));
            }
            if !dir.pop() {
                break;
            }
        }
    }
    lowest
}

/// A cgroup limit file's value: `max` (v2) or v1's "unlimited" (a page-rounded 2^63) is none.
fn read_limit(path: &std::path::Path) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 62).then_some(v as usize)
}

/// The host's physical memory in bytes (`sysconf(_SC_PHYS_PAGES)`), or 1 TiB if unknown.
fn physical_memory() -> usize {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        (pages as usize).saturating_mul(size as usize)
    } else {
        1 << 40
    }
}

/// The most guest RAM this process may hold at once; by default the host's physical
/// memory ([`host_memory`]), so a script cannot map 92 TiB and let guests commit it
/// until the OOM killer ends the process.
pub fn process_memory_limit() -> usize {
    match PROCESS_LIMIT.load(Ordering::SeqCst) {
        0 => host_memory(),
        n => n,
    }
}

/// Sets [`process_memory_limit`]; regions already allocated stay.
pub fn set_process_memory_limit(bytes: usize) -> Result<()> {
    if bytes == 0 || !bytes.is_multiple_of(PAGE_SIZE) {
        return Err(HvError::InvalidArgument(format!(
            "the process memory limit must be a non-zero multiple of {PAGE_SIZE:#x} bytes, got {bytes:#x}"
        )));
    }
    PROCESS_LIMIT.store(bytes, Ordering::SeqCst);
    Ok(())
}

/// The bytes in use after admitting `len` more to `in_use` under `limit`, or the
/// refusal naming all three.
pub fn admit(what: &'static str, in_use: u64, len: u64, limit: u64) -> Result<u64> {
    in_use
        .checked_add(len)
        .filter(|total| *total <= limit)
        .ok_or(HvError::OutOfMemory {
            what,
            requested: len,
            in_use,
            limit,
        })
}

/// Counts `len` bytes against the process limit, or refuses them.
fn charge(len: usize) -> Result<()> {
    let limit = process_memory_limit() as u64;
    let mut live = LIVE_BYTES.load(Ordering::SeqCst);
    loop {
        let total = admit("this process", live as u64, len as u64, limit)?;
        match LIVE_BYTES.compare_exchange(live, total as usize, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => return Ok(()),
            Err(now) => live = now,
        }
    }
}

/// How a region is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionOptions {
    /// Commit every page now (`MADV_POPULATE_WRITE`): allocation fails with a clear
    /// ENOMEM if the host cannot back it, instead of the guest being OOM-killed later.
    pub reserve: bool,
}

/// How the bytes are backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// Anonymous memory between two `PROT_NONE` guard pages, counted as guest RAM.
    Anonymous,
    /// A page of a device file (the vCPU's register page), not counted as RAM.
    Shared,
}

/// A mapping of `len` bytes, unmapped when the last holder drops it.
#[derive(Debug)]
pub struct HostRegion {
    ptr: NonNull<u8>,
    len: usize,
    /// The whole reservation, guard pages included.
    map_base: NonNull<u8>,
    map_len: usize,
    backing: Backing,
    retired: AtomicBool,
}

// SAFETY: the region is plain memory; concurrent guest and VMM access to guest RAM is
// inherent to virtualization and goes through raw pointers with volatile accesses
// (`crate::shared`), never through `&`/`&mut` slices held across threads.
unsafe impl Send for HostRegion {}
// SAFETY: as above.
unsafe impl Sync for HostRegion {}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::ENOMEM)
}

fn check_len(len: usize) -> Result<()> {
    if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
        return Err(HvError::InvalidArgument(format!(
            "memory size {len:#x} must be a non-zero multiple of {PAGE_SIZE:#x}"
        )));
    }
    Ok(())
}

impl HostRegion {
    /// Allocates `len` zeroed bytes of guest RAM (a non-zero multiple of 4 KiB), with
    /// default options.
    pub fn new(len: usize) -> Result<Self> {
        Self::with_options(len, RegionOptions::default())
    }

    /// Allocates `len` zeroed bytes of guest RAM between two inaccessible guard pages,
    /// counted against [`process_memory_limit`].
    pub fn with_options(len: usize, options: RegionOptions) -> Result<Self> {
        check_len(len)?;
        if LIVE.load(Ordering::SeqCst) >= MAX_REGIONS {
            return Err(HvError::TooManyRegions { limit: MAX_REGIONS });
        }
        // A region of a huge page or more starts on one: the reservation has room to
        // slide it there, past the guard page before it.
        let slack = if len >= HUGE_PAGE {
            HUGE_PAGE - PAGE_SIZE
        } else {
            0
        };
        let map_len = len.checked_add(2 * PAGE_SIZE + slack).ok_or_else(|| {
            HvError::InvalidArgument(format!("memory size {len:#x} is too large"))
        })?;
        charge(len)?;
        // SAFETY: an anonymous PROT_NONE reservation with no address hint touches no
        // existing memory; the result is checked against MAP_FAILED before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        let Some(map_base) = (base != libc::MAP_FAILED)
            .then_some(base.cast::<u8>())
            .and_then(NonNull::new)
        else {
            LIVE_BYTES.fetch_sub(len, Ordering::SeqCst);
            return Err(HvError::ioctl("mmap guest memory", last_errno()));
        };
        // One page past the start, rounded up to a huge page for a large region: at most
        // `slack` further, so `len` bytes and a guard page still fit in the reservation.
        let first = map_base.as_ptr() as usize + PAGE_SIZE;
        let skip = if slack > 0 {
            first.next_multiple_of(HUGE_PAGE) - first
        } else {
            0
        };
        // SAFETY: `PAGE_SIZE + skip` is at most `PAGE_SIZE + slack`, inside the reservation
        // of `map_len` bytes, which still holds `len` bytes and a guard page after it.
        let ptr = unsafe { map_base.add(PAGE_SIZE + skip) };
        LIVE.fetch_add(1, Ordering::SeqCst);
        // From here on, Drop undoes everything on an early return.
        let region = HostRegion {
            ptr,
            len,
            map_base,
            map_len,
            backing: Backing::Anonymous,
            retired: AtomicBool::new(false),
        };
        // SAFETY: the range lies inside the reservation made above, which this region owns.
        if unsafe { libc::mprotect(ptr.as_ptr().cast(), len, libc::PROT_READ | libc::PROT_WRITE) }
            != 0
        {
            return Err(HvError::ioctl("mprotect guest memory", last_errno()));
        }
        if len >= HUGE_PAGE {
            // Transparent huge pages for guest RAM, as QEMU asks for them
            // (`qemu_ram_alloc` -> `qemu_madvise(QEMU_MADV_HUGEPAGE)`): fewer host TLB
            // misses for the sim, and 2 MiB host pages the hypervisor can map as super
            // pages. Best effort: a kernel without THP refuses, and RAM works as before.
            // SAFETY: the range is this region's own read-write mapping.
            let _ = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        }
        if options.reserve {
            // SAFETY: the range is this region's own read-write mapping.
            if unsafe { libc::madvise(ptr.as_ptr().cast(), len, MADV_POPULATE_WRITE) } != 0 {
                let errno = last_errno();
                return Err(match errno {
                    libc::EINVAL => HvError::Unsupported(
                        "reserving guest memory needs MADV_POPULATE_WRITE (Linux 5.14 or later)"
                            .into(),
                    ),
                    _ => HvError::OutOfMemory {
                        what: "the host",
                        requested: len as u64,
                        in_use: 0,
                        limit: host_memory() as u64,
                    },
                });
            }
        }
        Ok(region)
    }

    /// Maps `len` bytes of the file `fd` at `offset`, shared (the vCPU's register page).
    ///
    /// The mapping holds its own reference to the file: [`HostRegion::retire`] drops it.
    pub fn map_shared(fd: RawFd, offset: i64, len: usize) -> Result<Self> {
        check_len(len)?;
        // SAFETY: a new shared mapping of the caller's file with no address hint touches
        // no existing memory; the result is checked against MAP_FAILED before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        let ptr = (addr != libc::MAP_FAILED)
            .then_some(addr.cast::<u8>())
            .and_then(NonNull::new)
            .ok_or_else(|| HvError::ioctl("mmap the register page", last_errno()))?;
        LIVE.fetch_add(1, Ordering::SeqCst);
        Ok(HostRegion {
            ptr,
            len,
            map_base: ptr,
            map_len: len,
            backing: Backing::Shared,
            retired: AtomicBool::new(false),
        })
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

    /// Whether [`HostRegion::retire`] has run.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Gives the memory back now: the pages are replaced in place by fresh anonymous
    /// zero pages, so physical memory (or the device file) is released while every
    /// pointer into the region stays valid. Later calls do nothing.
    pub fn retire(&self) {
        if self.retired.swap(true, Ordering::SeqCst) {
            return;
        }
        // SAFETY: MAP_FIXED over exactly this region's own pages, which it owns; the
        // range stays mapped (now to zero pages) until Drop unmaps the reservation.
        let addr = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            // The old pages stay (still owned by this region): correct, only not freed.
            // SAFETY: the range is this region's own read-write mapping.
            unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_DONTNEED) };
        }
        self.uncount();
    }

    fn uncount(&self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
        if self.backing == Backing::Anonymous {
            LIVE_BYTES.fetch_sub(self.len, Ordering::SeqCst);
        }
    }

    /// Copies `data` into the region at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked above; the region is mapped while `self` lives.
        unsafe { crate::shared::copy_to(self.as_ptr().add(offset), data) };
        Ok(())
    }

    /// Copies bytes from the region at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: bounds checked above; the region is mapped while `self` lives.
        unsafe { crate::shared::copy_from(self.as_ptr().add(offset), out) };
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
        // SAFETY: `map_base`/`map_len` came from a successful mmap and are unmapped once.
        unsafe {
            libc::munmap(self.map_base.as_ptr().cast(), self.map_len);
        }
        if !self.retired.load(Ordering::SeqCst) {
            self.uncount();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, MutexGuard};

    /// The region count is process-wide and tests run in parallel: every test here that
    /// maps a region holds this lock, so one that counts sees only its own.
    fn alone() -> MutexGuard<'static, ()> {
        static REGIONS: Mutex<()> = Mutex::new(());
        REGIONS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The `THPeligible` line of /proc/self/smaps for the mapping that starts at `addr`.
    fn thp_eligible(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((start, _)) = range.split_once('-') {
                    if start.chars().all(|c| c.is_ascii_hexdigit()) && !start.is_empty() {
                        inside = usize::from_str_radix(start, 16).ok() == Some(addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("THPeligible:") {
                    return Some(v.trim().to_string());
                }
            }
        }
        None
    }

    /// Regions of 2 MiB or more start on a huge page and ask for transparent huge pages,
    /// as QEMU's guest RAM does; smaller ones keep 4 KiB alignment.
    #[test]
    fn large_regions_start_on_a_huge_page_and_ask_for_transparent_huge_pages() {
        let _alone = alone();
        for len in [HUGE_PAGE, 3 * HUGE_PAGE + PAGE_SIZE] {
            let r = HostRegion::new(len).unwrap();
            let at = r.as_ptr() as usize;
            assert_eq!(at % HUGE_PAGE, 0, "{len:#x} bytes at {at:#x}");
            // Its last byte is usable, the guard page after it is not part of it.
            r.write(len - 1, &[7]).unwrap();
            let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .unwrap_or_default();
            if thp.contains("[madvise]") || thp.contains("[always]") {
                assert_eq!(thp_eligible(at).as_deref(), Some("1"), "{len:#x} bytes");
            }
        }
        let small = HostRegion::new(16 * PAGE_SIZE).unwrap();
        assert_eq!(small.len(), 16 * PAGE_SIZE);
    }

    #[test]
    fn the_lowest_cgroup_memory_limit_on_the_path_counts_v2_and_v1() {
        let root = std::env::temp_dir().join(format!("mshv-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = |p: &str| {
            let d = root.join(p);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        // v2: the parent limits, the process's own cgroup says "max".
        std::fs::write(dir("user.slice").join("memory.max"), "1073741824\n").unwrap();
        std::fs::write(dir("user.slice/app").join("memory.max"), "max\n").unwrap();
        assert_eq!(
            cgroup_limit_under(&root, "0::/user.slice/app\n"),
            Some(1 << 30)
        );
        // v1: "unlimited" is a page-rounded 2^63; the mount's root (a container's) limits.
        std::fs::write(dir("memory").join("memory.limit_in_bytes"), "536870912\n").unwrap();
        std::fs::write(
            dir("memory/docker/abc").join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(
            cgroup_limit_under(&root, "4:memory:/docker/abc\n1:cpu:/\n"),
            Some(512 << 20)
        );
        assert_eq!(
            cgroup_limit_under(&root, "1:cpu:/\n"),
            None,
            "no memory controller, no limit"
        );
        assert!(host_memory() <= physical_memory());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_process_holds_at_most_max_regions_and_the_next_is_enomem() {
        let _alone = alone();
        let mut held = Vec::new();
        while live_regions() < MAX_REGIONS {
            held.push(HostRegion::new(PAGE_SIZE).unwrap());
        }
        let e = HostRegion::new(PAGE_SIZE).unwrap_err();
        assert_eq!(e.code(), "ENOMEM");
        assert!(e.to_string().contains("8192 guest memory regions"), "{e}");
        held.pop();
        assert!(
            HostRegion::new(PAGE_SIZE).is_ok(),
            "one freed, one more fits"
        );
    }

    #[test]
    fn rejects_unaligned_and_empty_sizes() {
        let _alone = alone();
        assert_eq!(HostRegion::new(0).unwrap_err().code(), "EINVAL");
        assert_eq!(HostRegion::new(4097).unwrap_err().code(), "EINVAL");
    }

    #[test]
    fn reads_back_what_it_wrote_and_checks_bounds() {
        let _alone = alone();
        let r = HostRegion::new(PAGE_SIZE).unwrap();
        r.write(4090, &[1, 2, 3]).unwrap();
        let mut out = [0u8; 3];
        r.read(4090, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        assert!(r.write(4095, &[1, 2]).is_err());
        assert!(r.read(usize::MAX, &mut out).is_err());
    }

    #[test]
    fn retiring_zeroes_in_place_releases_once_and_keeps_the_address_mapped() {
        let _alone = alone();
        let r = HostRegion::new(2 * PAGE_SIZE).unwrap();
        r.write(0, &[7; 64]).unwrap();
        let live = live_regions();
        r.retire();
        assert_eq!(live_regions(), live - 1);
        r.retire();
        assert_eq!(live_regions(), live - 1, "a second retire counts nothing");
        let mut out = [1u8; 64];
        r.read(0, &mut out).unwrap();
        assert_eq!(out, [0; 64], "fresh zero pages at the same address");
        r.write(0, &[9]).unwrap();
        drop(r);
        assert_eq!(
            live_regions(),
            live - 1,
            "dropping a retired region counts nothing"
        );
    }

    #[test]
    fn guest_ram_sits_between_inaccessible_guard_pages() {
        let _alone = alone();
        let r = HostRegion::new(PAGE_SIZE).unwrap();
        for page in [
            r.as_ptr() as usize - PAGE_SIZE,
            r.as_ptr() as usize + PAGE_SIZE,
        ] {
            let mut vec = 0u8;
            // SAFETY: mincore only inspects the mapping; it writes one byte to `vec`.
            let rc = unsafe { libc::mincore(page as *mut _, PAGE_SIZE, &mut vec) };
            assert_eq!(rc, 0, "the guard page is part of the reservation");
        }
        // The kernel merges neighbouring mappings with the same protection, so a guard
        // page can sit inside a larger `---p` line (another region's guard beside it, as
        // when tests run in parallel): look for the line whose range holds it.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for guard in [
            r.as_ptr() as usize - PAGE_SIZE,
            r.as_ptr() as usize + PAGE_SIZE,
        ] {
            let line = maps
                .lines()
                .find(|l| {
                    let range = l.split(' ').next().unwrap_or("");
                    let (start, end) = range.split_once('-').unwrap_or(("", ""));
                    let start = usize::from_str_radix(start, 16).unwrap_or(usize::MAX);
                    let end = usize::from_str_radix(end, 16).unwrap_or(0);
                    (start..end).contains(&guard)
                })
                .unwrap_or_else(|| panic!("no mapping holds {guard:#x}:\n{maps}"));
            assert!(line.contains("---p"), "the guard page is PROT_NONE: {line}");
        }
    }

    #[test]
    fn admission_refuses_what_exceeds_the_limit_and_names_the_sizes() {
        assert_eq!(admit("this VM", 0x1000, 0x1000, 0x2000).unwrap(), 0x2000);
        let e = admit("this VM", 0x1000, 0x2000, 0x2000).unwrap_err();
        assert_eq!(e.code(), "ENOMEM");
        let text = e.to_string();
        for part in ["this VM", "0x2000", "0x1000"] {
            assert!(text.contains(part), "{text}");
        }
        assert!(admit("x", u64::MAX, 1, u64::MAX).is_err(), "no wrap-around");
        assert_eq!(set_process_memory_limit(100).unwrap_err().code(), "EINVAL");
    }
}
