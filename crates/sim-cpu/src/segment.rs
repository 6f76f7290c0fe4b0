//! Segmentation: descriptors, segment-register loads with every check and fault of
//! SDM vol 3 chapter 5 and vol 2 (MOV/POP Sreg, LDS..LSS), and far JMP, CALL and RET
//! through code segments, call gates, task gates and TSSs.

use crate::exec::Exec;
use crate::fault::{selector_error, Stop, GP, NP, SS as SS_VECTOR, TS};
use crate::flags::{mask, VM};
use crate::state::*;
use crate::task::{self, TaskSwitch};

/// A segment descriptor as it sits in the GDT or LDT (the high half only for 16-byte
/// system descriptors in long mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub low: u64,
    pub high: u64,
}

pub const TYPE_LDT: u16 = 2;
pub const TYPE_TSS16_AVAILABLE: u16 = 1;
pub const TYPE_TSS16_BUSY: u16 = 3;
pub const TYPE_CALL_GATE16: u16 = 4;
pub const TYPE_TASK_GATE: u16 = 5;
pub const TYPE_INT_GATE16: u16 = 6;
pub const TYPE_TRAP_GATE16: u16 = 7;
pub const TYPE_TSS32_AVAILABLE: u16 = 9;
pub const TYPE_TSS32_BUSY: u16 = 11;
pub const TYPE_CALL_GATE32: u16 = 12;
pub const TYPE_INT_GATE32: u16 = 14;
pub const TYPE_TRAP_GATE32: u16 = 15;

impl Descriptor {
    /// The `hv_x64_segment_register` attributes: the access byte and the flags nibble.
    pub fn attributes(&self) -> u16 {
        (((self.low >> 40) & 0xff) | ((self.low >> 52) & 0xf) << 12) as u16
    }
    pub fn base(&self) -> u64 {
        ((self.low >> 16) & 0xff_ffff) | ((self.low >> 56) & 0xff) << 24
    }
    /// The base with bits 63:32 from the high half (system descriptors in long mode).
    pub fn base64(&self) -> u64 {
        self.base() | (self.high & 0xffff_ffff) << 32
    }
    /// The limit in bytes (scaled by G).
    pub fn limit(&self) -> u32 {
        let raw = ((self.low & 0xffff) | ((self.low >> 48) & 0xf) << 16) as u32;
        if self.low & (1 << 55) != 0 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }
    pub fn present(&self) -> bool {
        self.low & (1 << 47) != 0
    }
    pub fn dpl(&self) -> u8 {
        ((self.low >> 45) & 3) as u8
    }
    /// The 4-bit type.
    pub fn kind(&self) -> u16 {
        ((self.low >> 40) & 0xf) as u16
    }
    /// S: a code or data segment (not a system descriptor).
    pub fn code_or_data(&self) -> bool {
        self.low & (1 << 44) != 0
    }
    pub fn is_code(&self) -> bool {
        self.code_or_data() && self.kind() & 8 != 0
    }
    pub fn conforming(&self) -> bool {
        self.is_code() && self.kind() & 4 != 0
    }
    pub fn readable_code(&self) -> bool {
        self.is_code() && self.kind() & 2 != 0
    }
    pub fn writable_data(&self) -> bool {
        self.code_or_data() && !self.is_code() && self.kind() & 2 != 0
    }
    /// A gate's selector and offset (the offset's high half from `high` in long mode).
    pub fn gate_selector(&self) -> u16 {
        (self.low >> 16) as u16
    }
    pub fn gate_offset(&self, long: bool) -> u64 {
        let low = (self.low & 0xffff) | ((self.low >> 48) & 0xffff) << 16;
        if long {
            low | (self.high & 0xffff_ffff) << 32
        } else {
            low
        }
    }
    /// A call gate's parameter count.
    pub fn gate_params(&self) -> u64 {
        (self.low >> 32) & 0x1f
    }
    /// The segment-register cache this descriptor loads for `selector`.
    pub fn segment(&self, selector: u16) -> Segment {
        Segment {
            base: self.base(),
            limit: self.limit(),
            selector,
            attributes: self.attributes(),
        }
    }
}

