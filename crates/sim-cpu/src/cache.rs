//! The code cache: straight-line runs of compiled instructions (blocks), found by RIP
//! through a direct-mapped table, and forgotten when their code changes.
//!
//! A block is made from one page (its last instruction may cross into the next) and
//! ends at a branch, at an instruction that changes how the following ones execute
//! (a mode, the interrupt flag, a control register), or after [`MAX_OPS`] instructions.
//! It is valid while its linear page still maps to the same host memory and its bytes
//! are unchanged:
//! - stores by this processor to a page holding blocks take the TLB's slow path (such
//!   pages are never writable in the TLB), which drops the page's blocks and ends the
//!   block running (self-modifying code, SDM vol 3 8.1.3);
//! - anyone else's writes (the VMM through its buffers, another vCPU) are caught by
//!   comparing a block's bytes once per epoch; the epoch moves at every run and at
//!   serializing instructions, which is when the SDM requires cross-modified code to be
//!   seen (vol 3 8.1.3, "Handling Cross-Modifying Code").

use crate::decode::{compile, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::paging::{Access, Privilege};
use crate::state::CS;
use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};
use std::collections::HashMap;

/// Instructions per block at most.
pub const MAX_OPS: usize = 64;
const SLOTS: usize = 1 << 16;

/// A straight-line run of compiled instructions.
pub struct Block {
    pub ip: u64,
    pub cs_base: u64,
    pub bits: u32,
    /// Linear and guest physical address of the first byte, and its host address.
    pub lin: u64,
    pub gpa: u64,
    pub host: *const u8,
    /// When the last instruction crosses into the next page: that page's linear and
    /// guest physical page addresses.
    pub second: Option<(u64, u64)>,
    /// The bytes the block was made from.
    pub bytes: CodeBytes,
    /// The epoch its bytes were last compared in.
    pub checked: u64,
    pub ops: Box<[Op]>,
    /// Chaining: the RIP the block was last left at, the block found there, and the
    /// link key it was found under (see [`CodeCache::link_key`]).
    /// Two links: a RET or an indirect jump alternates between successors.
    pub links: [std::cell::Cell<Link>; 2],
    /// Whether running the block to its end leaves the stamp (see [`stamp`]) as it
    /// found it: its last instruction is a near branch or ends no block.
    pub keeps_mode: bool,
    /// Its number in the cache while it is in a slot ([`CodeCache::insert`]); 0 once it
    /// left: a link made to it before is stale (see [`Link`]).
    pub serial: u64,
    /// The translator's: how often the block ran, then its compiled code, which goes
    /// with the block (`crate::jit`).
    pub jit: crate::jit::Slot,
}

/// A block found after another: at `ip`, under link key `key` (see
/// [`CodeCache::link_key`]), numbered `serial`. While the key is current, `next` is
/// memory of the cache's (a block evicted by another is kept for reuse, not freed: see
/// [`CodeCache::retire`]), and while its serial is still `serial` it is in its slot and
/// is what a lookup would find.
#[derive(Clone, Copy)]
pub struct Link {
    pub ip: u64,
    pub next: *const Block,
    pub key: u64,
    pub serial: u64,
}

impl Link {
    const NONE_STAMP: Stamp = Stamp {
        cs_base: u64::MAX,
        rest: u64::MAX,
    };
    const NONE: Link = Link {
        ip: u64::MAX,
        next: std::ptr::null(),
        key: 0,
        serial: 0,
    };
}

impl Block {
    /// The linked successor at `ip` under link key `key`, if remembered.
    #[inline(always)]
    pub fn linked(&self, ip: u64, key: u64) -> Option<*const Block> {
        for l in &self.links {
            let l = l.get();
            // SAFETY: under the current key `next` is the cache's memory (see `Link`).
            if l.ip == ip && l.key == key && unsafe { (*l.next).serial } == l.serial {
                return Some(l.next);
            }
        }
        None
    }

