//! Interrupt and exception delivery through the IVT (real mode) and the IDT (protected
//! mode, V86, long mode), with every gate type, privilege change, IST, task gates, and
//! the double-fault rules; and IRET (SDM vol 3 chapter 6, vol 2 INT n and IRET).

use crate::exec::Exec;
use crate::fault::{
    selector_error, Fault, ShutdownCause, Stop, DB as DB_VECTOR, DF as DF_VECTOR, GP, NP,
    PF as PF_VECTOR, SS as SS_FAULT, TS,
};
use crate::flags::*;
use crate::segment::{self, read_descriptor, Descriptor};
use crate::state::*;
use crate::task::{self, TaskSwitch};

/// What raised an event: decides the gate DPL check and the EXT bit of error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A trap-class exception the processor detected (a single-step or data
    /// breakpoint #DB), or an instruction-breakpoint #DB: RFLAGS is pushed as it is.
    Exception,
    /// A fault-class exception: the RFLAGS image pushed (or saved in the TSS) has RF set,
    /// so the faulting instruction's breakpoint does not fire again when the handler
    /// returns to it (SDM vol 3 18.3.1.1: "for any fault-class exception except a debug
    /// exception generated in response to an instruction breakpoint, the value pushed
    /// for RF is 1").
    Fault,
    /// An external interrupt or NMI.
    External,
    /// INT n: the gate's DPL must allow CPL.
    Software,
    /// INT3 and INTO: software exceptions, DPL-checked like INT n.
    Int3,
    /// INT1 (ICEBP): no DPL check.
    Icebp,
}

impl Source {
    fn ext(self) -> u32 {
        matches!(self, Source::Exception | Source::Fault | Source::External) as u32
    }
    fn dpl_checked(self) -> bool {
        matches!(self, Source::Software | Source::Int3)
    }
}

/// Delivers `vector`; `ret` is the RIP the handler returns to (the faulting
/// instruction for a fault, the next one for traps and software interrupts). On
/// success RIP is the handler's entry point. An exit during delivery (the IDT, a
/// descriptor table or the stack outside RAM) is marked as such: the hypervisor reports
/// it with `interruption_pending`, since the access is not the instruction's.
pub fn deliver(
    x: &mut Exec,
    vector: u8,
    error_code: Option<u32>,
    source: Source,
    ret: u64,
) -> Result<(), Stop> {
    let r = deliver_event(x, vector, error_code, source, ret);
    if matches!(r, Err(Stop::Exit)) && matches!(x.exit, crate::fault::Exit::Mmio { .. }) {
        x.exit_in_delivery = true;
    }
    if r.is_ok() && vector == DB_VECTOR && source != Source::Software {
        // Entering the debug-exception handler clears DR7.GD, so that the handler
        // may use the debug registers (SDM vol 3 18.2.4). INT 1 is no debug exception.
        x.cpu.dr[7] &= !DR7_GD;
    }
    r
}

/// DR7.GD (general detect): a MOV with a debug register raises #DB (SDM vol 3 18.2.4).
pub const DR7_GD: u64 = 1 << 13;

