//! A software TLB: linear 4 KiB pages of plain guest RAM straight to host pointers, with
//! the accesses each kind of privilege may make through it precomputed at fill time.
//!
//! An entry is filled only after a walk that checked an access, and grants writes only
//! where the leaf's dirty bit is already set and the page holds no translated code, so
//! every hit is an access the page tables allow with nothing left to update. Anything
//! else (a first write, SMAP with EFLAGS.AC, code pages) takes the slow path. Only
//! canonical pages are cached (SDM vol 1 3.3.7.1): a non-canonical address always
//! misses, which compiled code's lookup relies on instead of checking it
//! (`jit::emit::translate`).
//!
//! A page that is no RAM (a device's MMIO, an intercepted range) is cached too, under the
//! same rules, as the guest physical page an access there exits with: a device hammered
//! through the same mapping is not walked again at every access (as a hardware TLB
//! caches translations whatever memory type they lead to, SDM vol 3 4.10.2).
//!
//! Protection keys (SDM vol 3 4.6.2): a TLB entry holds a page's protection key, not
//! the rights PKRU or IA32_PKRS give it (4.10.2.2), so WRPKRU and WRMSR of IA32_PKRS
//! rule the very next access with no invalidation, and no entry here may keep a grant
//! the new rights take away. An entry of a page whose key is in force (a user page
//! with CR4.PKE, a supervisor page with CR4.PKS, in 4-level paging) keeps its key and
//! the grants the page tables alone give; its grants are those minus what the key's
//! rights deny, made after the fill ([`Tlb::key_filled`]) and made again by
//! [`Tlb::rekey`] on every change of the rights. The lookup is the one of every other
//! entry, so a hit costs the same with CR4.PKE and CR4.PKS clear or set; with them
//! clear a miss pays one test of CR4 in the walk and one of the walk's key after the
//! fill (the fills themselves know nothing of keys); the rights' writes pay a pass
//! over the entries, skipped while none has a key.

use crate::paging::{canonical, key_denies, Access, Translation, KEY_AD, KEY_USER, KEY_WD, NO_KEY};

const ENTRIES: usize = 1024;

pub const USER_READ: u8 = 1;
pub const USER_WRITE: u8 = 2;
pub const USER_EXEC: u8 = 4;
pub const SUP_READ: u8 = 8;
pub const SUP_WRITE: u8 = 16;
pub const SUP_EXEC: u8 = 32;

/// The permission bit an access needs.
#[inline(always)]
pub fn need(access: Access, user: bool) -> u8 {
    let base = match access {
        Access::Read => USER_READ,
        Access::Write => USER_WRITE,
        Access::Execute => USER_EXEC,
    };
    if user {
        base
    } else {
        base << 3
    }
}

/// `repr(C)`: the translator's compiled code reads entries itself (`crate::jit`), at
/// the offsets [`layout`] gives.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Entry {
    /// Linear page number + 1 (0 = empty).
    tag: u64,
    /// For a page of RAM: the host address of its first byte less the linear address of
    /// it (wrapping), so that a linear address in the page plus this is its host
    /// address, with no masking (QEMU's TCG keeps its `CPUTLBEntry::addend` so).
    addend: *mut u8,
    gpa_page: u64,
    allow: u8,
    global: bool,
    /// For a device page (no host memory, `allow` 0): the accesses that exit to it.
    device: u8,
    /// The protection key in force on the page, as [`Translation::key`] has it.
    key: u8,
    /// With a key: `allow` (or `device`, for a device page) before the key's rights.
    base: u8,
    /// The page is RAM (`addend` maps it), not a device page.
    ram: bool,
}

const EMPTY: Entry = Entry {
    tag: 0,
    addend: std::ptr::null_mut(),
    gpa_page: 0,
    allow: 0,
    global: false,
    device: 0,
    key: NO_KEY,
    base: 0,
    ram: false,
};

/// Where compiled code finds an entry's fields: the lookup of [`Tlb::lookup`] written
/// out by the translator (`crate::jit`), which must agree with this file's.
pub(crate) mod layout {
    use super::Entry;
    /// log2 of an entry's size: the slot index is scaled by it.
    pub const SHIFT: u32 = 5;
    pub const TAG: i32 = std::mem::offset_of!(Entry, tag) as i32;
    pub const ADDEND: i32 = std::mem::offset_of!(Entry, addend) as i32;
    pub const ALLOW: i32 = std::mem::offset_of!(Entry, allow) as i32;
    /// Slots (a power of two): the hash of [`super::slot`] masked to it.
    pub const SLOTS: u32 = super::ENTRIES as u32;
    /// The multiplier of [`super::slot`]'s hash.
    pub const HASH: u32 = (1 << 20) | (1 << 10) | 1;
    const _: () = assert!(SLOTS == 1 << 10, "the hash takes 10 bits");
    const _: () = assert!(std::mem::size_of::<Entry>() == 1 << SHIFT);
}

