//! String instructions: MOVS, STOS, LODS, CMPS, SCAS with REP/REPE/REPNE (SDM vol 2
//! and vol 1 7.3.9). A repeated instruction runs in batches: after [`BATCH`] elements
//! it stops with RIP still on it, so the run loop can look at interrupts, cancels and
//! deadlines, and the next execution resumes where it left off, as an interrupted REP
//! does on hardware. MOVS and STOS over RAM copy whole page-bounded chunks.

use crate::decode::{seg_index, Handler, Op, Rep, StringOp};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::flags::{mask, FlagOp, DF};
use crate::paging::Access;
use crate::state::ES;
use iced_x86::{Instruction, Mnemonic};

/// Elements per execution of a repeated instruction.
pub const BATCH: u64 = 4096;

/// Writes an address-size register: 16 bits merge, 32 bits zero-extend, 64 replace.
#[inline(always)]
fn set_addr_reg(x: &mut Exec, r: usize, asize: usize, v: u64) {
    match asize {
        2 => x.cpu.gpr[r] = (x.cpu.gpr[r] & !0xffff) | (v & 0xffff),
        4 => x.cpu.gpr[r] = v & 0xffff_ffff,
        _ => x.cpu.gpr[r] = v,
    }
}

/// One element of `kind`.
#[inline(always)]
fn element(x: &mut Exec, op: &Op, kind: StringOp, s: usize, step: u64) -> Result<(), Stop> {
    let am = mask(op.asize as usize);
    let a = op.asize as usize;
    let si = x.cpu.gpr[6] & am;
    let di = x.cpu.gpr[7] & am;
    match kind {
        StringOp::Movs => {
            let v = x.read(op.seg as usize, si, s)?;
            x.write(ES, di, s, v)?;
            set_addr_reg(x, 6, a, si.wrapping_add(step));
            set_addr_reg(x, 7, a, di.wrapping_add(step));
        }
        StringOp::Stos => {
            let v = x.reg(0, s);
            x.write(ES, di, s, v)?;
            set_addr_reg(x, 7, a, di.wrapping_add(step));
        }
        StringOp::Lods => {
            let v = x.read(op.seg as usize, si, s)?;
            x.set_reg(0, s, v);
            set_addr_reg(x, 6, a, si.wrapping_add(step));
        }
        StringOp::Cmps => {
            let v1 = x.read(op.seg as usize, si, s)?;
            let v2 = x.read(ES, di, s)?;
            let r = v1.wrapping_sub(v2) & mask(s);
            x.cpu.flags.record(FlagOp::Sub, s, r, v1, v2);
            set_addr_reg(x, 6, a, si.wrapping_add(step));
            set_addr_reg(x, 7, a, di.wrapping_add(step));
        }
        StringOp::Scas => {
            let acc = x.reg(0, s);
            let v = x.read(ES, di, s)?;
            let r = acc.wrapping_sub(v) & mask(s);
            x.cpu.flags.record(FlagOp::Sub, s, r, acc, v);
            set_addr_reg(x, 7, a, di.wrapping_add(step));
        }
    }
    Ok(())
}

fn once(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let step = if x.cpu.flags.bits & DF != 0 {
        (s as u64).wrapping_neg()
    } else {
        s as u64
    };
    element(x, op, op.string_op(), s, step)
}

fn repeated(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let am = mask(op.asize as usize);
    let a = op.asize as usize;
    let kind = op.string_op();
    let down = x.cpu.flags.bits & DF != 0;
    let step = if down {
        (s as u64).wrapping_neg()
    } else {
        s as u64
    };
    let mut done = 0u64;
    loop {
        let count = x.cpu.gpr[1] & am;
        if count == 0 {
            break;
        }
        if done >= BATCH {
            // More to do: run this instruction again after the loop had a look.
            x.cpu.rip = op.ip;
            x.end_block = true;
            break;
        }
        if !down && matches!(kind, StringOp::Movs | StringOp::Stos) {
            let n = chunk(x, op, s, count.min(BATCH - done))?;
            if n > 0 {
                done += n;
                set_addr_reg(x, 1, a, count - n);
                continue;
            }
        }
        element(x, op, kind, s, step)?;
        done += 1;
        set_addr_reg(x, 1, a, count - 1);
        if matches!(kind, StringOp::Cmps | StringOp::Scas) {
            let zf = x.cpu.flags.zf();
            // REPE stops on a difference, REPNE on a match.
            if (op.rep == Rep::Rep && !zf) || (op.rep == Rep::Repne && zf) {
                break;
            }
        }
    }
    x.work += done;
    Ok(())
}

