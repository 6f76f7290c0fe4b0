//! The guest physical address space as a processor sees it during one run.
//!
//! The VM publishes an immutable snapshot on every map/unmap; a vCPU picks up the
//! newest snapshot when it starts running, so mapping never blocks a running vCPU.

use hv_core::MemoryMapping;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where a guest physical address lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Guest RAM: host pointer to the byte at the GPA, writable flag, and the bytes of
    /// plain RAM from there (to the region's end or the next intercepted range).
    Ram {
        host: *mut u8,
        writable: bool,
        left: u64,
    },
    /// Nothing mapped: an `HVMSG_UNMAPPED_GPA` intercept.
    Unmapped,
    /// RAM or not, the VMM asked to intercept it: an `HVMSG_GPA_INTERCEPT`.
    Intercepted,
}

/// An immutable view of the guest physical memory map.
#[derive(Debug, Default, Clone)]
pub struct PhysMap {
    pub slots: Vec<MemoryMapping>,
    pub intercepts: Vec<(u64, u64)>,
    /// Bumped on every change so vCPUs know to flush their TLBs.
    pub generation: u64,
    /// While the VMM tracks dirty pages: the pages guest writes reached.
    pub dirty: Option<Arc<DirtyLog>>,
}

/// The pages of each RAM region that guest writes reached since the log was taken
/// last: marked when a write fills the TLB (the VMM's taking flushes every TLB, so the
/// next write to a page marks it again) and when a page walk sets accessed/dirty bits.
#[derive(Debug, Default)]
pub struct DirtyLog {
    slots: Vec<(u64, u64, Box<[AtomicU64]>)>,
}

impl DirtyLog {
    /// A log of the regions `slots` maps, every page clean.
    pub fn new(slots: &[MemoryMapping]) -> Self {
        DirtyLog {
            slots: slots
                .iter()
                .map(|m| {
                    let pages = m.region.len() as u64 / 4096;
                    let words = pages.div_ceil(64) as usize;
                    (
                        m.gpa,
                        m.end(),
                        (0..words).map(|_| AtomicU64::new(0)).collect(),
                    )
                })
                .collect(),
        }
    }

    /// The page of `gpa` was written.
    #[inline]
    pub fn mark(&self, gpa: u64) {
        if let Some((start, _, bits)) = self.slots.iter().find(|(s, e, _)| gpa >= *s && gpa < *e) {
            let page = (gpa - start) / 4096;
            if let Some(w) = bits.get((page / 64) as usize) {
                w.fetch_or(1 << (page % 64), Ordering::Relaxed);
            }
        }
    }

    /// The bits of the region at `gpa` (a bit per 4 KiB page), cleared; `None` when
    /// the log has no region there.
    pub fn take(&self, gpa: u64) -> Option<Vec<u64>> {
        let (_, _, bits) = self.slots.iter().find(|(s, _, _)| *s == gpa)?;
        Some(bits.iter().map(|w| w.swap(0, Ordering::AcqRel)).collect())
    }
}

impl PhysMap {
    /// Resolves `gpa`.
    #[inline]
    pub fn lookup(&self, gpa: u64) -> Target {
        if self.intercepts.iter().any(|&(s, e)| gpa >= s && gpa < e) {
            return Target::Intercepted;
        }
        for m in &self.slots {
            if gpa >= m.gpa && gpa < m.end() {
                let off = gpa - m.gpa;
                // SAFETY: `off` is inside the region (checked above), so the pointer stays
                // within the allocation.
                let host = unsafe { m.region.as_ptr().add(off as usize) };
                // Plain RAM ends where an intercepted range begins.
                let end = self
                    .intercepts
                    .iter()
                    .filter(|&&(s, _)| s > gpa)
                    .fold(m.end(), |end, &(s, _)| end.min(s));
                return Target::Ram {
                    host,
                    writable: m.writable,
                    left: end - gpa,
                };
            }
        }
        Target::Unmapped
    }

    /// Whether the 4 KiB page at `page` (aligned) is RAM with no intercepted byte.
    pub fn page_is_plain_ram(&self, page: u64) -> bool {
        let end = page + 4096;
        !self.intercepts.iter().any(|&(s, e)| s < end && page < e)
            && self.slots.iter().any(|m| page >= m.gpa && end <= m.end())
    }

    /// Whether no byte of the 4 KiB page at `page` (aligned) is RAM or intercepted: every
    /// access to it is the same unmapped-GPA exit.
    pub fn page_is_unmapped(&self, page: u64) -> bool {
        let end = page + 4096;
        !self.intercepts.iter().any(|&(s, e)| s < end && page < e)
            && !self.slots.iter().any(|m| m.gpa < end && page < m.end())
    }

    /// Reads a little-endian u64 of guest RAM (page-table walks); `None` if not RAM.
    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        match self.lookup(gpa) {
            Target::Ram { host, left, .. } if left >= 8 => {
                // SAFETY: 8 bytes are left in the region.
                Some(unsafe { hv_core::shared::load(host, 8) })
            }
            _ => None,
        }
    }

    /// Writes a little-endian u64 of guest RAM (accessed/dirty bits); false if not
    /// writable RAM.
    pub fn write_u64(&self, gpa: u64, v: u64) -> bool {
        match self.lookup(gpa) {
            Target::Ram {
                host,
                left,
                writable: true,
            } if left >= 8 => {
                // SAFETY: as in `read_u64`.
                unsafe { hv_core::shared::store(host, 8, v) };
                if let Some(d) = &self.dirty {
                    d.mark(gpa);
                }
                true
            }
            _ => false,
        }
    }

    pub fn read_u32(&self, gpa: u64) -> Option<u32> {
        match self.lookup(gpa) {
            Target::Ram { host, left, .. } if left >= 4 => {
                // SAFETY: 4 bytes are left in the region.
                Some(unsafe { hv_core::shared::load(host, 4) } as u32)
            }
            _ => None,
        }
    }

    pub fn write_u32(&self, gpa: u64, v: u32) -> bool {
        match self.lookup(gpa) {
            Target::Ram {
                host,
                left,
                writable: true,
            } if left >= 4 => {
                // SAFETY: 4 bytes are left in the region.
                unsafe { hv_core::shared::store(host, 4, v as u64) };
                if let Some(d) = &self.dirty {
                    d.mark(gpa);
                }
                true
            }
            _ => false,
        }
    }
}
