//! Accessors for memory shared with another party that writes it concurrently: guest
//! RAM (vCPU threads and JavaScript), the register page (the hypervisor and
//! JavaScript) and the exit message buffer.
//!
//! Rust's rules make a plain copy of memory another thread writes at the same time a
//! data race, which the compiler may exploit (a value read once may be read again and
//! differ). As rust-vmm's `vm-memory` does, every access here is volatile: aligned
//! scalars in one access of their width, everything else byte by byte or in aligned
//! words. No `&`/`&mut` reference to shared memory is ever made.

use std::ptr;

/// Reads `N` bytes at `p` as a little-endian value, in one access when `p` is aligned.
///
/// # Safety
/// `p` must point to `size` readable bytes (1, 2, 4 or 8).
#[inline]
pub unsafe fn load(p: *const u8, size: usize) -> u64 {
    debug_assert!(matches!(size, 1 | 2 | 4 | 8));
    // SAFETY: the caller guarantees `size` readable bytes; each branch reads an aligned
    // value of exactly that width, or single bytes.
    unsafe {
        match size {
            1 => ptr::read_volatile(p) as u64,
            2 if p.cast::<u16>().is_aligned() => {
                u16::from_le(ptr::read_volatile(p.cast::<u16>())) as u64
            }
            4 if p.cast::<u32>().is_aligned() => {
                u32::from_le(ptr::read_volatile(p.cast::<u32>())) as u64
            }
            8 if p.cast::<u64>().is_aligned() => u64::from_le(ptr::read_volatile(p.cast::<u64>())),
            _ => {
                let mut v = 0u64;
                for k in 0..size.min(8) {
                    v |= (ptr::read_volatile(p.add(k)) as u64) << (8 * k);
                }
                v
            }
        }
    }
}

/// Writes the low `size` bytes of `v` at `p`, little-endian, in one access when aligned.
///
/// # Safety
/// `p` must point to `size` writable bytes (1, 2, 4 or 8).
#[inline]
pub unsafe fn store(p: *mut u8, size: usize, v: u64) {
    debug_assert!(matches!(size, 1 | 2 | 4 | 8));
    // SAFETY: as for `load`.
    unsafe {
        match size {
            1 => ptr::write_volatile(p, v as u8),
            2 if p.cast::<u16>().is_aligned() => {
                ptr::write_volatile(p.cast::<u16>(), (v as u16).to_le())
            }
            4 if p.cast::<u32>().is_aligned() => {
                ptr::write_volatile(p.cast::<u32>(), (v as u32).to_le())
            }
            8 if p.cast::<u64>().is_aligned() => ptr::write_volatile(p.cast::<u64>(), v.to_le()),
            _ => {
                for k in 0..size.min(8) {
                    ptr::write_volatile(p.add(k), (v >> (8 * k)) as u8);
                }
            }
        }
    }
}

/// Copies `out.len()` bytes from shared memory at `src`.
///
/// # Safety
/// `src` must point to `out.len()` readable bytes that do not overlap `out`.
pub unsafe fn copy_from(src: *const u8, out: &mut [u8]) {
    let mut i = 0;
    // SAFETY: every access stays below `out.len()` bytes from `src`.
    unsafe {
        while i < out.len() && !src.add(i).cast::<u64>().is_aligned() {
            out[i] = ptr::read_volatile(src.add(i));
            i += 1;
        }
        while i + 8 <= out.len() {
            let w = ptr::read_volatile(src.add(i).cast::<u64>());
            out[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        }
        while i < out.len() {
            out[i] = ptr::read_volatile(src.add(i));
            i += 1;
        }
    }
}

/// Reads `len` (at most 16) bytes from shared memory at `src` as a little-endian u128,
/// zero beyond `len`, with at most three aligned volatile u64 reads: instruction fetch
/// takes 16 bytes per exit, and a byte loop (or a variable-length copy) there costs
/// more than the rest of the fetch.
///
/// # Safety
/// The 8-byte-aligned words that hold `src .. src + len` must be readable: true of
/// every mapping here, which are whole pages (an aligned word never crosses a page).
#[inline]
pub unsafe fn load16(src: *const u8, len: usize) -> u128 {
    debug_assert!(len <= 16);
    if len == 0 {
        return 0;
    }
    let start = (src as usize & !7) as *const u64;
    let skip = (src as usize & 7) as u32 * 8;
    let count = (src as usize & 7) + len;
    // SAFETY: each aligned word read holds a byte of the range (the caller's contract).
    let word = |k: usize| unsafe { u64::from_le(ptr::read_volatile(start.add(k))) } as u128;
    let low = word(0) | if count > 8 { word(1) << 64 } else { 0 };
    let mut v = low >> skip;
    if count > 16 {
        // skip > 0 here: the third word supplies the top `skip` bits.
        v |= word(2) << (128 - skip);
    }
    if len < 16 {
        v &= (1u128 << (8 * len)) - 1;
    }
    v
}

/// Copies `data` into shared memory at `dst`.
///
/// # Safety
/// `dst` must point to `data.len()` writable bytes that do not overlap `data`.
pub unsafe fn copy_to(dst: *mut u8, data: &[u8]) {
    let mut i = 0;
    // SAFETY: every access stays below `data.len()` bytes from `dst`.
    unsafe {
        while i < data.len() && !dst.add(i).cast::<u64>().is_aligned() {
            ptr::write_volatile(dst.add(i), data[i]);
            i += 1;
        }
        while i + 8 <= data.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[i..i + 8]);
            ptr::write_volatile(dst.add(i).cast::<u64>(), u64::from_ne_bytes(w));
            i += 8;
        }
        while i < data.len() {
            ptr::write_volatile(dst.add(i), data[i]);
            i += 1;
        }
    }
}