/// Where a selector's descriptor is: its linear address, or the fault of reaching it
/// (beyond the table's limit, or an LDT selector with no usable LDT: #GP(selector), or
/// the given vector).
pub fn descriptor_address(x: &mut Exec, selector: u16, size: u64, vector: u8) -> Result<u64, Stop> {
    let (base, limit, usable) = if selector & 4 != 0 {
        let l = x.cpu.ldtr;
        (l.base, l.limit as u64, l.present() && l.selector & !3 != 0)
    } else {
        (x.cpu.gdtr.base, x.cpu.gdtr.limit as u64, true)
    };
    let index = (selector & !7) as u64;
    if !usable || index + size - 1 > limit {
        return Err(x.raise(vector, Some(selector_error(selector))));
    }
    Ok(base.wrapping_add(index))
}

/// Reads the descriptor of `selector` (16 bytes if `wide`); out of the table is
/// #GP(selector) (or `vector`).
pub fn read_descriptor(
    x: &mut Exec,
    selector: u16,
    wide: bool,
    vector: u8,
) -> Result<(Descriptor, u64), Stop> {
    let at = descriptor_address(x, selector, if wide { 16 } else { 8 }, vector)?;
    let at = if x.cpu.long_mode_active() {
        at
    } else {
        at & 0xffff_ffff
    };
    let low = x.read_system(at, 8)?;
    let high = if wide {
        x.read_system(at.wrapping_add(8), 8)?
    } else {
        0
    };
    Ok((Descriptor { low, high }, at))
}

/// Sets a descriptor's accessed bit in memory, as the processor does when it loads it.
pub fn set_accessed(x: &mut Exec, d: &Descriptor, at: u64) -> Result<(), Stop> {
    if d.low & (1 << 40) == 0 {
        x.write_system(at.wrapping_add(5), 1, (d.low >> 40) | 1)?;
    }
    Ok(())
}

/// The descriptor cache of a segment register loaded with a null selector in protected
/// mode: unusable (every access faults in legacy modes), DPL the selector's RPL.
fn null_segment(selector: u16) -> Segment {
    Segment {
        base: 0,
        limit: 0,
        selector,
        attributes: ((selector & 3) << 5),
    }
}

/// MOV/POP/LxS of a data segment register or SS (SDM vol 2 MOV, "Operation").
pub fn load_data_segment(x: &mut Exec, seg: usize, selector: u16) -> Result<(), Stop> {
    let cpu = &mut *x.cpu;
    if !cpu.protected() || cpu.flags.bits & VM != 0 {
        let s = &mut cpu.seg[seg];
        s.selector = selector;
        s.base = (selector as u64) << 4;
        if cpu.flags.bits & VM != 0 {
            // V86 mode: every segment is a 64 KiB read/write data segment at DPL 3.
            s.limit = 0xffff;
            s.attributes = 0xf3;
        }
        return Ok(());
    }
    let cpl = cpu.cpl();
    let rpl = (selector & 3) as u8;
    if selector & !3 == 0 {
        if seg == SS {
            // 64-bit mode lets CPL 0..2 load a null SS with RPL = CPL.
            if cpu.mode64() && cpl != 3 && rpl == cpl {
                cpu.seg[SS] = null_segment(selector);
                cpu.seg[SS].attributes |= (cpl as u16) << 5;
                return Ok(());
            }
            return Err(x.gp(0));
        }
        cpu.seg[seg] = null_segment(selector);
        return Ok(());
    }
    let (d, at) = read_descriptor(x, selector, false, GP)?;
    let err = selector_error(selector);
    if seg == SS {
        if rpl != cpl || !d.writable_data() || d.dpl() != cpl {
            return Err(x.gp(err));
        }
        if !d.present() {
            return Err(x.raise(SS_VECTOR, Some(err)));
        }
    } else {
        let readable = !d.is_code() || d.readable_code();
        if !d.code_or_data() || !readable {
            return Err(x.gp(err));
        }
        if !d.conforming() && (rpl > d.dpl() || cpl > d.dpl()) {
            return Err(x.gp(err));
        }
        if !d.present() {
            return Err(x.raise(NP, Some(err)));
        }
    }
    set_accessed(x, &d, at)?;
    let mut s = d.segment(selector);
    s.attributes |= 1;
    x.cpu.seg[seg] = s;
    Ok(())
}

