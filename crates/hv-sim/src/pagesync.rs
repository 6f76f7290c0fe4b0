//! The register page as the hypervisor keeps it: filled and marked valid at each
//! intercept; dirty classes applied to the VP at resume, then cleared.

use hv_core::page::*;
use hv_core::RegisterPagePtr;
use sim_cpu::{Cpu, Segment};

fn write_segment(p: &RegisterPagePtr, i: usize, s: &Segment) {
    let at = SEGMENTS + i * SEGMENT_SIZE;
    p.write_u64(at + SEGMENT_BASE, s.base);
    p.write_u64(
        at + SEGMENT_LIMIT,
        s.limit as u64 | (s.selector as u64) << 32 | (s.attributes as u64) << 48,
    );
}

fn read_segment(p: &RegisterPagePtr, i: usize) -> Segment {
    let at = SEGMENTS + i * SEGMENT_SIZE;
    let w = p.read_u64(at + SEGMENT_LIMIT);
    Segment {
        base: p.read_u64(at + SEGMENT_BASE),
        limit: w as u32,
        selector: (w >> 32) as u16,
        attributes: (w >> 48) as u16,
    }
}

/// Writes the VP state to the page and marks it valid, with no dirty class; `cr8` is
/// the local APIC's TPR[7:4] (CR8 is that register, SDM vol 3 11.8.6).
pub fn fill(p: &RegisterPagePtr, cpu: &Cpu, cr8: u64) {
    p.write_u8(VERSION, 1);
    for (i, v) in cpu.gpr.iter().enumerate() {
        p.write_u64(GP_REGISTERS + i * 8, *v);
    }
    p.write_u64(RIP, cpu.rip);
    p.write_u64(RFLAGS, cpu.rflags());
    for i in 0..XMM_COUNT {
        p.write_u64(XMM + i * XMM_SIZE, cpu.xmm[i] as u64);
        p.write_u64(XMM + i * XMM_SIZE + 8, (cpu.xmm[i] >> 64) as u64);
    }
    for (i, s) in cpu.seg.iter().enumerate() {
        write_segment(p, i, s);
    }
    p.write_u64(CR0, cpu.cr0);
    p.write_u64(CR3, cpu.cr3);
    p.write_u64(CR4, cpu.cr4);
    p.write_u64(CR8, cr8);
    p.write_u64(EFER, cpu.efer);
    p.write_u64(DR7, cpu.dr[7]);
    p.write_u32(DIRTY, 0);
    p.write_u8(ISVALID, 1);
}

/// Applies the dirty classes to the VP and clears them. Returns whether segments changed
/// (the caller must then flush cached translations).
pub fn apply_dirty(p: &RegisterPagePtr, cpu: &mut Cpu) -> bool {
    let dirty = p.dirty();
    if dirty & DIRTY_GENERAL != 0 {
        for (i, v) in cpu.gpr.iter_mut().enumerate() {
            *v = p.read_u64(GP_REGISTERS + i * 8);
        }
    }
    if dirty & DIRTY_IP != 0 {
        cpu.rip = p.read_u64(RIP);
    }
    if dirty & DIRTY_FLAGS != 0 {
        cpu.set_rflags(p.read_u64(RFLAGS));
    }
    if dirty & DIRTY_XMM != 0 {
        for i in 0..XMM_COUNT {
            let lo = p.read_u64(XMM + i * XMM_SIZE) as u128;
            let hi = p.read_u64(XMM + i * XMM_SIZE + 8) as u128;
            cpu.xmm[i] = lo | hi << 64;
        }
    }
    if dirty & DIRTY_SEGMENT != 0 {
        for (i, s) in cpu.seg.iter_mut().enumerate() {
            *s = read_segment(p, i);
        }
    }
    p.write_u32(DIRTY, 0);
    dirty & DIRTY_SEGMENT != 0
}