fn deliver_event(
    x: &mut Exec,
    vector: u8,
    error_code: Option<u32>,
    source: Source,
    ret: u64,
) -> Result<(), Stop> {
    x.end_block = true;
    if !x.cpu.protected() {
        return deliver_real(x, vector, ret);
    }
    let long = x.cpu.long_mode_active();
    let ext = source.ext();
    let idt_err = (vector as u32) * 8 + 2 + ext;
    let size = if long { 16 } else { 8 };
    let at = vector as u64 * size;
    if at + size - 1 > x.cpu.idtr.limit as u64 {
        return Err(x.gp(idt_err));
    }
    let base = x.cpu.idtr.base.wrapping_add(at);
    let base = if long { base } else { base & 0xffff_ffff };
    let low = x.read_system(base, 8)?;
    let high = if long {
        x.read_system(base.wrapping_add(8), 8)?
    } else {
        0
    };
    let gate = Descriptor { low, high };
    let kind = gate.kind();
    use segment::{
        TYPE_INT_GATE16, TYPE_INT_GATE32, TYPE_TASK_GATE, TYPE_TRAP_GATE16, TYPE_TRAP_GATE32,
    };
    let ok_type = if long {
        // Only 64-bit interrupt and trap gates.
        !gate.code_or_data() && matches!(kind, TYPE_INT_GATE32 | TYPE_TRAP_GATE32)
    } else {
        !gate.code_or_data()
            && matches!(
                kind,
                TYPE_TASK_GATE
                    | TYPE_INT_GATE16
                    | TYPE_TRAP_GATE16
                    | TYPE_INT_GATE32
                    | TYPE_TRAP_GATE32
            )
    };
    if !ok_type {
        return Err(x.gp(idt_err));
    }
    if source.dpl_checked() && gate.dpl() < x.cpu.cpl() {
        return Err(x.gp(idt_err));
    }
    if !gate.present() {
        return Err(x.raise(NP, Some(idt_err)));
    }
    // The RFLAGS image the handler sees: a fault's has RF set (see `Source::Fault`).
    let rf = if source == Source::Fault { RF } else { 0 };
    if kind == TYPE_TASK_GATE {
        return task_gate(x, &gate, ext, error_code, ret, rf);
    }
    let sel = gate.gate_selector();
    let sel_err = selector_error(sel) | ext;
    if sel & !3 == 0 {
        return Err(x.gp(ext));
    }
    let (cd, cat) = match read_descriptor(x, sel, false, GP) {
        Ok(v) => v,
        Err(e) => {
            if let Some(c) = x.fault.error_code.as_mut() {
                *c |= ext;
            }
            return Err(e);
        }
    };
    let cpl = x.cpu.cpl();
    if !cd.is_code() || cd.dpl() > cpl {
        return Err(x.gp(sel_err));
    }
    if !cd.present() {
        return Err(x.raise(NP, Some(sel_err)));
    }
    if long && (!cd.segment(sel).long() || cd.low & (1 << 54) != 0) {
        return Err(x.gp(sel_err));
    }
    let gate32 = kind & 8 != 0;
    let push_size = if long {
        8
    } else if gate32 {
        4
    } else {
        2
    };
    let offset = gate.gate_offset(long) & if !long && !gate32 { 0xffff } else { u64::MAX };
    let v86 = x.cpu.v86();
    let inner = !cd.conforming() && cd.dpl() < cpl;
    if v86 && (!inner || cd.dpl() != 0) {
        return Err(x.gp(sel_err));
    }
    // Snapshot for a fault while pushing: nothing changes unless delivery completes.
    let saved = (x.cpu.gpr[4], x.cpu.seg, x.cpu.rflags());
    let r = push_frame(
        x, &gate, &cd, cat, sel, offset, push_size, inner, ret, error_code, long, v86, rf,
    );
    if r.is_err() {
        x.cpu.gpr[4] = saved.0;
        x.cpu.seg = saved.1;
        x.cpu.set_rflags(saved.2);
        return r;
    }
    // Interrupt gates clear IF; every gate clears TF, NT, RF and VM.
    let mut f = x.cpu.rflags() & !(TF | NT | RF | VM);
    if kind & 1 == 0 {
        f &= !IF;
    }
    x.cpu.set_rflags(f);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn push_frame(
    x: &mut Exec,
    gate: &Descriptor,
    cd: &Descriptor,
    cat: u64,
    sel: u16,
    offset: u64,
    size: usize,
    inner: bool,
    ret: u64,
    error_code: Option<u32>,
    long: bool,
    v86: bool,
    rf: u64,
) -> Result<(), Stop> {
    let flags = x.cpu.rflags() | rf;
    let old_cs = x.cpu.seg[CS].selector as u64;
    let old_ss = x.cpu.seg[SS].selector as u64;
    let old_sp = x.cpu.gpr[4];
    let new_cpl = if inner { cd.dpl() } else { x.cpu.cpl() };
    if inner || long {
        // The new stack: from the TSS (or the IST) on a privilege change; in long mode
        // the same stack otherwise. Long mode aligns RSP to 16 bytes (SDM vol 3 6.14.2).
        let ist = if long { (gate.low >> 32) & 7 } else { 0 };
        let sp = if ist != 0 {
            task::ist(x, ist as u8)?
        } else if inner {
            let (ss, sp) = task::inner_stack(x, new_cpl)?;
            if !long {
                segment::load_stack_for(x, ss, new_cpl)?;
            }
            sp
        } else {
            old_sp
        };
        if long {
            if inner {
                x.cpu.seg[SS] = Segment {
                    selector: new_cpl as u16,
                    attributes: (new_cpl as u16) << 5,
                    ..Segment::default()
                };
            }
            x.cpu.gpr[4] = sp & !0xf;
        } else {
            x.cpu.gpr[4] = sp;
        }
        if v86 {
            for s in [GS, FS, DS, ES] {
                let v = x.cpu.seg[s].selector as u64;
                x.push(v, size)?;
            }
        }
    }
    let push = |x: &mut Exec, v: u64| {
        if long {
            push_long(x, v)
        } else {
            x.push(v, size)
        }
    };
    if inner || long {
        push(x, old_ss)?;
        push(x, old_sp)?;
    }
    push(x, flags)?;
    push(x, old_cs)?;
    push(x, ret)?;
    if let Some(code) = error_code {
        push(x, code as u64)?;
    }
    if v86 {
        for s in [GS, FS, DS, ES] {
            x.cpu.seg[s] = Segment::default();
        }
    }
    let mut cs = cd.segment((sel & !3) | new_cpl as u16);
    cs.attributes |= 1;
    if !long && offset > cs.limit as u64 || long && !crate::paging::canonical(offset) {
        return Err(x.gp(0));
    }
    segment::set_accessed(x, cd, cat)?;
    x.cpu.seg[CS] = cs;
    x.cpu.rip = offset;
    Ok(())
}

/// Pushes one qword of an IA-32e frame. Delivery in IA-32e mode always uses the 64-bit
/// RSP with no segment checks, also from compatibility mode, where the code segment
/// that is interrupted would give SS.B a say (SDM vol 3 6.14.2, 6.14.4).
fn push_long(x: &mut Exec, v: u64) -> Result<(), Stop> {
    let sp = x.cpu.gpr[4].wrapping_sub(8);
    if !crate::paging::canonical(sp) {
        return Err(x.raise(SS_FAULT, Some(0)));
    }
    x.write_lin(sp, 8, v)?;
    x.cpu.gpr[4] = sp;
    Ok(())
}

fn task_gate(
    x: &mut Exec,
    gate: &Descriptor,
    ext: u32,
    error_code: Option<u32>,
    ret: u64,
    rf: u64,
) -> Result<(), Stop> {
    let sel = gate.gate_selector();
    let err = selector_error(sel) | ext;
    if sel & 4 != 0 {
        return Err(x.raise(TS, Some(err)));
    }
    let (d, at) = read_descriptor(x, sel, false, GP)?;
    if d.code_or_data()
        || !matches!(
            d.kind(),
            segment::TYPE_TSS16_AVAILABLE | segment::TYPE_TSS32_AVAILABLE
        )
    {
        return Err(x.raise(TS, Some(err)));
    }
    if !d.present() {
        return Err(x.raise(NP, Some(err)));
    }
    task::switch(
        x,
        sel,
        d,
        at,
        TaskSwitch::Interrupt {
            ret,
            error_code,
            rf,
        },
    )
}

/// Real mode: FLAGS, CS and IP on the stack, CS:IP from the IVT (SDM vol 3 20.1.4).
fn deliver_real(x: &mut Exec, vector: u8, ret: u64) -> Result<(), Stop> {
    let at = vector as u64 * 4;
    if at + 3 > x.cpu.idtr.limit as u64 {
        return Err(x.gp(0));
    }
    let entry = x.read_system(x.cpu.idtr.base.wrapping_add(at) & 0xffff_ffff, 4)?;
    let flags = x.cpu.rflags();
    let cs = x.cpu.seg[CS].selector as u64;
    let saved = x.cpu.gpr[4];
    let r = x
        .push(flags, 2)
        .and_then(|_| x.push(cs, 2))
        .and_then(|_| x.push(ret, 2));
    if let Err(e) = r {
        x.cpu.gpr[4] = saved;
        return Err(e);
    }
    x.cpu.set_rflags(flags & !(IF | TF | AC | RF));
    let sel = (entry >> 16) as u16;
    let c = &mut x.cpu.seg[CS];
    c.selector = sel;
    c.base = (sel as u64) << 4;
    x.cpu.rip = entry & 0xffff;
    Ok(())
}

/// The class of an exception for the double-fault rules (SDM vol 3 Table 6-5).
#[derive(PartialEq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
    DoubleFault,
}