/// The checks a far transfer makes on a code segment it lands in directly (no gate):
/// conforming DPL <= CPL, nonconforming RPL <= CPL and DPL = CPL; present; in long
/// mode L and D not both set.
fn check_code_target(x: &mut Exec, selector: u16, d: &Descriptor) -> Result<(), Stop> {
    let cpl = x.cpu.cpl();
    let err = selector_error(selector);
    if !d.is_code() {
        return Err(x.gp(err));
    }
    if d.conforming() {
        if d.dpl() > cpl {
            return Err(x.gp(err));
        }
    } else if (selector & 3) as u8 > cpl || d.dpl() != cpl {
        return Err(x.gp(err));
    }
    if !d.present() {
        return Err(x.raise(NP, Some(err)));
    }
    if x.cpu.long_mode_active() && d.low & (1 << 53) != 0 && d.low & (1 << 54) != 0 {
        return Err(x.gp(err));
    }
    Ok(())
}

/// Loads CS from a checked code descriptor at privilege `cpl` and jumps to `offset`,
/// which must lie inside the new segment (or be canonical in 64-bit code): #GP(0).
fn enter_code(
    x: &mut Exec,
    selector: u16,
    d: &Descriptor,
    at: u64,
    cpl: u8,
    offset: u64,
) -> Result<(), Stop> {
    let mut cs = d.segment((selector & !3) | cpl as u16);
    cs.attributes |= 1;
    let long = x.cpu.long_mode_active() && cs.long();
    if long {
        if !crate::paging::canonical(offset) {
            return Err(x.gp(0));
        }
    } else if offset > cs.limit as u64 {
        return Err(x.gp(0));
    }
    set_accessed(x, d, at)?;
    x.cpu.seg[CS] = cs;
    x.cpu.rip = offset;
    x.end_block = true;
    Ok(())
}

/// Reads a far target's descriptor: 16 bytes for gates in long mode.
fn target_descriptor(x: &mut Exec, selector: u16) -> Result<(Descriptor, u64), Stop> {
    if selector & !3 == 0 {
        return Err(x.gp(0));
    }
    let (mut d, at) = read_descriptor(x, selector, false, GP)?;
    if x.cpu.long_mode_active() && !d.code_or_data() {
        // A long-mode system descriptor is 16 bytes; its upper half's type must be 0.
        let (w, _) = read_descriptor(x, selector, true, GP)?;
        if (w.high >> 40) & 0x1f != 0 {
            return Err(x.gp(selector_error(selector)));
        }
        d = w;
    }
    Ok((d, at))
}

/// JMP ptr16:xx / m16:xx (SDM vol 2 JMP, "Operation").
pub fn far_jump(x: &mut Exec, selector: u16, offset: u64, size: usize) -> Result<(), Stop> {
    let offset = offset & mask(size);
    if !x.cpu.protected() || x.cpu.v86() {
        if offset > x.cpu.seg[CS].limit as u64 {
            return Err(x.gp(0));
        }
        real_cs(x, selector);
        x.cpu.rip = offset;
        x.end_block = true;
        return Ok(());
    }
    let (d, at) = target_descriptor(x, selector)?;
    if d.code_or_data() {
        check_code_target(x, selector, &d)?;
        let cpl = x.cpu.cpl();
        return enter_code(x, selector, &d, at, cpl, offset);
    }
    let cpl = x.cpu.cpl();
    let err = selector_error(selector);
    let long = x.cpu.long_mode_active();
    match d.kind() {
        TYPE_CALL_GATE16 | TYPE_CALL_GATE32 => {
            let (target, cd, cat) = call_gate(x, &d, selector, cpl, long)?;
            let cpl = x.cpu.cpl();
            // JMP through a gate never changes privilege: the target must be at CPL.
            if (cd.conforming() && cd.dpl() > cpl) || (!cd.conforming() && cd.dpl() != cpl) {
                return Err(x.gp(selector_error(target)));
            }
            if !cd.present() {
                return Err(x.raise(NP, Some(selector_error(target))));
            }
            let off = d.gate_offset(long)
                & if d.kind() == TYPE_CALL_GATE16 {
                    0xffff
                } else {
                    u64::MAX
                };
            enter_code(x, target, &cd, cat, cpl, off)
        }
        TYPE_TASK_GATE | TYPE_TSS16_AVAILABLE | TYPE_TSS32_AVAILABLE if !long => {
            task_target(x, selector, &d, at, TaskSwitch::Jump)
        }
        _ => Err(x.gp(err)),
    }
}