/// The TLB of one processor.
#[derive(Debug)]
pub struct Tlb {
    entries: Box<[Entry; ENTRIES]>,
    /// The memory map generation the entries were made under.
    generation: u64,
    /// Bumped by every flush that may change how code blocks found since the last one
    /// are mapped: a code-block link made under an older epoch may map stale.
    epoch: u64,
    /// A code block was found ([`crate::cache::find`]) through a translation that is
    /// not global since the epoch last moved ([`Tlb::code_found`]): a flush of the
    /// non-global translations (MOV CR3) moves it then, and only then.
    nonglobal_code: bool,
    /// Some entry may have a protection key ([`Tlb::rekey`] has work).
    keyed: bool,
}

// SAFETY: the host pointers point into guest RAM regions kept alive by the memory map
// the owning processor holds while it runs; the TLB is flushed whenever that map changes.
unsafe impl Send for Tlb {}

impl Default for Tlb {
    fn default() -> Self {
        Tlb {
            entries: Box::new([EMPTY; ENTRIES]),
            generation: u64::MAX,
            epoch: 0,
            nonglobal_code: false,
            keyed: false,
        }
    }
}

/// The slot of a linear page: hashed, so pages 4 MiB apart (a page table's stride)
/// or 4 GiB apart do not evict each other. The hash is bits 20..29 of the page's low
/// 32 bits times [`layout::HASH`] (2^20 + 2^10 + 1, so the sum of the page shifted
/// right by 0, 10 and 20, with carries): pages one apart differ there by the
/// multiplier's bit 20 plus a carry, 1 or 2 slots, and never share one, which compiled
/// code's lookup relies on to check a page crossing with the tag compare
/// (`jit::emit::translate`); pages 2^10 or 2^20 apart differ by 1 or 2 likewise. One
/// multiply is what compiled code computes (five host instructions to the entry).
#[inline(always)]
fn slot(page: u64) -> usize {
    ((page as u32).wrapping_mul(layout::HASH) >> 20) as usize & (ENTRIES - 1)
}

/// What a fill needs to know beyond the walk.
#[derive(Debug, Clone, Copy)]
pub struct FillRules {
    pub paging: bool,
    pub wp: bool,
    pub smep: bool,
    pub smap: bool,
}

/// The protection-key rights [`Tlb::key_filled`] and [`Tlb::rekey`] apply (SDM vol 3
/// 4.6.2): PKRU for user pages' keys, IA32_PKRS for supervisor pages' (whether a key is
/// in force at all, by CR4.PKE and CR4.PKS, the walk decided: [`Translation::key`]).
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    pub pkru: u32,
    pub pkrs: u32,
    /// CR0.WP: WDi denies supervisor writes only while it is set.
    pub wp: bool,
}

impl Keys {
    /// The grants key `key` (an [`Entry::key`] other than [`NO_KEY`]) takes away.
    #[inline]
    fn denied(&self, key: u8) -> u8 {
        let rights = if key & KEY_USER != 0 {
            self.pkru
        } else {
            self.pkrs
        };
        let rights = (rights >> (2 * u32::from(key & 15))) & 3;
        let mut deny = 0;
        if rights & KEY_AD != 0 {
            deny |= USER_READ | USER_WRITE | SUP_READ | SUP_WRITE;
        }
        if rights & KEY_WD != 0 {
            if key_denies(KEY_WD, Access::Write, true, self.wp) {
                deny |= USER_WRITE;
            }
            if key_denies(KEY_WD, Access::Write, false, self.wp) {
                deny |= SUP_WRITE;
            }
        }
        deny
    }
}

/// The accesses a walk's translation allows through a cached entry, each kind of privilege
/// apart; writes only when `writes` (the leaf is dirty and nothing forbids them).
fn allowed(t: &Translation, rules: FillRules, writes: bool) -> u8 {
    if !rules.paging {
        return USER_READ
            | USER_EXEC
            | SUP_READ
            | SUP_EXEC
            | if writes { USER_WRITE | SUP_WRITE } else { 0 };
    }
    let smap_blocks = rules.smap && t.user;
    let mut a = 0;
    if t.user {
        a |= USER_READ;
        if t.writable && writes {
            a |= USER_WRITE;
        }
        if !t.no_exec {
            a |= USER_EXEC;
        }
    }
    if !smap_blocks {
        a |= SUP_READ;
        if (t.writable || !rules.wp) && writes {
            a |= SUP_WRITE;
        }
    }
    if !(t.no_exec || rules.smep && t.user) {
        a |= SUP_EXEC;
    }
    a
}