fn class(v: u8) -> Class {
    match v {
        0 | 10 | 11 | 12 | 13 => Class::Contributory,
        PF_VECTOR => Class::PageFault,
        DF_VECTOR => Class::DoubleFault,
        _ => Class::Benign,
    }
}

/// Delivers an exception the processor raised, with the double-fault rules for a
/// second exception during delivery. `Err` (with `Exit::Shutdown`) is a triple fault.
pub fn raise(x: &mut Exec, first: Fault, ret: u64, source: Source) -> Result<(), Stop> {
    let mut f = first;
    let mut src = source;
    let mut cause = ShutdownCause {
        first,
        ..ShutdownCause::default()
    };
    cause.push(first.vector);
    for _ in 0..3 {
        if let Some(cr2) = f.cr2 {
            x.cpu.cr2 = cr2;
        }
        match deliver(x, f.vector, f.error_code, src, ret) {
            Ok(()) => return Ok(()),
            Err(Stop::Exit) => return Err(Stop::Exit),
            Err(Stop::Fault) => {
                let second = x.fault;
                cause.push(second.vector);
                // "Processors update CR2 whenever a page fault is detected ... even if
                // the page fault results in a double fault or occurs during the
                // delivery of a double fault" (SDM vol 3 6.15, interrupt 14, footnote;
                // Linux's exc_double_fault reads CR2 to tell a stack overflow).
                if let Some(cr2) = second.cr2 {
                    x.cpu.cr2 = cr2;
                }
                let (a, b) = (class(f.vector), class(second.vector));
                if a == Class::DoubleFault && b != Class::Benign {
                    break;
                }
                let double = (a == Class::Contributory && b == Class::Contributory)
                    || (a == Class::PageFault && b != Class::Benign);
                f = if double {
                    cause.push(DF_VECTOR);
                    Fault {
                        vector: DF_VECTOR,
                        error_code: Some(0),
                        cr2: None,
                    }
                } else {
                    second
                };
                // An exception while delivering one is a fault (or #DF, an abort).
                src = Source::Fault;
            }
        }
    }
    Err(x.exit_with(crate::fault::Exit::Shutdown(cause)))
}