/// MOVS/STOS forward over RAM: as many elements as fit in both pages at once, copied
/// element-wise in effect (an overlap where the destination trails the source by less
/// than a chunk repeats the pattern, as the element loop would). 0 when the fast path
/// does not apply (the element loop then takes one step, with its faults and exits).
fn chunk(x: &mut Exec, op: &Op, s: usize, count: u64) -> Result<u64, Stop> {
    let am = mask(op.asize as usize);
    let a = op.asize as usize;
    let si = x.cpu.gpr[6] & am;
    let di = x.cpu.gpr[7] & am;
    let dlin = match x.linear(ES, di, s, true) {
        Ok(l) => l,
        Err(_) => return Ok(0),
    };
    let room = |lin: u64, off: u64| -> u64 {
        let in_page = 0x1000 - (lin & 0xfff);
        let in_wrap = am - off + 1;
        in_page.min(in_wrap) / s as u64
    };
    let mut n = count.min(room(dlin, di));
    let user = x.cpu.cpl() == 3;
    let dst = match x.tlb.lookup(dlin, crate::tlb::need(Access::Write, user)) {
        Some(p) => p,
        None => return Ok(0),
    };
    if op.string_op() == StringOp::Stos {
        if n == 0 || x.linear(ES, di, (n as usize) * s, true).is_err() {
            return Ok(0);
        }
        let v = x.reg(0, s);
        for i in 0..n as usize {
            // SAFETY: `dst` starts a TLB-mapped, writable page; n elements fit in it.
            unsafe { hv_core::shared::store(dst.add(i * s), s, v) };
        }
        set_addr_reg(x, 7, a, di.wrapping_add(n * s as u64));
        return Ok(n);
    }
    let slin = match x.linear(op.seg as usize, si, s, false) {
        Ok(l) => l,
        Err(_) => return Ok(0),
    };
    n = n.min(room(slin, si));
    let src = match x.tlb.lookup(slin, crate::tlb::need(Access::Read, user)) {
        Some(p) => p,
        None => return Ok(0),
    };
    if n == 0
        || x.linear(ES, di, (n as usize) * s, true).is_err()
        || x.linear(op.seg as usize, si, (n as usize) * s, false)
            .is_err()
    {
        return Ok(0);
    }
    let bytes = n as usize * s;
    let (sp, dp) = (src as usize, dst as usize);
    if dp > sp && dp < sp + bytes {
        // The destination trails the source: copy in steps no longer than the gap.
        let gap = dp - sp;
        let mut k = 0;
        while k < bytes {
            let len = gap.min(bytes - k);
            // SAFETY: both ranges lie in their mapped pages; each step reads bytes
            // already final, as the element loop would have.
            unsafe { hv_core::shared::copy_within(src.add(k), dst.add(k), len) };
            k += len;
        }
    } else {
        // SAFETY: both ranges lie in their mapped pages (source readable, destination
        // writable); an overlap with the destination first is fine for a forward copy.
        unsafe { hv_core::shared::copy_within(src, dst, bytes) };
    }
    set_addr_reg(x, 6, a, si.wrapping_add(bytes as u64));
    set_addr_reg(x, 7, a, di.wrapping_add(bytes as u64));
    Ok(n)
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    let kind = match m {
        M::Movsb | M::Movsw | M::Movsd | M::Movsq => StringOp::Movs,
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => StringOp::Stos,
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => StringOp::Lods,
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => StringOp::Cmps,
        _ => StringOp::Scas,
    };
    op.set_string_op(kind);
    op.size = match m {
        M::Movsb | M::Stosb | M::Lodsb | M::Cmpsb | M::Scasb => 1,
        M::Movsw | M::Stosw | M::Lodsw | M::Cmpsw | M::Scasw => 2,
        M::Movsd | M::Stosd | M::Lodsd | M::Cmpsd | M::Scasd => 4,
        _ => 8,
    };
    // The source's segment (DS or its override: iced's `memory_segment` is the rSI
    // operand's); the destination is always ES.
    op.seg = match kind {
        StringOp::Movs | StringOp::Lods | StringOp::Cmps => seg_index(ins.memory_segment()),
        StringOp::Stos | StringOp::Scas => ES as u8,
    };
    Some(if op.rep != Rep::None { repeated } else { once })
}