/// What JMP and CALL both check of a call gate before using it (SDM vol 3 5.8.4, 5.8.5):
/// a 16-bit gate is refused in IA-32e mode, the gate's DPL must be at least CPL and the
/// selector's RPL, and it must be present; then its target code segment (the selector,
/// its descriptor and where that was read from).
fn call_gate(
    x: &mut Exec,
    d: &Descriptor,
    selector: u16,
    cpl: u8,
    long: bool,
) -> Result<(u16, Descriptor, u64), Stop> {
    let err = selector_error(selector);
    if long && d.kind() != TYPE_CALL_GATE32 {
        return Err(x.gp(err));
    }
    if d.dpl() < cpl || (selector & 3) as u8 > d.dpl() {
        return Err(x.gp(err));
    }
    if !d.present() {
        return Err(x.raise(NP, Some(err)));
    }
    let target = d.gate_selector();
    let (cd, cat) = gate_code(x, target)?;
    Ok((target, cd, cat))
}

/// The code segment a gate names: present-independent checks (#GP(selector)).
fn gate_code(x: &mut Exec, target: u16) -> Result<(Descriptor, u64), Stop> {
    if target & !3 == 0 {
        return Err(x.gp(0));
    }
    let (cd, cat) = read_descriptor(x, target, false, GP)?;
    if !cd.is_code()
        || x.cpu.long_mode_active() && (!cd.segment(target).long() || cd.low & (1 << 54) != 0)
    {
        return Err(x.gp(selector_error(target)));
    }
    Ok((cd, cat))
}

/// A JMP or CALL to a task gate or TSS: the checks of SDM vol 3 7.3, then the switch.
fn task_target(
    x: &mut Exec,
    selector: u16,
    d: &Descriptor,
    at: u64,
    how: TaskSwitch,
) -> Result<(), Stop> {
    let cpl = x.cpu.cpl();
    let err = selector_error(selector);
    if d.dpl() < cpl || d.dpl() < (selector & 3) as u8 {
        return Err(x.gp(err));
    }
    if !d.present() {
        return Err(x.raise(NP, Some(err)));
    }
    let (tss_sel, tss, tss_at) = if d.kind() == TYPE_TASK_GATE {
        let t = d.gate_selector();
        if t & 4 != 0 {
            return Err(x.gp(selector_error(t)));
        }
        let (td, tat) = read_descriptor(x, t, false, GP)?;
        if td.code_or_data() || !matches!(td.kind(), TYPE_TSS16_AVAILABLE | TYPE_TSS32_AVAILABLE) {
            return Err(x.gp(selector_error(t)));
        }
        if !td.present() {
            return Err(x.raise(NP, Some(selector_error(t))));
        }
        (t, td, tat)
    } else {
        (selector, *d, at)
    };
    task::switch(x, tss_sel, tss, tss_at, how)
}

/// Real mode and V86 mode load CS's selector and base only.
fn real_cs(x: &mut Exec, selector: u16) {
    let cs = &mut x.cpu.seg[CS];
    cs.selector = selector;
    cs.base = (selector as u64) << 4;
}

