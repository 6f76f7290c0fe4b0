//! Linear-to-physical translation: x86 paging (32-bit, PAE and 4-level) and a small
//! software TLB that maps linear pages straight to host pointers.

use crate::cpu::{Cpu, CR0_WP, CR4_PAE, CR4_PSE, EFER_NXE};
use crate::memmap::{MemMap, Target};

/// The kind of access being translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Execute,
}

/// A page fault: the faulting linear address and the #PF error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    pub address: u64,
    pub error_code: u32,
}

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Walks the guest page tables for `lin`, setting accessed/dirty bits as hardware does.
pub fn walk(
    cpu: &Cpu,
    mem: &MemMap,
    lin: u64,
    access: Access,
    user: bool,
) -> Result<u64, PageFault> {
    walk_with(cpu, mem, lin, access, user, true)
}

/// [`walk`], optionally leaving the accessed/dirty bits alone (a VMM's translation
/// hypercall without `HV_TRANSLATE_GVA_SET_PAGE_TABLE_BITS`).
pub fn walk_with(
    cpu: &Cpu,
    mem: &MemMap,
    lin: u64,
    access: Access,
    user: bool,
    set_bits: bool,
) -> Result<u64, PageFault> {
    if !cpu.paging() {
        let mask = if cpu.long_mode_active() {
            u64::MAX
        } else {
            0xffff_ffff
        };
        return Ok(lin & mask);
    }
    let fault = |present: bool| PageFault {
        address: lin,
        error_code: present as u32
            | ((access == Access::Write) as u32) << 1
            | (user as u32) << 2
            | ((access == Access::Execute) as u32) << 4,
    };
    let write = access == Access::Write;
    let nxe = cpu.efer & EFER_NXE != 0;
    let mut writable = true;
    let mut usr = true;
    let mut no_exec = false;
    // (table address, entry index, entry size) per level, top first.
    let (levels, mut table): (&[(u32, u32)], u64) = if cpu.long_mode_active() {
        (&[(39, 9), (30, 9), (21, 9), (12, 9)], cpu.cr3 & ADDR)
    } else if cpu.cr4 & CR4_PAE != 0 {
        let pdpte = mem
            .read_u64((cpu.cr3 & 0xffff_ffe0) + ((lin >> 30) & 3) * 8)
            .ok_or(fault(false))?;
        if pdpte & P == 0 {
            return Err(fault(false));
        }
        (&[(21, 9), (12, 9)], pdpte & ADDR)
    } else {
        (&[(22, 10), (12, 10)], cpu.cr3 & 0xffff_f000)
    };
    let wide = cpu.long_mode_active() || cpu.cr4 & CR4_PAE != 0;
    for (depth, &(shift, bits)) in levels.iter().enumerate() {
        let index = (lin >> shift) & ((1 << bits) - 1);
        let entry_gpa = table + index * if wide { 8 } else { 4 };
        let entry = if wide {
            mem.read_u64(entry_gpa)
        } else {
            mem.read_u32(entry_gpa).map(u64::from)
        }
        .ok_or(fault(false))?;
        if entry & P == 0 {
            return Err(fault(false));
        }
        writable &= entry & RW != 0;
        usr &= entry & US != 0;
        no_exec |= nxe && entry & NX != 0;
        let last = depth == levels.len() - 1;
        // PS marks a large page at the PD level (and PDPT in long mode); the PML4 has none.
        let large = !last
            && entry & PS != 0
            && if wide {
                !(cpu.long_mode_active() && depth == 0)
            } else {
                cpu.cr4 & CR4_PSE != 0
            };
        let leaf = last || large;
        let mut updated = entry | A;
        if leaf && write {
            updated |= D;
        }
        if user && !usr
            || write && !writable && (user || cpu.cr0 & CR0_WP != 0)
            || access == Access::Execute && no_exec
        {
            return Err(fault(true));
        }
        if set_bits && updated != entry {
            let ok = if wide {
                mem.write_u64(entry_gpa, updated)
            } else {
                mem.write_u32(entry_gpa, updated as u32)
            };
            if !ok {
                return Err(fault(true));
            }
        }
        if leaf {
            let page_mask = (1u64 << shift) - 1;
            let base = if wide {
                entry & ADDR & !page_mask
            } else if large {
                // PSE-36: bits 13..20 of the PDE hold physical address bits 32..39.
                (entry & 0xffc0_0000) | ((entry >> 13) & 0xff) << 32
            } else {
                entry & 0xffff_f000
            };
            return Ok(base | (lin & page_mask));
        }
        table = entry & if wide { ADDR } else { 0xffff_f000 };
    }
    Err(fault(false))
}

