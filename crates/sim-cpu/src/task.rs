//! The task-state segment: inner-privilege stacks and IST entries, and hardware task
//! switching through JMP, CALL, interrupts and IRET (SDM vol 3 chapter 7).

use crate::exec::Exec;
use crate::fault::{selector_error, Stop, GP, NP, SS as SS_VECTOR, TS};
use crate::flags::{NT, VM};
use crate::segment::{read_descriptor, Descriptor, TYPE_LDT};
use crate::state::*;

/// How a task switch was caused: it decides the busy bits, NT and the back link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSwitch {
    Jump,
    Call {
        next: u64,
    },
    /// An interrupt or exception through a task gate: the return address and the
    /// error code to push on the new task's stack; `rf` is RF for a fault, set in the
    /// EFLAGS image saved in the old TSS (SDM vol 3 18.3.1.1).
    Interrupt {
        ret: u64,
        error_code: Option<u32>,
        rf: u64,
    },
    Iret,
}

fn tss_is_32(kind: u16) -> bool {
    kind & 8 != 0
}

/// The stack for privilege level `cpl` from the current TSS: SS and (E/R)SP (SDM vol 3
/// 5.8.5, 7.7). Outside the TSS's limit is #TS(TSS selector).
pub fn inner_stack(x: &mut Exec, cpl: u8) -> Result<(u16, u64), Stop> {
    let tr = x.cpu.tr;
    let err = selector_error(tr.selector);
    if x.cpu.long_mode_active() {
        let at = 4 + 8 * cpl as u64;
        if at + 7 > tr.limit as u64 {
            return Err(x.raise(TS, Some(err)));
        }
        let sp = x.read_system(tr.base.wrapping_add(at), 8)?;
        return Ok((0, sp));
    }
    if tss_is_32(tr.kind()) {
        let at = 4 + 8 * cpl as u64;
        if at + 5 > tr.limit as u64 {
            return Err(x.raise(TS, Some(err)));
        }
        let sp = x.read_system(tr.base.wrapping_add(at), 4)?;
        let ss = x.read_system(tr.base.wrapping_add(at + 4), 2)? as u16;
        Ok((ss, sp))
    } else {
        let at = 2 + 4 * cpl as u64;
        if at + 3 > tr.limit as u64 {
            return Err(x.raise(TS, Some(err)));
        }
        let sp = x.read_system(tr.base.wrapping_add(at), 2)?;
        let ss = x.read_system(tr.base.wrapping_add(at + 2), 2)? as u16;
        Ok((ss, sp))
    }
}

/// Interrupt stack table entry `n` (1..7) of the 64-bit TSS.
pub fn ist(x: &mut Exec, n: u8) -> Result<u64, Stop> {
    let tr = x.cpu.tr;
    let at = 0x24 + 8 * (n as u64 - 1);
    if at + 7 > tr.limit as u64 {
        return Err(x.raise(TS, Some(selector_error(tr.selector))));
    }
    x.read_system(tr.base.wrapping_add(at), 8)
}

/// The register image of a task, as a TSS stores it.
#[derive(Debug, Clone, Copy, Default)]
struct Image {
    cr3: u64,
    eip: u64,
    eflags: u64,
    gpr: [u64; 8],
    seg: [u16; 6],
    ldt: u16,
    link: u16,
}

fn read_image(x: &mut Exec, base: u64, wide: bool) -> Result<Image, Stop> {
    let mut i = Image::default();
    let r = |x: &mut Exec, off: u64, size: usize| x.read_system(base.wrapping_add(off), size);
    if wide {
        i.link = r(x, 0, 2)? as u16;
        i.cr3 = r(x, 0x1c, 4)?;
        i.eip = r(x, 0x20, 4)?;
        i.eflags = r(x, 0x24, 4)?;
        for k in 0..8 {
            i.gpr[k] = r(x, 0x28 + 4 * k as u64, 4)?;
        }
        for k in 0..6 {
            i.seg[k] = r(x, 0x48 + 4 * k as u64, 2)? as u16;
        }
        i.ldt = r(x, 0x60, 2)? as u16;
    } else {
        i.link = r(x, 0, 2)? as u16;
        i.eip = r(x, 0x0e, 2)?;
        i.eflags = r(x, 0x10, 2)?;
        for k in 0..8 {
            i.gpr[k] = r(x, 0x12 + 2 * k as u64, 2)?;
        }
        for k in 0..4 {
            i.seg[k] = r(x, 0x22 + 2 * k as u64, 2)? as u16;
        }
        i.ldt = r(x, 0x2a, 2)? as u16;
    }
    Ok(i)
}