/// CALL ptr16:xx / m16:xx (SDM vol 2 CALL, "Operation"): pushes CS and the return
/// address (and through a call gate to more privilege, the caller's SS:RSP and the
/// gate's parameters on the new stack from the TSS).
pub fn far_call(
    x: &mut Exec,
    selector: u16,
    offset: u64,
    size: usize,
    next: u64,
) -> Result<(), Stop> {
    let offset = offset & mask(size);
    if !x.cpu.protected() || x.cpu.v86() {
        if offset > x.cpu.seg[CS].limit as u64 {
            return Err(x.gp(0));
        }
        let saved = x.cpu.gpr[4];
        let cs = x.cpu.seg[CS].selector as u64;
        let r = x.push(cs, size).and_then(|_| x.push(next, size));
        if let Err(e) = r {
            x.cpu.gpr[4] = saved;
            return Err(e);
        }
        real_cs(x, selector);
        x.cpu.rip = offset;
        x.end_block = true;
        return Ok(());
    }
    let (d, at) = target_descriptor(x, selector)?;
    let saved = (x.cpu.gpr[4], x.cpu.seg[SS], x.cpu.seg[CS]);
    let result = far_call_protected(x, selector, offset, size, next, d, at);
    if result.is_err() && x.cpu.seg[CS] == saved.2 {
        (x.cpu.gpr[4], x.cpu.seg[SS]) = (saved.0, saved.1);
    }
    result
}

fn far_call_protected(
    x: &mut Exec,
    selector: u16,
    offset: u64,
    size: usize,
    next: u64,
    d: Descriptor,
    at: u64,
) -> Result<(), Stop> {
    let cpl = x.cpu.cpl();
    let err = selector_error(selector);
    let long = x.cpu.long_mode_active();
    if d.code_or_data() {
        check_code_target(x, selector, &d)?;
        // The target must be reachable before anything is pushed.
        let cs = x.cpu.seg[CS].selector as u64;
        let m = x.stack_mask();
        let sp = x.cpu.gpr[4];
        x.probe_write(SS, sp.wrapping_sub(2 * size as u64) & m, 2 * size)?;
        check_offset(x, &d, offset)?;
        x.push(cs, size)?;
        x.push(next, size)?;
        return enter_code(x, selector, &d, at, cpl, offset);
    }
    match d.kind() {
        TYPE_CALL_GATE16 | TYPE_CALL_GATE32 => {
            let (target, cd, cat) = call_gate(x, &d, selector, cpl, long)?;
            if cd.dpl() > cpl {
                return Err(x.gp(selector_error(target)));
            }
            if !cd.present() {
                return Err(x.raise(NP, Some(selector_error(target))));
            }
            let gate_size = if long {
                8
            } else if d.kind() == TYPE_CALL_GATE32 {
                4
            } else {
                2
            };
            let off = d.gate_offset(long) & mask(gate_size);
            if !cd.conforming() && cd.dpl() < cpl {
                call_gate_inner(x, &d, target, &cd, cat, off, gate_size, next)
            } else {
                let cs = x.cpu.seg[CS].selector as u64;
                check_offset(x, &cd, off)?;
                x.push(cs, gate_size)?;
                x.push(next, gate_size)?;
                enter_code(x, target, &cd, cat, cpl, off)
            }
        }
        TYPE_TASK_GATE | TYPE_TSS16_AVAILABLE | TYPE_TSS32_AVAILABLE if !long => {
            task_target(x, selector, &d, at, TaskSwitch::Call { next })
        }
        _ => Err(x.gp(err)),
    }
}

fn check_offset(x: &mut Exec, cd: &Descriptor, offset: u64) -> Result<(), Stop> {
    let long = x.cpu.long_mode_active() && cd.segment(0).long();
    if long && !crate::paging::canonical(offset) || !long && offset > cd.limit() as u64 {
        return Err(x.gp(0));
    }
    Ok(())
}