const TLB_SIZE: usize = 256;

#[derive(Debug, Clone, Copy)]
struct TlbEntry {
    /// Linear page number + 1 (0 = empty).
    tag: u64,
    gpa_page: u64,
    host: *mut u8,
    writable: bool,
    user: bool,
    executable: bool,
}

const EMPTY: TlbEntry = TlbEntry {
    tag: 0,
    gpa_page: 0,
    host: std::ptr::null_mut(),
    writable: false,
    user: false,
    executable: false,
};

/// Linear page → host page, for whole pages of plain RAM only (no intercepted byte in
/// them). Entries are installed only after a walk that checked the access: an entry
/// allows writes only after a write walk (which set the dirty bit) and instruction
/// fetches only after an execute walk (which checked NX), so every hit is an access
/// the page tables allowed.
#[derive(Debug)]
pub struct Tlb {
    entries: Box<[TlbEntry; TLB_SIZE]>,
    generation: u64,
}

// SAFETY: the host pointers point into guest RAM regions kept alive by the memory map
// snapshot the owning vCPU holds; the TLB moves with its vCPU and is flushed whenever
// that snapshot changes.
unsafe impl Send for Tlb {}

impl Default for Tlb {
    fn default() -> Self {
        Tlb {
            entries: Box::new([EMPTY; TLB_SIZE]),
            generation: u64::MAX,
        }
    }
}

/// What a translation produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translated {
    /// RAM: the host pointer to the byte, its guest physical address, and the bytes of
    /// plain RAM from there to the end of its page (fewer where an intercepted range
    /// begins inside the page).
    Ram {
        host: *mut u8,
        gpa: u64,
        left: usize,
    },
    /// Not RAM (or intercepted, or a write to read-only memory): exit with this GPA.
    Mmio { gpa: u64, intercepted: bool },
}

impl Tlb {
    pub fn flush(&mut self) {
        self.entries.fill(EMPTY);
    }

    /// Flushes if the memory map changed since the last call.
    pub fn sync_generation(&mut self, generation: u64) {
        if self.generation != generation {
            self.flush();
            self.generation = generation;
        }
    }

    /// Translates `lin` for `access`, through the TLB when possible.
    #[inline]
    pub fn translate(
        &mut self,
        cpu: &Cpu,
        mem: &MemMap,
        lin: u64,
        access: Access,
    ) -> Result<Translated, PageFault> {
        let page = lin >> 12;
        let slot = (page as usize) & (TLB_SIZE - 1);
        let user = cpu.cpl() == 3;
        let e = self.entries[slot];
        let allowed = match access {
            Access::Read => true,
            Access::Write => e.writable,
            Access::Execute => e.executable,
        };
        if e.tag == page + 1 && allowed && (!user || e.user) {
            let off = (lin & 0xfff) as usize;
            return Ok(Translated::Ram {
                // SAFETY: the entry maps a whole 4 KiB page of RAM; `off` < 4096.
                host: unsafe { e.host.add(off) },
                gpa: (e.gpa_page << 12) | off as u64,
                left: 4096 - off,
            });
        }
        let gpa = walk(cpu, mem, lin, access, user)?;
        match mem.lookup(gpa) {
            Target::Ram {
                host,
                writable,
                left,
            } => {
                if access == Access::Write && !writable {
                    return Ok(Translated::Mmio {
                        gpa,
                        intercepted: true,
                    });
                }
                let off = (gpa & 0xfff) as usize;
                let in_page = 4096 - off;
                if left >= in_page as u64 && mem.page_is_plain_ram(gpa & !0xfff) {
                    self.entries[slot] = TlbEntry {
                        tag: page + 1,
                        gpa_page: gpa >> 12,
                        // SAFETY: the page start is `off` bytes before `host`, inside the region.
                        host: unsafe { host.sub(off) },
                        writable: access == Access::Write,
                        user,
                        executable: access == Access::Execute,
                    };
                }
                Ok(Translated::Ram {
                    host,
                    gpa,
                    left: in_page.min(left as usize),
                })
            }
            Target::Unmapped => Ok(Translated::Mmio {
                gpa,
                intercepted: false,
            }),
            Target::Intercepted => Ok(Translated::Mmio {
                gpa,
                intercepted: true,
            }),
        }
    }
}