impl Tlb {
    /// The entry caching `lin`'s page, if one does.
    #[inline(always)]
    fn entry(&self, lin: u64) -> Option<&Entry> {
        let page = lin >> 12;
        let e = &self.entries[slot(page)];
        (e.tag == page + 1).then_some(e)
    }

    /// Host pointer to the byte at `lin` when an entry allows `need`.
    #[inline(always)]
    pub fn lookup(&self, lin: u64, need: u8) -> Option<*mut u8> {
        // The entry maps the whole 4 KiB page of RAM `lin` is in (allow is 0 for a
        // device page): the result points into it.
        self.entry(lin)
            .filter(|e| e.allow & need != 0)
            .map(|e| e.addend.wrapping_add(lin as usize))
    }

    /// The entries, for compiled code that looks them up itself ([`layout`]). Valid
    /// until the TLB is dropped: flushes rewrite entries in place.
    pub(crate) fn entries_ptr(&self) -> *const Entry {
        self.entries.as_ptr()
    }

    /// The guest physical page of RAM an entry maps `lin` to, if cached.
    #[inline]
    pub fn gpa_page(&self, lin: u64) -> Option<u64> {
        self.entry(lin)
            .filter(|e| e.device == 0)
            .map(|e| e.gpa_page)
    }

    /// The GPA an access that `need`s at `lin` exits with, when `lin`'s page is a cached
    /// device page (wholly unmapped).
    #[inline]
    pub fn device(&self, lin: u64, need: u8) -> Option<u64> {
        self.entry(lin)
            .filter(|e| e.device & need != 0)
            .map(|e| (e.gpa_page << 12) | (lin & 0xfff))
    }

    /// Caches `lin`'s page as a device page (wholly unmapped): the accesses the walk
    /// allows, writes only once the leaf is dirty (as for RAM).
    pub fn fill_device(&mut self, lin: u64, t: &Translation, rules: FillRules) {
        if !canonical(lin) {
            return;
        }
        let page = lin >> 12;
        self.entries[slot(page)] = Entry {
            tag: page + 1,
            addend: std::ptr::null_mut(),
            gpa_page: t.gpa >> 12,
            allow: 0,
            global: t.global,
            device: allowed(t, rules, t.dirty),
            key: NO_KEY,
            base: 0,
            ram: false,
        };
    }

    /// Puts the protection key in force on the page `lin`'s entry was just filled for
    /// (`t.key`, not [`NO_KEY`]) in the entry: it keeps its key and its grants, and
    /// takes away what the key's rights deny. The fills themselves know nothing of
    /// keys: the caller comes here only for a translation with a key in force.
    pub fn key_filled(&mut self, lin: u64, t: &Translation, keys: Keys) {
        let key = t.key;
        let page = lin >> 12;
        let e = &mut self.entries[slot(page)];
        if key == NO_KEY || e.tag != page + 1 {
            return;
        }
        e.key = key;
        let grants = if e.ram { &mut e.allow } else { &mut e.device };
        e.base = *grants;
        *grants = Self::keyed(e.base, key, &keys);
        self.keyed = true;
    }

    /// Grants `base` less what key `key`'s rights deny.
    #[inline]
    fn keyed(base: u8, key: u8, keys: &Keys) -> u8 {
        if key == NO_KEY {
            base
        } else {
            base & !keys.denied(key)
        }
    }

    /// The protection-key rights changed (WRPKRU, WRMSR of IA32_PKRS: SDM vol 3 4.6.2):
    /// every entry with a key takes its grants again from the page tables' and the new
    /// rights. No translation changes, so the epoch stays.
    pub fn rekey(&mut self, keys: Keys) {
        if !self.keyed {
            return;
        }
        for e in self.entries.iter_mut() {
            if e.tag == 0 || e.key == NO_KEY {
                continue;
            }
            let grants = Self::keyed(e.base, e.key, &keys);
            if e.ram {
                e.allow = grants;
            } else {
                e.device = grants;
            }
        }
    }