/// A call gate into a more privileged nonconforming segment: the new stack comes from
/// the TSS (SDM vol 3 5.8.5); the old SS:ESP, the parameters (legacy gates) and the
/// return CS:EIP go on it.
#[allow(clippy::too_many_arguments)]
fn call_gate_inner(
    x: &mut Exec,
    gate: &Descriptor,
    target: u16,
    cd: &Descriptor,
    cat: u64,
    off: u64,
    size: usize,
    next: u64,
) -> Result<(), Stop> {
    let new_cpl = cd.dpl();
    let (new_ss, new_sp) = task::inner_stack(x, new_cpl)?;
    let old_ss = x.cpu.seg[SS];
    let old_sp = x.cpu.gpr[4];
    let old_cs = x.cpu.seg[CS].selector as u64;
    let long = x.cpu.long_mode_active();
    // Parameters are copied from the old stack (legacy gates only).
    let params = if long { 0 } else { gate.gate_params() };
    let old_mask = x.stack_mask();
    let mut args = Vec::with_capacity(params as usize);
    for i in 0..params {
        let v = x.read(SS, old_sp.wrapping_add(i * size as u64) & old_mask, size)?;
        args.push(v);
    }
    check_offset(x, cd, off)?;
    // Switch to the new stack, at the new privilege.
    if long {
        // 64-bit: SS is null with RPL = new CPL, RSP from the TSS, aligned to 16.
        x.cpu.seg[SS] = null_segment(new_cpl as u16);
        x.cpu.seg[SS].attributes = (new_cpl as u16) << 5;
        x.cpu.gpr[4] = new_sp & !0xf;
    } else {
        load_stack_for(x, new_ss, new_cpl)?;
        x.cpu.gpr[4] = new_sp;
    }
    // Pushes at the new CPL (SS.DPL now says so).
    let push = |x: &mut Exec, v: u64| x.push(v, size);
    let r = (|| {
        push(x, old_ss.selector as u64)?;
        push(x, old_sp)?;
        for v in args.iter().rev() {
            push(x, *v)?;
        }
        push(x, old_cs)?;
        push(x, next)
    })();
    if let Err(e) = r {
        x.cpu.seg[SS] = old_ss;
        x.cpu.gpr[4] = old_sp;
        return Err(e);
    }
    enter_code(x, target, cd, cat, new_cpl, off)
}

/// Loads SS for a privilege change to `cpl` from a TSS stack selector: the checks
/// raise #TS(selector) (SDM vol 3 5.8.5, 6.12.1).
pub fn load_stack_for(x: &mut Exec, selector: u16, cpl: u8) -> Result<(), Stop> {
    let err = selector_error(selector);
    if selector & !3 == 0 {
        return Err(x.raise(TS, Some(err)));
    }
    let (d, at) = read_descriptor(x, selector, false, TS)?;
    if (selector & 3) as u8 != cpl || d.dpl() != cpl || !d.writable_data() {
        return Err(x.raise(TS, Some(err)));
    }
    if !d.present() {
        return Err(x.raise(SS_VECTOR, Some(err)));
    }
    set_accessed(x, &d, at)?;
    let mut s = d.segment(selector);
    s.attributes |= 1;
    x.cpu.seg[SS] = s;
    Ok(())
}

/// RETF [imm16] (SDM vol 2 RET, "Operation"): same privilege, or outward with the
/// caller's SS:RSP popped and data segments the new privilege may not use nulled.
pub fn far_return(x: &mut Exec, size: usize, release: u64) -> Result<(), Stop> {
    let saved = (x.cpu.gpr[4], x.cpu.seg);
    let r = far_return_inner(x, size, release);
    if r.is_err() && x.cpu.seg[CS] == saved.1[CS] {
        x.cpu.gpr[4] = saved.0;
        x.cpu.seg = saved.1;
    }
    r
}

