//! Instruction fetch and a direct-mapped cache of decoded instructions.
//!
//! An entry is keyed by RIP, linear address and code size and keeps the instruction's
//! bytes; a hit is only taken when those bytes still match guest memory, so
//! self-modifying code and VMM writes to guest code are always seen.

use crate::access::Ctx;
use crate::cpu::CS;
use crate::mmu::{Access, Translated};
use crate::stop::Stop;
use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

const ENTRIES: usize = 1 << 14;

#[derive(Clone, Copy)]
struct Entry {
    rip: u64,
    lin: u64,
    bits: u32,
    len: u8,
    /// The instruction's bytes, zero beyond `len`, and the mask that selects them.
    bytes: u128,
    mask: u128,
    ins: Instruction,
}

/// A fetched instruction and the bytes at its address (for exit messages).
#[derive(Clone, Copy, Debug)]
pub struct Fetched {
    pub ins: Instruction,
    pub bytes: [u8; 16],
    /// Bytes available from RIP (up to 16), for the message's instruction bytes.
    pub available: u8,
}

pub struct DecodeCache {
    entries: Vec<Option<Entry>>,
}

impl Default for DecodeCache {
    fn default() -> Self {
        DecodeCache {
            entries: vec![None; ENTRIES],
        }
    }
}

#[inline]
fn slot(lin: u64) -> usize {
    ((lin ^ (lin >> 14)) as usize) & (ENTRIES - 1)
}

/// Up to 16 bytes from `lin`, crossing into the next page when it is RAM.
struct Window {
    bytes: [u8; 16],
    available: usize,
    /// Why the bytes stop short of 16, when the next page is not RAM.
    next_page_stop: Option<Stop>,
}

fn window(ctx: &mut Ctx<'_>, first: *const u8, in_page: usize, lin: u64) -> Window {
    let n1 = in_page.min(16);
    // SAFETY: `first` points at plain RAM with `in_page` >= `n1` bytes left, in a
    // whole mapped page.
    let bytes = unsafe { hv_core::shared::load16(first, n1) }.to_le_bytes();
    let mut w = Window {
        bytes,
        available: n1,
        next_page_stop: None,
    };
    if n1 < 16 {
        let next = lin.wrapping_add(n1 as u64);
        match ctx.tlb.translate(ctx.cpu, ctx.mem, next, Access::Execute) {
            Ok(Translated::Ram { host, left, .. }) => {
                let n2 = left.min(16 - n1);
                // SAFETY: `host` starts `left` >= `n2` bytes of plain RAM in a mapped page.
                let more = unsafe { hv_core::shared::load16(host, n2) };
                let joined = u128::from_le_bytes(w.bytes) | more << (8 * n1);
                w.bytes = joined.to_le_bytes();
                w.available = n1 + n2;
            }
            Ok(Translated::Mmio { gpa, intercepted }) => {
                w.next_page_stop = Some(Stop::Mmio {
                    gpa,
                    gva: next,
                    access: Access::Execute,
                    intercepted,
                })
            }
            Err(pf) => w.next_page_stop = Some(Stop::PageFault(pf)),
        }
    }
    w
}

impl DecodeCache {
    /// Fetches and decodes the instruction at CS:RIP; returns its slot, read with
    /// [`DecodeCache::instruction`]. The hot path copies nothing.
    #[inline]
    pub fn fetch(&mut self, ctx: &mut Ctx<'_>) -> Result<usize, Stop> {
        let bits = ctx.cpu.bitness();
        let rip = ctx.cpu.rip;
        let lin = ctx.linear(CS, rip);
        let (first, in_page) = code_page(ctx, lin)?;
        let i = slot(lin);
        if let Some(e) = &self.entries[i] {
            if e.rip == rip && e.lin == lin && e.bits == bits && (e.len as usize) <= in_page {
                let same = if in_page >= 16 {
                    // SAFETY: 16 bytes from `first` lie inside its RAM page.
                    let now = unsafe { std::ptr::read_unaligned(first as *const u128) };
                    (u128::from_le(now) & e.mask) == e.bytes
                } else {
                    // SAFETY: `first` points at RAM with `in_page` >= `len` bytes left.
                    let now = unsafe { std::slice::from_raw_parts(first, e.len as usize) };
                    now == &e.bytes.to_le_bytes()[..e.len as usize]
                };
                if same {
                    return Ok(i);
                }
            }
        }
        self.decode(ctx, first, in_page, lin, rip, bits, i)
    }

    /// The instruction in slot `i`, as returned by [`DecodeCache::fetch`].
    #[inline]
    pub fn instruction(&self, i: usize) -> &Instruction {
        match &self.entries[i] {
            Some(e) => &e.ins,
            None => unreachable!("fetch returns filled slots only"),
        }
    }

    /// The instruction in slot `i` with the bytes now at its address, for a stop.
    pub fn capture(&self, ctx: &mut Ctx<'_>, i: usize) -> Option<Fetched> {
        let e = self.entries[i].as_ref()?;
        let mut f = Fetched {
            ins: e.ins,
            bytes: e.bytes.to_le_bytes(),
            available: e.len,
        };
        if let Ok((first, in_page)) = code_page(ctx, e.lin) {
            let w = window(ctx, first, in_page, e.lin);
            f.bytes = w.bytes;
            f.available = w.available as u8;
        }
        Some(f)
    }

    #[allow(clippy::too_many_arguments)]
    #[cold]
    fn decode(
        &mut self,
        ctx: &mut Ctx<'_>,
        first: *mut u8,
        in_page: usize,
        lin: u64,
        rip: u64,
        bits: u32,
        i: usize,
    ) -> Result<usize, Stop> {
        let w = window(ctx, first, in_page, lin);
        let mut decoder = Decoder::with_ip(
            bits,
            &w.bytes[..w.available.min(15)],
            rip,
            DecoderOptions::NONE,
        );
        let ins = decoder.decode();
        if ins.is_invalid() {
            if decoder.last_error() == DecoderError::NoMoreBytes {
                if let Some(stop) = w.next_page_stop {
                    return Err(stop);
                }
            }
            return Err(Stop::ud());
        }
        let mask = u128::MAX >> (128 - 8 * ins.len());
        self.entries[i] = Some(Entry {
            rip,
            lin,
            bits,
            len: ins.len() as u8,
            bytes: u128::from_le_bytes(w.bytes) & mask,
            mask,
            ins,
        });
        Ok(i)
    }
}

/// The host address of the code byte at `lin` and the plain RAM bytes from it in its
/// page, or the stop fetching it causes.
#[inline]
fn code_page(ctx: &mut Ctx<'_>, lin: u64) -> Result<(*mut u8, usize), Stop> {
    match ctx.tlb.translate(ctx.cpu, ctx.mem, lin, Access::Execute)? {
        Translated::Ram { host, left, .. } => Ok((host, left)),
        Translated::Mmio { gpa, intercepted } => Err(Stop::Mmio {
            gpa,
            gva: lin,
            access: Access::Execute,
            intercepted,
        }),
    }
}