fn write_state(x: &mut Exec, base: u64, wide: bool, eip: u64, eflags: u64) -> Result<(), Stop> {
    let w = |x: &mut Exec, off: u64, size: usize, v: u64| {
        x.write_system(base.wrapping_add(off), size, v)
    };
    if wide {
        w(x, 0x20, 4, eip)?;
        w(x, 0x24, 4, eflags)?;
        for k in 0..8 {
            let v = x.cpu.gpr[k];
            w(x, 0x28 + 4 * k as u64, 4, v)?;
        }
        for k in 0..6 {
            let v = x.cpu.seg[k].selector as u64;
            w(x, 0x48 + 4 * k as u64, 2, v)?;
        }
    } else {
        w(x, 0x0e, 2, eip)?;
        w(x, 0x10, 2, eflags)?;
        for k in 0..8 {
            let v = x.cpu.gpr[k];
            w(x, 0x12 + 2 * k as u64, 2, v)?;
        }
        for k in 0..4 {
            let v = x.cpu.seg[k].selector as u64;
            w(x, 0x22 + 2 * k as u64, 2, v)?;
        }
    }
    Ok(())
}

/// Sets or clears a TSS descriptor's busy bit (type bit 1) in the GDT.
fn set_busy(x: &mut Exec, at: u64, d: &Descriptor, busy: bool) -> Result<(), Stop> {
    let access = (d.low >> 40) & 0xff;
    let v = if busy { access | 2 } else { access & !2 };
    x.write_system(at.wrapping_add(5), 1, v)
}

/// Switches to the task whose TSS descriptor is `d` (at `at`, selector `sel`), as
/// SDM vol 3 7.3 lists the steps.
pub fn switch(x: &mut Exec, sel: u16, d: Descriptor, at: u64, how: TaskSwitch) -> Result<(), Stop> {
    let err = selector_error(sel);
    let new_wide = tss_is_32(d.kind());
    let min_limit = if new_wide { 0x67 } else { 0x2b };
    if d.limit() < min_limit {
        return Err(x.raise(TS, Some(err)));
    }
    let busy = d.kind() & 2 != 0;
    if how == TaskSwitch::Iret && !busy || how != TaskSwitch::Iret && busy {
        return Err(x.gp(err));
    }
    let old_tr = x.cpu.tr;
    let old_wide = tss_is_32(old_tr.kind());
    // The state saved is the one after the instruction (or at the interrupt).
    let ret = match how {
        TaskSwitch::Jump | TaskSwitch::Iret => x.cpu.rip,
        TaskSwitch::Call { next } => next,
        TaskSwitch::Interrupt { ret, .. } => ret,
    };
    let mut eflags = x.cpu.rflags();
    if how == TaskSwitch::Iret {
        eflags &= !NT;
    }
    if let TaskSwitch::Interrupt { rf, .. } = how {
        eflags |= rf;
    }
    // Read the new image first: a fault there changes nothing.
    let new_base = d.base();
    let image = read_image(x, new_base, new_wide)?;
    write_state(x, old_tr.base, old_wide, ret, eflags)?;
    if matches!(how, TaskSwitch::Jump | TaskSwitch::Iret) {
        let (od, oat) = read_descriptor(x, old_tr.selector, false, GP)?;
        set_busy(x, oat, &od, false)?;
    }
    let mut new_flags = image.eflags;
    if let TaskSwitch::Call { .. } | TaskSwitch::Interrupt { .. } = how {
        x.write_system(new_base, 2, old_tr.selector as u64)?;
        new_flags |= NT;
    }
    if how != TaskSwitch::Iret {
        set_busy(x, at, &d, true)?;
    }
    // Commit: TR, CR0.TS, CR3, flags, registers (from here faults belong to the new task).
    let mut tr = d.segment(sel);
    tr.attributes |= 2;
    x.cpu.tr = tr;
    x.cpu.cr0 |= CR0_TS;
    if new_wide && x.cpu.paging() {
        x.cpu.cr3 = image.cr3;
        if x.cpu.cr4 & CR4_PAE != 0 && !crate::paging::load_pdptes(x.cpu, x.mem) {
            return Err(x.gp(0));
        }
        x.tlb.flush_nonglobal();
    }
    if new_wide {
        x.cpu.set_rflags(new_flags);
        x.cpu.rip = image.eip;
        for k in 0..8 {
            x.cpu.gpr[k] = image.gpr[k];
        }
    } else {
        // A 16-bit TSS holds FLAGS only: VM, RF and the other upper bits come out clear
        // (a 286 task cannot be a V86 task).
        x.cpu.set_rflags(new_flags & 0xffff);
        x.cpu.rip = image.eip;
        // A 16-bit TSS holds 16-bit registers; the SDM leaves the upper halves
        // undefined and 386-class processors set them to all ones, which test386's
        // 286-task test checks (`protected_tssh.asm`: ESP == 0xFFFF1122 on entry).
        for k in 0..8 {
            x.cpu.gpr[k] = 0xffff_0000 | image.gpr[k];
        }
    }
    x.end_block = true;
    // Selectors go in first, then each is checked and its descriptor loaded.
    for k in 0..6 {
        x.cpu.seg[k].selector = image.seg[k];
    }
    load_ldt(x, image.ldt)?;
    if x.cpu.rflags() & VM != 0 {
        for k in 0..6 {
            x.cpu.seg[k] = Segment::real(image.seg[k], 0xf3);
        }
    } else {
        load_task_segments(x, &image)?;
    }
    if let TaskSwitch::Interrupt {
        error_code: Some(code),
        ..
    } = how
    {
        let size = if new_wide { 4 } else { 2 };
        x.push(code as u64, size)?;
    }
    if x.cpu.rip > x.cpu.seg[CS].limit as u64 {
        return Err(x.gp(0));
    }
    Ok(())
}