    /// Remembers `link`, forgetting the older of the two.
    #[inline]
    pub fn remember(&self, link: Link) {
        self.links[1].set(self.links[0].get());
        self.links[0].set(link);
    }
}

/// What a block found for a RIP depends on beyond the RIP and the blocks cached: the
/// code segment's base and attributes (the code size), the CPL's sources (SS's
/// attributes, CR0.PE, RFLAGS.VM), EFER.LMA and every mapping (the TLB's flush epoch),
/// packed exactly into two words.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    cs_base: u64,
    rest: u64,
}

#[inline(always)]
pub fn stamp(x: &Exec) -> Stamp {
    let c = &x.cpu;
    // Attributes are 16 bits each; CR0.PE bit 32, RFLAGS.VM (bit 17) at 33, LMA at 34;
    // the TLB epoch (a flush count) above them.
    let rest = (c.seg[CS].attributes as u64)
        | (c.seg[crate::state::SS].attributes as u64) << 16
        | (c.cr0 & 1) << 32
        | ((c.flags.bits >> 17) & 1) << 33
        | ((c.efer >> 10) & 1) << 34
        | x.tlb.epoch() << 35;
    Stamp {
        cs_base: c.seg[CS].base,
        rest,
    }
}

// SAFETY: `host` points into guest RAM kept alive by the memory map the processor
// holds while it runs; it is only compared, never dereferenced outside a run.
unsafe impl Send for Block {}

/// The blocks of one processor.
pub struct CodeCache {
    slots: Vec<Option<Box<Block>>>,
    /// Guest physical page -> the slots of blocks made from it.
    pages: HashMap<u64, Vec<u32>>,
    /// Blocks dropped while one of them may be running; at the next lookup freed, or
    /// kept for reuse while links may still point at them ([`CodeCache::retire`]).
    /// Boxed: the run loop holds a pointer to the running block, which must not move.
    #[allow(clippy::vec_box)]
    graveyard: Vec<Box<Block>>,
    /// Blocks evicted by others under the current generation, whose memory a new block
    /// takes.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<Block>>,
    /// The last serial given ([`Block::serial`]).
    serial: u64,
    /// The graveyard holds blocks dropped with a new generation: it and the pool are
    /// freed at the next lookup.
    free: bool,
    /// The 1 GiB regions of linear memory blocks were made from, a bit per hashed
    /// region ([`region_bit`]): an INVLPG elsewhere leaves the links standing.
    code_regions: u64,
    pub epoch: u64,
    /// Bumped whenever blocks are dropped by a write to their code, a change of their
    /// memory or a flush: a link made before may point at one, and their memory goes.
    pub generation: u64,
    /// The current link key, and the generation and stamp it stands for.
    key: u64,
    key_generation: u64,
    key_stamp: Stamp,
    /// Which tier runs the blocks, and what the translator did.
    pub translator: crate::jit::Translator,
}

impl Default for CodeCache {
    fn default() -> Self {
        let mut slots = Vec::with_capacity(SLOTS);
        slots.resize_with(SLOTS, || None);
        CodeCache {
            slots,
            pages: HashMap::new(),
            graveyard: Vec::new(),
            pool: Vec::new(),
            serial: 0,
            free: false,
            code_regions: 0,
            epoch: 1,
            generation: 0,
            key: 1,
            key_generation: 0,
            key_stamp: Link::NONE_STAMP,
            translator: crate::jit::Translator::default(),
        }
    }
}