fn far_return_inner(x: &mut Exec, size: usize, release: u64) -> Result<(), Stop> {
    let off = x.peek(size, 0)? & mask(size);
    let sel = x.peek(size, size as u64)? as u16;
    if !x.cpu.protected() || x.cpu.v86() {
        if off > x.cpu.seg[CS].limit as u64 {
            return Err(x.gp(0));
        }
        let m = x.stack_mask();
        x.set_sp(x.cpu.gpr[4].wrapping_add(2 * size as u64 + release) & m);
        real_cs(x, sel);
        x.cpu.rip = off;
        x.end_block = true;
        return Ok(());
    }
    if sel & !3 == 0 {
        return Err(x.gp(0));
    }
    let cpl = x.cpu.cpl();
    let rpl = (sel & 3) as u8;
    let (d, at) = read_descriptor(x, sel, false, GP)?;
    let err = selector_error(sel);
    if !d.is_code() || rpl < cpl {
        return Err(x.gp(err));
    }
    if d.conforming() && d.dpl() > rpl || !d.conforming() && d.dpl() != rpl {
        return Err(x.gp(err));
    }
    if !d.present() {
        return Err(x.raise(NP, Some(err)));
    }
    let m = x.stack_mask();
    if rpl == cpl {
        check_offset(x, &d, off)?;
        x.set_sp(x.cpu.gpr[4].wrapping_add(2 * size as u64 + release) & m);
        return enter_code(x, sel, &d, at, cpl, off);
    }
    // To an outer privilege: SS:RSP come from above the parameters.
    let base = 2 * size as u64 + release;
    let new_sp = x.peek(size, base)?;
    let new_ss = x.peek(size, base + size as u64)? as u16;
    check_offset(x, &d, off)?;
    load_outer_stack(x, new_ss, rpl, &d)?;
    enter_code(x, sel, &d, at, rpl, off)?;
    let m = x.stack_mask();
    x.cpu.gpr[4] = (x.cpu.gpr[4] & !m) | (new_sp.wrapping_add(release) & m);
    null_outer_segments(x);
    Ok(())
}

/// SS for a return to an outer privilege `rpl` (RETF, IRET): #GP(selector) or
/// #SS(selector) per SDM vol 2; 64-bit code may return to a null SS at RPL < 3.
pub fn load_outer_stack(
    x: &mut Exec,
    selector: u16,
    rpl: u8,
    code: &Descriptor,
) -> Result<(), Stop> {
    let long_target = x.cpu.long_mode_active() && code.segment(0).long();
    if selector & !3 == 0 {
        if long_target && rpl != 3 && (selector & 3) as u8 == rpl {
            x.cpu.seg[SS] = null_segment(selector);
            x.cpu.seg[SS].attributes = (rpl as u16) << 5;
            return Ok(());
        }
        return Err(x.gp(0));
    }
    let err = selector_error(selector);
    let (d, at) = read_descriptor(x, selector, false, GP)?;
    if (selector & 3) as u8 != rpl || d.dpl() != rpl || !d.writable_data() {
        return Err(x.gp(err));
    }
    if !d.present() {
        return Err(x.raise(SS_VECTOR, Some(err)));
    }
    set_accessed(x, &d, at)?;
    let mut s = d.segment(selector);
    s.attributes |= 1;
    x.cpu.seg[SS] = s;
    Ok(())
}

/// After a return to an outer privilege, ES, DS, FS and GS holding segments that
/// privilege may not use (data or nonconforming code with DPL < CPL) become null
/// (SDM vol 2 RET and IRET, "Operation": only "SegmentSelector <- 0"). In IA-32e mode
/// FS and GS keep their base: 64-bit code addresses through it whatever the selector
/// (SDM vol 3 3.4.4; AMD APM vol 2 4.5.3, vol 3 IRET and RET (Far)), and hardware
/// leaves it as it was (kvm-unit-tests' emulator64 "ret/iret with a nullified segment").
pub fn null_outer_segments(x: &mut Exec) {
    let cpl = x.cpu.cpl();
    let long = x.cpu.long_mode_active();
    for i in [ES, DS, FS, GS] {
        let s = x.cpu.seg[i];
        let conforming_code = s.is_code() && s.kind() & 4 != 0;
        if s.present() && s.is_code_or_data() && !conforming_code && s.dpl() < cpl {
            x.cpu.seg[i] = null_segment(0);
            if long && i >= FS {
                x.cpu.seg[i].base = s.base;
            }
        }
    }
}