    /// Caches `lin`'s page: `host` is the page's first byte, `ram_writable` whether the
    /// host lets it be written, `code` whether it holds translated code.
    pub fn fill(
        &mut self,
        lin: u64,
        t: &Translation,
        host: *mut u8,
        ram_writable: bool,
        code: bool,
        rules: FillRules,
    ) {
        if !canonical(lin) {
            return;
        }
        let page = lin >> 12;
        self.entries[slot(page)] = Entry {
            tag: page + 1,
            addend: host.wrapping_sub((page << 12) as usize),
            gpa_page: t.gpa >> 12,
            allow: allowed(t, rules, ram_writable && !code && t.dirty),
            global: t.global,
            device: 0,
            key: NO_KEY,
            base: 0,
            ram: true,
        };
    }

    /// The flush count: part of the code cache's [`crate::cache::stamp`].
    #[inline(always)]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Forgets every entry.
    pub fn flush(&mut self) {
        self.nonglobal_code = false;
        self.flush_entries();
        self.epoch += 1;
    }

    /// Forgets every entry, keeping the epoch: for an invalidation that cannot change
    /// how any code block's bytes are mapped (the caller knows).
    pub fn flush_entries(&mut self) {
        self.entries.fill(EMPTY);
        self.keyed = false;
    }

    /// Forgets every entry but global ones (MOV CR3 with CR4.PGE, SDM vol 3 4.10.4.1).
    /// The epoch moves only when a code block found since it last moved was mapped by
    /// a translation this flush forgets: links between blocks mapped by global ones
    /// stand, as those translations do (Linux's kernel text is global; its `text_poke`
    /// switches CR3 to a temporary mm and back, 18 K writes of CR3 in one boot, each of
    /// which made every link and chain stale).
    pub fn flush_nonglobal(&mut self) {
        if std::mem::take(&mut self.nonglobal_code) {
            self.epoch += 1;
        }
        for e in self.entries.iter_mut() {
            if !e.global {
                *e = EMPTY;
            }
        }
    }

    /// A code block made from the pages at `lin` (and `second`, where its last
    /// instruction crosses into the next page) was found to run: remembers whether a
    /// translation not global, or not cached, maps one of them, so that the next flush
    /// of those moves the epoch ([`Tlb::flush_nonglobal`]).
    pub fn code_found(&mut self, lin: u64, second: Option<u64>) {
        let global = |lin: u64| self.entry(lin).is_some_and(|e| e.global);
        if !global(lin) || second.is_some_and(|l| !global(l)) {
            self.nonglobal_code = true;
        }
    }

    /// Forgets `lin`'s page (INVLPG). Large pages are cached as their 4 KiB granules,
    /// so the caller flushes everything when it cannot tell.
    pub fn flush_page(&mut self, lin: u64) {
        self.epoch += 1;
        let page = lin >> 12;
        let e = &mut self.entries[slot(page)];
        if e.tag == page + 1 {
            *e = EMPTY;
        }
    }

    /// Takes write permission away from entries mapping guest physical page `gpa_page`
    /// (it now holds translated code).
    pub fn protect_code(&mut self, gpa_page: u64) {
        for e in self.entries.iter_mut() {
            if e.tag != 0 && e.gpa_page == gpa_page {
                e.allow &= !(USER_WRITE | SUP_WRITE);
                e.base &= !(USER_WRITE | SUP_WRITE);
            }
        }
    }

    /// Flushes if the memory map changed since the last call.
    pub fn sync_generation(&mut self, generation: u64) {
        if self.generation != generation {
            self.flush();
            self.generation = generation;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slot;

    /// Compiled code checks that an access stays within its page by comparing the tag
    /// of its last byte's page in its first byte's slot (`jit::emit::translate`): sound
    /// only if two pages in a row never share a slot, across every carry of the hash.
    #[test]
    fn pages_in_a_row_never_share_a_slot() {
        let top = (1u64 << 52) - 1;
        for p in (0..1u64 << 21).chain(top - (1 << 21)..top) {
            assert_ne!(slot(p), slot(p + 1), "pages {p:#x} and {:#x}", p + 1);
        }
    }

    /// Pages a page table's reach apart (4 MiB: SDM vol 3 4.5), or a page directory's
    /// (1 GiB) or 4 GiB apart, do not evict each other.
    #[test]
    fn pages_a_page_tables_reach_apart_do_not_share_a_slot() {
        for stride in [1u64 << 10, 1 << 18, 1 << 20] {
            for p in 0..1u64 << 21 {
                let q = p + stride;
                assert_ne!(slot(p), slot(q), "pages {p:#x} and {q:#x}");
            }
        }
    }
}
