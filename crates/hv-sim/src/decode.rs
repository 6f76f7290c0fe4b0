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
    bytes: [u8; 16],
    ins: Instruction,
}

/// A fetched instruction and the bytes it was decoded from (for exit messages).
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

impl DecodeCache {
    /// Fetches and decodes the instruction at CS:RIP.
    #[inline]
    pub fn fetch(&mut self, ctx: &mut Ctx<'_>) -> Result<Fetched, Stop> {
        let bits = ctx.cpu.bitness();
        let rip = ctx.cpu.rip;
        let lin = ctx.linear(CS, rip);
        let first = match ctx.tlb.translate(ctx.cpu, ctx.mem, lin, Access::Execute)? {
            Translated::Ram(p, _) => p,
            Translated::Mmio { gpa, intercepted } => {
                return Err(Stop::Mmio {
                    gpa,
                    gva: lin,
                    access: Access::Execute,
                    intercepted,
                })
            }
        };
        let in_page = (4096 - (lin & 0xfff)) as usize;
        let i = slot(lin);
        if let Some(e) = &self.entries[i] {
            if e.rip == rip && e.lin == lin && e.bits == bits && (e.len as usize) <= in_page {
                // SAFETY: `first` points at RAM with `in_page` bytes left in its page.
                let now = unsafe { std::slice::from_raw_parts(first, e.len as usize) };
                if now == &e.bytes[..e.len as usize] {
                    let mut bytes = e.bytes;
                    let available = in_page.min(16);
                    // SAFETY: as above; `available` bytes are inside the page.
                    unsafe { std::ptr::copy_nonoverlapping(first, bytes.as_mut_ptr(), available) };
                    return Ok(Fetched {
                        ins: e.ins,
                        bytes,
                        available: available as u8,
                    });
                }
            }
        }
        self.fetch_slow(ctx, first, in_page, lin, rip, bits, i)
    }

    #[allow(clippy::too_many_arguments)]
    #[cold]
    fn fetch_slow(
        &mut self,
        ctx: &mut Ctx<'_>,
        first: *mut u8,
        in_page: usize,
        lin: u64,
        rip: u64,
        bits: u32,
        i: usize,
    ) -> Result<Fetched, Stop> {
        let mut bytes = [0u8; 16];
        let n1 = in_page.min(16);
        // SAFETY: `first` points at RAM with `in_page` >= `n1` bytes left in its page.
        unsafe { std::ptr::copy_nonoverlapping(first, bytes.as_mut_ptr(), n1) };
        let mut available = n1;
        let mut next_page_stop = None;
        if n1 < 16 {
            let next = lin.wrapping_add(n1 as u64);
            match ctx.tlb.translate(ctx.cpu, ctx.mem, next, Access::Execute) {
                Ok(Translated::Ram(p, _)) => {
                    // SAFETY: `p` is the start of a RAM page of 4096 bytes.
                    unsafe {
                        std::ptr::copy_nonoverlapping(p, bytes.as_mut_ptr().add(n1), 16 - n1)
                    };
                    available = 16;
                }
                Ok(Translated::Mmio { gpa, intercepted }) => {
                    next_page_stop = Some(Stop::Mmio {
                        gpa,
                        gva: next,
                        access: Access::Execute,
                        intercepted,
                    })
                }
                Err(pf) => next_page_stop = Some(Stop::PageFault(pf)),
            }
        }
        let mut decoder =
            Decoder::with_ip(bits, &bytes[..available.min(15)], rip, DecoderOptions::NONE);
        let ins = decoder.decode();
        if ins.is_invalid() {
            if decoder.last_error() == DecoderError::NoMoreBytes {
                if let Some(stop) = next_page_stop {
                    return Err(stop);
                }
            }
            return Err(Stop::ud());
        }
        self.entries[i] = Some(Entry {
            rip,
            lin,
            bits,
            len: ins.len() as u8,
            bytes,
            ins,
        });
        Ok(Fetched {
            ins,
            bytes,
            available: available as u8,
        })
    }
}