/// IRET/IRETD/IRETQ (SDM vol 2 IRET, "Operation"). A fault before the return commits
/// changes nothing; a task switch's faults belong to the new task.
pub fn iret(x: &mut Exec, size: usize) -> Result<(), Stop> {
    let saved = (x.cpu.gpr[4], x.cpu.seg, x.cpu.rflags(), x.cpu.tr);
    match iret_inner(x, size) {
        Ok(()) => {
            x.cpu.nmi_blocked = false;
            x.end_block = true;
            Ok(())
        }
        Err(e) => {
            if x.cpu.tr == saved.3 {
                x.cpu.gpr[4] = saved.0;
                x.cpu.seg = saved.1;
                x.cpu.set_rflags(saved.2);
            }
            Err(e)
        }
    }
}

fn iret_inner(x: &mut Exec, size: usize) -> Result<(), Stop> {
    let cpu_flags = x.cpu.rflags();
    if !x.cpu.protected() {
        let ip = x.peek(size, 0)?;
        let cs = x.peek(size, size as u64)? as u16;
        let fl = x.peek(size, 2 * size as u64)?;
        if ip & crate::flags::mask(size) > x.cpu.seg[CS].limit as u64 {
            return Err(x.gp(0));
        }
        let m = x.stack_mask();
        x.set_sp(x.cpu.gpr[4].wrapping_add(3 * size as u64) & m);
        let c = &mut x.cpu.seg[CS];
        c.selector = cs;
        c.base = (cs as u64) << 4;
        x.cpu.rip = ip & crate::flags::mask(size);
        let changeable = if size == 2 {
            0xffff
        } else {
            CF | PF | AF | ZF | SF | TF | IF | DF | OF | IOPL | NT | AC | ID | RF
        };
        x.cpu
            .set_rflags((cpu_flags & !changeable) | (fl & changeable));
        return Ok(());
    }
    if cpu_flags & VM != 0 {
        // V86 mode without VME: IOPL 3 returns within V86 mode, else #GP(0).
        if x.cpu.iopl() < 3 {
            return Err(x.gp(0));
        }
        let ip = x.peek(size, 0)?;
        let cs = x.peek(size, size as u64)? as u16;
        let fl = x.peek(size, 2 * size as u64)?;
        if ip & crate::flags::mask(size) > x.cpu.seg[CS].limit as u64 {
            return Err(x.gp(0));
        }
        let m = x.stack_mask();
        x.set_sp(x.cpu.gpr[4].wrapping_add(3 * size as u64) & m);
        x.cpu.seg[CS] = Segment::real(cs, 0xfb);
        x.cpu.rip = ip & crate::flags::mask(size);
        let keep = IOPL | VM | VIP | VIF;
        let changeable = if size == 2 {
            0xffff & !keep
        } else {
            DEFINED & !keep & !2
        };
        x.cpu
            .set_rflags((cpu_flags & !changeable) | (fl & changeable));
        return Ok(());
    }
    if cpu_flags & NT != 0 {
        if x.cpu.long_mode_active() {
            return Err(x.gp(0));
        }
        // Return from a nested task: to the TSS in the current one's back link.
        let link = x.read_system(x.cpu.tr.base, 2)? as u16;
        let err = selector_error(link);
        if link & 4 != 0 {
            return Err(x.raise(TS, Some(err)));
        }
        let (d, at) = read_descriptor(x, link, false, TS)?;
        if d.code_or_data()
            || !matches!(
                d.kind(),
                segment::TYPE_TSS16_BUSY | segment::TYPE_TSS32_BUSY
            )
        {
            return Err(x.raise(TS, Some(err)));
        }
        if !d.present() {
            return Err(x.raise(NP, Some(err)));
        }
        return task::switch(x, link, d, at, TaskSwitch::Iret);
    }
    let ip = x.peek(size, 0)?;
    let cs_sel = x.peek(size, size as u64)? as u16;
    let fl = x.peek(size, 2 * size as u64)?;
    let cpl = x.cpu.cpl();
    // Back to V86 mode: a 32-bit IRET at CPL 0 with VM set in the image.
    if fl & VM != 0 && cpl == 0 && size == 4 && !x.cpu.long_mode_active() {
        return iret_to_v86(x, ip, cs_sel, fl);
    }
    if cs_sel & !3 == 0 {
        return Err(x.gp(0));
    }
    let rpl = (cs_sel & 3) as u8;
    let (d, at) = read_descriptor(x, cs_sel, false, GP)?;
    let err = selector_error(cs_sel);
    if !d.is_code()
        || rpl < cpl
        || (d.conforming() && d.dpl() > rpl)
        || (!d.conforming() && d.dpl() != rpl)
    {
        return Err(x.gp(err));
    }
    if !d.present() {
        return Err(x.raise(NP, Some(err)));
    }
    let mode64 = x.cpu.mode64();
    let ip = ip & crate::flags::mask(size);
    let new_flags = iret_flags(x, cpu_flags, fl, size, cpl);
    if rpl == cpl && !mode64 {
        let cs = d.segment(cs_sel);
        if ip > cs.limit as u64 && !(x.cpu.long_mode_active() && cs.long()) {
            return Err(x.gp(0));
        }
        let m = x.stack_mask();
        x.set_sp(x.cpu.gpr[4].wrapping_add(3 * size as u64) & m);
        segment::set_accessed(x, &d, at)?;
        x.cpu.seg[CS] = Segment {
            attributes: cs.attributes | 1,
            ..cs
        };
        x.cpu.rip = ip;
        x.cpu.set_rflags(new_flags);
        return Ok(());
    }
    // Outer privilege (or any IRETQ in 64-bit mode): SS:RSP come off the stack too.
    let sp = x.peek(size, 3 * size as u64)?;
    let ss = x.peek(size, 4 * size as u64)? as u16;
    let cs = d.segment(cs_sel);
    let to_long = x.cpu.long_mode_active() && cs.long();
    if to_long && !crate::paging::canonical(ip) || !to_long && ip > cs.limit as u64 {
        return Err(x.gp(0));
    }
    segment::load_outer_stack(x, ss, rpl, &d)?;
    segment::set_accessed(x, &d, at)?;
    x.cpu.seg[CS] = Segment {
        attributes: cs.attributes | 1,
        ..cs
    };
    x.cpu.rip = ip;
    x.cpu.set_rflags(new_flags);
    if x.cpu.mode64() {
        x.cpu.gpr[4] = sp;
    } else if x.cpu.seg[SS].default_big() {
        x.cpu.gpr[4] = sp & 0xffff_ffff;
    } else {
        x.cpu.gpr[4] = (x.cpu.gpr[4] & !0xffff) | (sp & 0xffff);
    }
    if rpl > cpl {
        segment::null_outer_segments(x);
    }
    Ok(())
}

