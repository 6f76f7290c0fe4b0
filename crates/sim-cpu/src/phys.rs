//! The guest physical address space as a processor sees it during one run.
//!
//! The VM publishes an immutable snapshot on every map/unmap; a vCPU picks up the
//! newest snapshot when it starts running, so mapping never blocks a running vCPU.

use hv_core::MemoryMapping;

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
                true
            }
            _ => false,
        }
    }
}