fn load_ldt(x: &mut Exec, sel: u16) -> Result<(), Stop> {
    if sel & !3 == 0 {
        x.cpu.ldtr = Segment {
            selector: sel,
            ..Segment::default()
        };
        return Ok(());
    }
    let err = selector_error(sel);
    if sel & 4 != 0 {
        return Err(x.raise(TS, Some(err)));
    }
    let (d, _) = read_descriptor(x, sel, false, TS)?;
    if d.code_or_data() || d.kind() != TYPE_LDT {
        return Err(x.raise(TS, Some(err)));
    }
    if !d.present() {
        return Err(x.raise(TS, Some(err)));
    }
    x.cpu.ldtr = d.segment(sel);
    Ok(())
}

/// Loads CS, SS and the data segments of a new task with #TS/#NP/#SS as SDM vol 3 7.3
/// (step 12) and Table 7-1 describe.
fn load_task_segments(x: &mut Exec, image: &Image) -> Result<(), Stop> {
    let cs_sel = image.seg[CS];
    let cpl = (cs_sel & 3) as u8;
    // CS.
    let err = selector_error(cs_sel);
    if cs_sel & !3 == 0 {
        return Err(x.raise(TS, Some(err)));
    }
    let (cd, _) = read_descriptor(x, cs_sel, false, TS)?;
    if !cd.is_code() || (cd.conforming() && cd.dpl() > cpl) || (!cd.conforming() && cd.dpl() != cpl)
    {
        return Err(x.raise(TS, Some(err)));
    }
    if !cd.present() {
        return Err(x.raise(NP, Some(err)));
    }
    // SS.
    let ss_sel = image.seg[SS];
    let serr = selector_error(ss_sel);
    if ss_sel & !3 == 0 {
        return Err(x.raise(TS, Some(serr)));
    }
    let (sd, _) = read_descriptor(x, ss_sel, false, TS)?;
    if !sd.writable_data() || (ss_sel & 3) as u8 != cpl || sd.dpl() != cpl {
        return Err(x.raise(TS, Some(serr)));
    }
    if !sd.present() {
        return Err(x.raise(SS_VECTOR, Some(serr)));
    }
    let mut cs = cd.segment(cs_sel);
    cs.attributes |= 1;
    let mut ss = sd.segment(ss_sel);
    ss.attributes |= 1;
    x.cpu.seg[CS] = cs;
    x.cpu.seg[SS] = ss;
    for k in [ES, DS, FS, GS] {
        let sel = image.seg[k];
        if sel & !3 == 0 {
            x.cpu.seg[k] = Segment {
                selector: sel,
                ..Segment::default()
            };
            continue;
        }
        let e = selector_error(sel);
        let (d, _) = read_descriptor(x, sel, false, TS)?;
        let readable = d.code_or_data() && (!d.is_code() || d.readable_code());
        if !readable || (!d.conforming() && (d.dpl() < cpl || d.dpl() < (sel & 3) as u8)) {
            return Err(x.raise(TS, Some(e)));
        }
        if !d.present() {
            return Err(x.raise(NP, Some(e)));
        }
        let mut s = d.segment(sel);
        s.attributes |= 1;
        x.cpu.seg[k] = s;
    }
    Ok(())
}
