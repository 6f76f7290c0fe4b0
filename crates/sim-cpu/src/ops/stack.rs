//! The stack: PUSH/POP of registers, memory, immediates and segment registers,
//! PUSHA/POPA, PUSHF/POPF with their privilege rules, ENTER/LEAVE (SDM vol 2).

use crate::decode::{ea, gpr, seg_index, Handler, Op};
use crate::exec::{Exec, NONE};
use crate::fault::Stop;
use crate::flags::*;
use crate::segment::load_data_segment;
use crate::state::SS;
use iced_x86::{Code, Instruction, Mnemonic, OpKind};

fn push_r<const S: usize, const M64: bool>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let v = x.reg(op.r, S);
    x.push_in::<M64>(v, S)
}

fn push_i(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    x.push(op.imm, op.size as usize)
}

fn push_m(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let at = ea(x, op);
    let v = x.read(op.seg as usize, at, s)?;
    x.push(v, s)
}

/// PUSH Sreg: with a 32- or 64-bit operand size the stack pointer moves by that much
/// but only the selector's 16 bits are written, as recent Intel processors do (SDM vol
/// 2 PUSH, "Operation").
fn push_seg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let sel = x.cpu.seg[op.segment_register()].selector as u64;
    let m = x.stack_mask();
    let sp = x.cpu.gpr[4].wrapping_sub(s as u64) & m;
    x.write(SS, sp, 2, sel)?;
    x.set_sp(sp);
    Ok(())
}

fn pop_r<const S: usize, const M64: bool>(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let v = x.pop_in::<M64>(S)?;
    x.set_reg(op.r, S, v);
    Ok(())
}

/// POP r/m: the address is computed with the incremented stack pointer, which comes
/// back if the store faults.
fn pop_m(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let v = x.peek(s, 0)?;
    let saved = x.cpu.gpr[4];
    let m = x.stack_mask();
    x.set_sp(saved.wrapping_add(s as u64) & m);
    let at = ea(x, op);
    if let Err(e) = x.write(op.seg as usize, at, s, v) {
        x.cpu.gpr[4] = saved;
        return Err(e);
    }
    Ok(())
}

fn pop_seg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let v = x.peek(s, 0)?;
    // The stack's width is the one the instruction began with, even when it loads SS.
    let m = x.stack_mask();
    let sp = x.cpu.gpr[4];
    load_data_segment(x, op.segment_register(), v as u16)?;
    x.cpu.gpr[4] = (sp & !m) | (sp.wrapping_add(s as u64) & m);
    if op.segment_register() == SS {
        // Interrupts and debug exceptions wait for the next instruction (SDM vol 3 6.8.3).
        x.cpu.shadow = crate::state::Shadow::MOV_SS;
    }
    Ok(())
}

pub fn compile_push_pop(ins: &Instruction, op: &mut Op, bits: u32) -> Option<Handler> {
    let push = ins.mnemonic() == Mnemonic::Push;
    op.size = ins.stack_pointer_increment().unsigned_abs() as u8;
    match ins.op_kind(0) {
        OpKind::Register if ins.op_register(0).is_segment_register() => {
            op.set_segment_register(seg_index(ins.op_register(0)) as usize);
            if !push && op.segment_register() == crate::state::CS {
                return Some(crate::decode::invalid);
            }
            Some(if push { push_seg } else { pop_seg })
        }
        OpKind::Register => {
            op.r = gpr(ins.op_register(0));
            Some(match (push, op.size, bits == 64) {
                (true, 2, true) => push_r::<2, true> as Handler,
                (true, 2, false) => push_r::<2, false>,
                (true, 4, _) => push_r::<4, false>,
                (true, _, _) => push_r::<8, true>,
                (false, 2, true) => pop_r::<2, true>,
                (false, 2, false) => pop_r::<2, false>,
                (false, 4, _) => pop_r::<4, false>,
                (false, _, _) => pop_r::<8, true>,
            })
        }
        OpKind::Memory => {
            op.rm = NONE;
            Some(if push { push_m } else { pop_m })
        }
        _ => {
            op.imm = ins.immediate(0) & mask(op.size as usize);
            Some(push_i)
        }
    }
}

const PUSH_ORDER: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// PUSHA/PUSHAD: AX, CX, DX, BX, the original SP, BP, SI, DI; nothing moves unless
/// all eight fit.
fn pusha(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let m = x.stack_mask();
    let start = x.cpu.gpr[4];
    let values: Vec<u64> = PUSH_ORDER.iter().map(|&r| x.reg(r, s)).collect();
    for (i, v) in values.iter().enumerate() {
        let sp = start.wrapping_sub((s * (i + 1)) as u64) & m;
        x.write(SS, sp, s, *v)?;
    }
    x.set_sp(start.wrapping_sub((s * 8) as u64) & m);
    Ok(())
}