/// The bit of [`CodeCache::code_regions`] for `lin`'s 1 GiB region (hashed: regions
/// that share a bit count as one).
fn region_bit(lin: u64) -> u64 {
    1 << ((lin >> 30).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
}

#[inline(always)]
fn slot(ip: u64, cs_base: u64) -> usize {
    let k = ip ^ cs_base.rotate_left(17);
    ((k ^ (k >> 14) ^ (k >> 28)) as usize) & (SLOTS - 1)
}

impl CodeCache {
    /// Whether guest physical page `page` (aligned) holds blocks.
    #[inline]
    pub fn holds_page(&self, page: u64) -> bool {
        !self.pages.is_empty() && self.pages.contains_key(&page)
    }

    /// Drops every block made from `page`.
    pub fn invalidate_page(&mut self, page: u64) {
        if let Some(slots) = self.pages.remove(&page) {
            for s in slots {
                self.evict(s as usize, page);
            }
        }
    }

    /// Drops everything.
    pub fn flush(&mut self) {
        for s in 0..self.slots.len() {
            if let Some(b) = self.slots[s].take() {
                self.bury(b);
            }
        }
        self.pages.clear();
        self.code_regions = 0;
    }

    /// The key links are made and followed under now: one number for the cache's
    /// generation and the mode's `stamp` together, new whenever either changes (a key
    /// once left is never current again). Links are then checked with one compare.
    #[inline(always)]
    pub fn link_key(&mut self, stamp: Stamp) -> u64 {
        if self.generation != self.key_generation || stamp != self.key_stamp {
            self.key += 1;
            self.key_generation = self.generation;
            self.key_stamp = stamp;
        }
        self.key
    }

    /// Starts a new epoch: every block's bytes are compared before it runs again.
    pub fn new_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Frees blocks dropped earlier, or keeps them for reuse while links made under the
    /// current generation may point at them; call where no block is running.
    pub fn collect(&mut self) {
        if self.free {
            self.graveyard.clear();
            self.pool.clear();
            self.free = false;
        } else {
            self.pool.append(&mut self.graveyard);
        }
    }

    /// Whether linear address `lin`'s 1 GiB region may hold code blocks were made from
    /// (an INVLPG there may change a block's translation: SDM vol 3 4.10.4.1).
    pub fn may_hold_code(&self, lin: u64) -> bool {
        self.code_regions & region_bit(lin) != 0
    }

    fn forget_pages(&mut self, b: &Block, s: u32, except: u64) {
        let mut pages = [b.gpa & !0xfff, u64::MAX];
        if let Some((_, g)) = b.second {
            pages[1] = g;
        }
        for p in pages {
            if p == except || p == u64::MAX {
                continue;
            }
            if let Some(v) = self.pages.get_mut(&p) {
                v.retain(|&x| x != s);
                if v.is_empty() {
                    self.pages.remove(&p);
                }
            }
        }
    }

    /// Takes the block in slot `s` out, if there is one: its pages forget it (but
    /// `except`, which the caller is dropping whole), and it is buried.
    fn evict(&mut self, s: usize, except: u64) {
        if let Some(b) = self.slots[s].take() {
            self.forget_pages(&b, s as u32, except);
            self.bury(b);
        }
    }

    /// Keeps a block that left its slot until the next [`CodeCache::collect`] (a run may
    /// still be in it), then frees it, and starts a new generation: a link made before
    /// may point at it.
    fn bury(&mut self, mut b: Box<Block>) {
        b.serial = 0;
        self.graveyard.push(b);
        self.generation += 1;
        self.free = true;
    }

    /// Takes out the block in slot `s` for another one to take the slot (the blocks of
    /// a boot outnumber the slots): its serial goes, so links to it are stale, but its
    /// memory stays the cache's, for a new block, so that links need no new generation
    /// (which would make every link stale: one per block of the hot code, each found
    /// again by a lookup).
    fn retire(&mut self, s: usize) {
        if let Some(mut b) = self.slots[s].take() {
            self.forget_pages(&b, s as u32, u64::MAX);
            b.serial = 0;
            self.graveyard.push(b);
        }
    }

    /// `block` in a box: one a retired block left, or a new one.
    fn boxed(&mut self, block: Block) -> Box<Block> {
        match self.pool.pop() {
            Some(mut b) => {
                *b = block;
                b
            }
            None => Box::new(block),
        }
    }

    fn insert(&mut self, s: usize, mut b: Box<Block>, x_tlb: &mut crate::tlb::Tlb) {
        self.retire(s);
        self.serial += 1;
        b.serial = self.serial;
        self.code_regions |= region_bit(b.lin);
        if let Some((lin2, _)) = b.second {
            self.code_regions |= region_bit(lin2);
        }
        let mut pages = vec![b.gpa & !0xfff];
        if let Some((_, g)) = b.second {
            pages.push(g);
        }
        for p in pages {
            let v = self.pages.entry(p).or_default();
            if v.is_empty() {
                // The page now holds code: the TLB must stop granting writes to it.
                x_tlb.protect_code(p);
            }
            v.push(s as u32);
        }
        self.slots[s] = Some(b);
    }
}

/// The block starting at the current CS:RIP, made if needed. The pointer stays valid
/// until the next call (dropped blocks wait in the graveyard).
pub fn find(x: &mut Exec) -> Result<*const Block, Stop> {
    x.cache.collect();
    let ip = x.cpu.rip;
    let cs_base = x.cpu.seg[CS].base;
    let bits = x.cpu.bitness();
    let s = slot(ip, cs_base);
    if let Some(b) = &x.cache.slots[s] {
        if b.ip == ip && b.cs_base == cs_base && b.bits == bits {
            let ptr: *const Block = &**b;
            // SAFETY: the block is alive in its slot; nothing below drops it before the
            // checks finish (a failed check drops it explicitly).
            let b = unsafe { &*ptr };
            if still_valid(x, b)? {
                x.tlb.code_found(b.lin, b.second.map(|(lin, _)| lin));
                return Ok(ptr);
            }
            x.cache.evict(s, u64::MAX);
        }
    }
    let b = build(x, ip, cs_base, bits)?;
    x.tlb.code_found(b.lin, b.second.map(|(lin, _)| lin));
    let ptr: *const Block = &*b;
    let cache = &mut *x.cache;
    cache.insert(s, b, x.tlb);
    Ok(ptr)
}

/// Checks linked block `b` for this epoch as [`find`] would: whether it may run.
///
/// Only its bytes are compared: under the link's key no TLB flush has happened since
/// the block was translated (the key covers the TLB's flush epoch, and a change of the
/// memory map flushes), so its translation is one the processor may still use (SDM vol
/// 3 4.10.4.3: without an invalidation a stale translation may be used). Skipping the
/// lookup matters: it is the first touch of the TLB after JavaScript ran, a cache miss
/// on every exit.
pub fn revalidate(x: &mut Exec, b: *const Block) -> Result<bool, Stop> {
    // SAFETY: the caller found `b` through a link under the current key: it is alive
    // in its slot.
    bytes_checked(x, unsafe { &*b })
}

/// Whether `b` holds the same bytes as its memory, compared once per epoch.
fn bytes_checked(x: &mut Exec, b: &Block) -> Result<bool, Stop> {
    if b.checked != x.cache.epoch {
        if !same_bytes(x, b)? {
            return Ok(false);
        }
        // SAFETY: only the owning processor touches its blocks; `checked` is a plain
        // field of a block alive in the cache.
        unsafe { (*(b as *const Block as *mut Block)).checked = x.cache.epoch };
    }
    Ok(true)
}

/// [`bytes_checked`] for a block within one page, as compiled code going on into it
/// asks (`jit::check_bytes`): whether its bytes are those in memory, now compared in
/// this epoch. False for a block whose bytes cross a page (as one with a `second`
/// page's do: that page is looked up by the run loop), and where they differ: nothing
/// is dropped here, the run loop does that when it looks at the block.
pub fn same_page_bytes_checked(x: &mut Exec, b: &Block) -> bool {
    if (b.lin & 0xfff) as usize + b.bytes.len() > 0x1000 {
        return false;
    }
    matches!(bytes_checked(x, b), Ok(true))
}

/// Whether `b` still maps to the same memory and holds the same bytes; an instruction
/// fetch that now faults is that fault.
fn still_valid(x: &mut Exec, b: &Block) -> Result<bool, Stop> {
    let need = crate::tlb::need(Access::Execute, x.cpu.cpl() == 3);
    let host = match x.tlb.lookup(b.lin, need) {
        Some(p) => p as *const u8,
        None => {
            let who = fetch_privilege(x);
            x.translate(b.lin, Access::Execute, who)?.0 as *const u8
        }
    };
    if host != b.host {
        return Ok(false);
    }
    if let Some((lin2, gpa2)) = b.second {
        let who = fetch_privilege(x);
        x.translate(lin2, Access::Execute, who)?;
        if x.tlb.gpa_page(lin2) != Some(gpa2 >> 12) && page_of(x, lin2)? != gpa2 {
            return Ok(false);
        }
    }
    bytes_checked(x, b)
}

fn page_of(x: &mut Exec, lin: u64) -> Result<u64, Stop> {
    let who = fetch_privilege(x);
    match crate::paging::walk(x.cpu, x.mem, lin, Access::Execute, who, false) {
        Ok(t) => Ok(t.gpa & !0xfff),
        Err(pf) => Err(x.page_fault(pf)),
    }
}

fn same_bytes(x: &mut Exec, b: &Block) -> Result<bool, Stop> {
    let len = b.bytes.len();
    let first = len.min(0x1000 - (b.lin & 0xfff) as usize);
    // SAFETY: `b.host` is the (just re-translated) host address of `first` bytes of RAM
    // in the block's page.
    if !unsafe { b.bytes.prefix_at(b.host, first) } {
        return Ok(false);
    }
    if first < len {
        let who = fetch_privilege(x);
        let (p, left) = x.translate(b.lin.wrapping_add(first as u64), Access::Execute, who)?;
        if left < len - first {
            return Ok(false);
        }
        // SAFETY: `p` starts `left` >= `len - first` bytes of RAM.
        return Ok(unsafe { b.bytes.rest_at(p, first) });
    }
    Ok(true)
}

/// A block's bytes as little-endian 16-byte words (the last one zero-padded), so the
/// comparison with guest memory at every run's blocks is one load and compare a word:
/// no byte loops, no copies to load back (which stall on store forwarding).
pub struct CodeBytes {
    words: Box<[u128]>,
    len: usize,
}

impl CodeBytes {
    fn new(bytes: &[u8]) -> Self {
        let words = bytes
            .chunks(16)
            .map(|c| {
                let mut w = [0u8; 16];
                w[..c.len()].copy_from_slice(c);
                u128::from_le_bytes(w)
            })
            .collect();
        CodeBytes {
            words,
            len: bytes.len(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Byte `i` (below `len`).
    fn byte(&self, i: usize) -> u8 {
        (self.words[i / 16] >> (8 * (i % 16))) as u8
    }

    /// Whether memory at `p` holds the first `n` bytes.
    ///
    /// # Safety
    /// `p` must start `n` readable bytes of RAM (whole pages).
    unsafe fn prefix_at(&self, p: *const u8, n: usize) -> bool {
        let mut k = 0;
        for &w in self.words.iter() {
            if k >= n {
                break;
            }
            let m = (n - k).min(16);
            let want = if m == 16 {
                w
            } else {
                w & ((1u128 << (8 * m)) - 1)
            };
            // SAFETY: `m` bytes from `p + k` are within the caller's `n`.
            if unsafe { hv_core::shared::load16(p.add(k), m) } != want {
                return false;
            }
            k += 16;
        }
        true
    }

    /// Whether memory at `p` holds the bytes from `from` on (a block's part in its
    /// second page: rare, so byte by byte).
    ///
    /// # Safety
    /// `p` must start `len - from` readable bytes of RAM (whole pages).
    unsafe fn rest_at(&self, p: *const u8, from: usize) -> bool {
        (from..self.len).all(|i| {
            // SAFETY: `i - from` is below the caller's `len - from` bytes.
            unsafe { hv_core::shared::load16(p.add(i - from), 1) as u8 == self.byte(i) }
        })
    }
}

/// Instruction fetches are supervisor or user accesses by CPL; SMAP never applies.
fn fetch_privilege(x: &Exec) -> Privilege {
    if x.cpu.cpl() == 3 {
        Privilege::User
    } else {
        Privilege::Supervisor { ac: true }
    }
}

/// Whether the block must end after `ins`: it transfers control, or changes something
/// the following instructions' execution depends on (mode, privilege, paging, the
/// interrupt flag and its shadow, debug state), or is serializing.
fn ends_block(ins: &iced_x86::Instruction) -> bool {
    use Mnemonic as M;
    if ins.flow_control() != FlowControl::Next {
        return true;
    }
    match ins.mnemonic() {
        M::Mov | M::Pop => {
            let r0 = ins.op0_register();
            r0.is_cr() || r0.is_dr() || r0.is_segment_register()
        }
        M::Popf
        | M::Popfd
        | M::Popfq
        | M::Sti
        | M::Cli
        | M::Lmsw
        | M::Clts
        | M::Wrmsr
        | M::Xsetbv
        | M::Invlpg
        | M::Cpuid
        | M::Hlt
        | M::Lss
        | M::Lds
        | M::Les
        | M::Lfs
        | M::Lgs
        | M::Swapgs
        | M::Stac
        | M::Clac
        | M::Ltr
        | M::Lldt
        | M::Lgdt
        | M::Lidt
        | M::Wrfsbase
        | M::Wrgsbase
        | M::Invd
        | M::Wbinvd
        | M::Rsm
        | M::Ud0
        | M::Ud1
        | M::Ud2
        | M::INVALID => true,
        _ => false,
    }
}

/// Whether a block ending with `ins` leaves the mode (the [`stamp`]) as it was: the
/// near transfers change only RIP and RSP; what else [`ends_block`] lists (far
/// transfers, interrupts, mode, segment and paging changes) may change it.
fn keeps_mode(ins: &iced_x86::Instruction) -> bool {
    if !ends_block(ins) {
        return true;
    }
    match ins.flow_control() {
        FlowControl::ConditionalBranch => {
            ins.is_jcc_short_or_near() || ins.is_loop() || ins.is_loopcc() || is_jrcxz(ins)
        }
        FlowControl::UnconditionalBranch => ins.is_jmp_short_or_near(),
        FlowControl::IndirectBranch => ins.is_jmp_near_indirect(),
        FlowControl::Call => ins.is_call_near(),
        FlowControl::IndirectCall => ins.is_call_near_indirect(),
        FlowControl::Return => ins.mnemonic() == Mnemonic::Ret,
        _ => false,
    }
}

fn is_jrcxz(ins: &iced_x86::Instruction) -> bool {
    matches!(
        ins.mnemonic(),
        Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz
    )
}

/// Makes the block at `ip`: decodes from its page until a block end.
fn build(x: &mut Exec, ip: u64, cs_base: u64, bits: u32) -> Result<Box<Block>, Stop> {
    let lin = if bits == 64 {
        ip
    } else {
        cs_base.wrapping_add(ip) & 0xffff_ffff
    };
    // CS limit (legacy modes): fetching past it is #GP(0) (SDM vol 3 5.3).
    let limit = if bits == 64 {
        u64::MAX
    } else {
        x.cpu.seg[CS].limit as u64
    };
    if ip > limit {
        return Err(x.gp(0));
    }
    if bits == 64 && !crate::paging::canonical(ip) {
        return Err(x.gp(0));
    }
    let who = fetch_privilege(x);
    let (host, left) = x.translate(lin, Access::Execute, who)?;
    let gpa = {
        let t = crate::paging::walk(x.cpu, x.mem, lin, Access::Execute, who, false)
            .map_err(|pf| x.page_fault(pf))?;
        t.gpa
    };
    // Bytes of this page (at most what MAX_OPS instructions could need), then up to
    // 15 of the next page when it can be fetched.
    let in_page = left.min(MAX_OPS * 15);
    let mut buf = vec![0u8; in_page + 15];
    // SAFETY: `host` starts `left` >= `in_page` bytes of plain RAM.
    unsafe { hv_core::shared::copy_from(host, &mut buf[..in_page]) };
    let mut available = in_page;
    let mut next_page: Option<Result<(u64, u64), Stop>> = None;
    if left == 0x1000 - (lin & 0xfff) as usize && in_page == left {
        let lin2 = lin.wrapping_add(left as u64);
        let lin2 = if bits == 64 { lin2 } else { lin2 & 0xffff_ffff };
        next_page = Some(match x.translate(lin2, Access::Execute, who) {
            Ok((p2, left2)) => {
                let n = left2.min(15);
                // SAFETY: `p2` starts `left2` >= `n` bytes of plain RAM.
                unsafe { hv_core::shared::copy_from(p2, &mut buf[in_page..in_page + n]) };
                available += n;
                let g2 = crate::paging::walk(x.cpu, x.mem, lin2, Access::Execute, who, false)
                    .map(|t| t.gpa & !0xfff)
                    .unwrap_or(u64::MAX);
                Ok((lin2, g2))
            }
            Err(e) => Err(e),
        });
    }
    let mut decoder = Decoder::with_ip(bits, &buf[..available], ip, DecoderOptions::NONE);
    let mut ops = Vec::new();
    let mut used = 0usize;
    let mut second = None;
    let mut ins = iced_x86::Instruction::default();
    let mut keeps = true;
    while ops.len() < MAX_OPS && used < in_page {
        decoder.decode_out(&mut ins);
        let len = ins.len();
        let start = used;
        if ins.is_invalid() && decoder.last_error() == iced_x86::DecoderError::NoMoreBytes {
            // The instruction needs bytes of the next page, which cannot be fetched.
            if ops.is_empty() {
                if let Some(Err(stop)) = next_page {
                    // Restore the fault details the translation set.
                    return Err(stop);
                }
                return Err(x.gp(0));
            }
            break;
        }
        let len = if ins.is_invalid() { len.max(1) } else { len };
        // The instruction's last byte must be inside CS's limit.
        if bits != 64 && ins.ip().wrapping_add(len as u64 - 1) > limit {
            if ops.is_empty() {
                return Err(x.gp(0));
            }
            break;
        }
        used = start + len;
        let crosses = used > in_page;
        if crosses {
            match &next_page {
                Some(Ok((lin2, g2))) => second = Some((*lin2, *g2)),
                _ => {
                    if ops.is_empty() {
                        if let Some(Err(stop)) = next_page {
                            return Err(stop);
                        }
                        return Err(x.gp(0));
                    }
                    used = start;
                    break;
                }
            }
        }
        let op = compile(&ins, bits);
        let end = ends_block(&ins) || ins.is_invalid();
        keeps = !ins.is_invalid() && keeps_mode(&ins);
        ops.push(op);
        if end || crosses || decoder.position() >= in_page {
            break;
        }
    }
    let bytes = CodeBytes::new(&buf[..used]);
    Ok(x.cache.boxed(Block {
        ip,
        cs_base,
        bits,
        lin,
        gpa,
        host,
        second,
        bytes,
        checked: x.cache.epoch,
        ops: ops.into_boxed_slice(),
        links: [
            std::cell::Cell::new(Link::NONE),
            std::cell::Cell::new(Link::NONE),
        ],
        keeps_mode: keeps,
        serial: 0,
        jit: crate::jit::Slot::default(),
    }))
}