/// The flags IRET may restore at `cpl` (SDM vol 2 IRET): CPL 0 all but VM; above 0,
/// not IOPL, VIF, VIP, and IF only when CPL <= IOPL.
fn iret_flags(x: &Exec, old: u64, image: u64, size: usize, cpl: u8) -> u64 {
    let mut changeable =
        CF | PF | AF | ZF | SF | TF | IF | DF | OF | IOPL | NT | RF | AC | ID | VIF | VIP;
    if cpl > 0 {
        changeable &= !(IOPL | VIF | VIP);
        if cpl > x.cpu.iopl() {
            changeable &= !IF;
        }
    }
    if size == 2 {
        changeable &= 0xffff;
    }
    (old & !changeable) | (image & changeable)
}

fn iret_to_v86(x: &mut Exec, ip: u64, cs: u16, fl: u64) -> Result<(), Stop> {
    let mut v = [0u64; 6];
    for (i, slot) in v.iter_mut().enumerate() {
        *slot = x.peek(4, 12 + 4 * i as u64)?;
    }
    let [esp, ss, es, ds, fs, gs] = v;
    x.cpu.set_rflags(fl);
    let segs = [
        (ES, es),
        (CS, cs as u64),
        (SS, ss),
        (DS, ds),
        (FS, fs),
        (GS, gs),
    ];
    for (i, sel) in segs {
        x.cpu.seg[i] = Segment::real(sel as u16, 0xf3);
    }
    x.cpu.seg[CS].attributes = 0xfb;
    x.cpu.gpr[4] = esp & 0xffff_ffff;
    x.cpu.rip = ip & 0xffff;
    Ok(())
}