/// POPA/POPAD: DI, SI, BP, (SP skipped), BX, DX, CX, AX.
fn popa(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let mut v = [0u64; 8];
    for (i, slot) in v.iter_mut().enumerate() {
        *slot = x.peek(s, (s * i) as u64)?;
    }
    for (i, r) in [7u8, 6, 5, 4, 3, 2, 1, 0].iter().enumerate() {
        if *r != 4 {
            x.set_reg(*r, s, v[i]);
        }
    }
    let m = x.stack_mask();
    x.set_sp(x.cpu.gpr[4].wrapping_add((s * 8) as u64) & m);
    Ok(())
}

pub fn compile_pusha(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    op.size = match ins.mnemonic() {
        M::Pusha | M::Popa => 2,
        _ => 4,
    };
    Some(match ins.mnemonic() {
        M::Pusha | M::Pushad => pusha,
        _ => popa,
    })
}

/// PUSHF: RFLAGS with VM and RF cleared in the image; #GP(0) in V86 mode with IOPL < 3.
fn pushf(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.v86() && x.cpu.iopl() < 3 {
        return Err(x.gp(0));
    }
    let f = x.cpu.rflags() & !(VM | RF);
    x.push(f, op.size as usize)
}

/// POPF: which flags it may change depends on the mode, CPL and IOPL (SDM vol 2
/// POPF, "Operation"); RF is cleared; VM, VIF and VIP never change.
fn popf(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let cpl = x.cpu.cpl();
    let iopl = x.cpu.iopl();
    if x.cpu.v86() && iopl < 3 {
        return Err(x.gp(0));
    }
    let v = x.pop(s)?;
    let mut changeable = CF | PF | AF | ZF | SF | TF | IF | DF | OF | IOPL | NT | AC | ID;
    if x.cpu.v86() || cpl > 0 {
        changeable &= !IOPL;
    }
    if !x.cpu.v86() && cpl > iopl {
        changeable &= !IF;
    }
    if s == 2 {
        changeable &= 0xffff;
    }
    let old = x.cpu.rflags();
    let mut new = (old & !changeable) | (v & changeable);
    if s != 2 {
        new &= !RF;
    }
    x.cpu.set_rflags(new);
    Ok(())
}

pub fn compile_pushf(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    op.size = ins.stack_pointer_increment().unsigned_abs() as u8;
    Some(match ins.mnemonic() {
        M::Pushf | M::Pushfd | M::Pushfq => pushf,
        _ => popf,
    })
}

/// ENTER imm16, imm8 (SDM vol 2 ENTER): a frame with `imm8 % 32` levels of display.
fn enter(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let alloc = op.imm & 0xffff;
    let level = op.imm2 % 32;
    let saved = (x.cpu.gpr[4], x.cpu.gpr[5]);
    let result = (|| {
        let m = x.stack_mask();
        let bp = x.reg(5, s);
        x.push(bp, s)?;
        // FrameTemp is all of (E/R)SP; BP/EBP/RBP takes its operand-size part.
        let frame = x.cpu.gpr[4];
        if level > 0 {
            let mut rbp = x.cpu.gpr[5];
            for _ in 1..level {
                rbp = rbp.wrapping_sub(s as u64) & m;
                let v = x.read(SS, rbp, s)?;
                x.push(v, s)?;
            }
            x.push(frame, s)?;
        }
        let sp = x.cpu.gpr[4].wrapping_sub(alloc) & m;
        // The frame must be writable where it ends (a fault leaves nothing changed).
        x.probe_write(SS, sp, 1)?;
        x.set_reg(5, s, frame);
        x.set_sp(sp);
        Ok(())
    })();
    if result.is_err() {
        (x.cpu.gpr[4], x.cpu.gpr[5]) = saved;
    }
    result
}

/// LEAVE: RSP = RBP (at the stack's width), then RBP = POP (at the operand size).
fn leave(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = op.size as usize;
    let saved = x.cpu.gpr[4];
    let bp = x.cpu.gpr[5];
    x.set_sp(bp);
    match x.pop(s) {
        Ok(v) => {
            x.set_reg(5, s, v);
            Ok(())
        }
        Err(e) => {
            x.cpu.gpr[4] = saved;
            Err(e)
        }
    }
}

pub fn compile_enter_leave(ins: &Instruction, op: &mut Op, _bits: u32) -> Option<Handler> {
    // The operand size comes from the Code: iced reports no stack increment for LEAVE.
    op.size = match ins.code() {
        Code::Enterw_imm16_imm8 | Code::Leavew => 2,
        Code::Enterd_imm16_imm8 | Code::Leaved => 4,
        _ => 8,
    };
    if ins.mnemonic() == Mnemonic::Enter {
        op.imm = ins.immediate16() as u64;
        op.imm2 = ins.immediate8_2nd() as u64;
        Some(enter)
    } else {
        Some(leave)
    }
}