/// Copies `len` bytes between two places in shared memory, as `memmove` would (the
/// ranges may overlap; the copy runs in the direction that reads each byte before it
/// is overwritten).
///
/// # Safety
/// `src` and `dst` must each point to `len` accessible bytes.
pub unsafe fn copy_within(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: every access stays below `len` bytes from `src` and `dst`.
    unsafe {
        if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + len {
            for k in 0..len {
                ptr::write_volatile(dst.add(k), ptr::read_volatile(src.add(k)));
            }
        } else {
            for k in (0..len).rev() {
                ptr::write_volatile(dst.add(k), ptr::read_volatile(src.add(k)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_stores_every_width_at_every_alignment() {
        let mut buf = [0u8; 32];
        for size in [1usize, 2, 4, 8] {
            for off in 0..8 {
                buf.fill(0xee);
                let v = 0x0807_0605_0403_0201u64 & (u64::MAX >> (64 - 8 * size));
                // SAFETY: `off + size` <= 16 < 32.
                unsafe { store(buf.as_mut_ptr().add(off), size, v) };
                assert_eq!(&buf[off..off + size], &v.to_le_bytes()[..size]);
                assert_eq!(buf[off + size], 0xee, "nothing past the value");
                // SAFETY: as above.
                assert_eq!(unsafe { load(buf.as_ptr().add(off), size) }, v);
            }
        }
    }

    #[test]
    fn copies_match_plain_copies_at_every_alignment_and_overlap() {
        let src: Vec<u8> = (0..64).collect();
        for off in 0..8 {
            for len in [0, 1, 7, 8, 9, 31] {
                let mut out = vec![0u8; len];
                // SAFETY: `off + len` <= 39 < 64.
                unsafe { copy_from(src.as_ptr().add(off), &mut out) };
                assert_eq!(out, &src[off..off + len]);
                let mut dst = vec![0u8; 64];
                // SAFETY: as above.
                unsafe { copy_to(dst.as_mut_ptr().add(off), &src[..len]) };
                assert_eq!(&dst[off..off + len], &src[..len]);
            }
        }
        // An aligned base, so the words around every range lie inside `src`.
        let base = src.as_ptr().wrapping_add(src.as_ptr().align_offset(8));
        let at = base as usize - src.as_ptr() as usize;
        for off in 0..8 {
            for len in 0..=16 {
                // SAFETY: the words holding `at + off .. + len` (< at + 24) lie inside `src`.
                let v = unsafe { load16(base.add(off), len) };
                let mut want = [0u8; 16];
                want[..len].copy_from_slice(&src[at + off..at + off + len]);
                assert_eq!(v, u128::from_le_bytes(want), "load16 at {off}, {len} bytes");
            }
        }
        for (from, to) in [(0usize, 3usize), (3, 0), (0, 0)] {
            let mut a: Vec<u8> = (0..16).collect();
            let mut b = a.clone();
            b.copy_within(from..from + 10, to);
            let p = a.as_mut_ptr();
            // SAFETY: both ranges lie inside `a`.
            unsafe { copy_within(p.add(from), p.add(to), 10) };
            assert_eq!(a, b, "from {from} to {to}");
        }
    }
}
