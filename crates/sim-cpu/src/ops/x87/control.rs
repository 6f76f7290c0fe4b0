//! x87 control instructions: FNINIT, FNCLEX, FNSTCW/FLDCW, FNSTSW, FNSTENV/FLDENV,
//! FNSAVE/FRSTOR (and their waiting forms), the 8087/287 leftovers the 387 ignores,
//! and FXSAVE/FXRSTOR (SDM vol 2 for each; layouts: vol 1 8.1.10, Figures 8-9 to 8-12,
//! and vol 1 10.5.1, Tables 10-2 and 10-3).

use super::enter;
use crate::decode::{ea, Handler, Op};
use crate::exec::Exec;
use crate::fault::Stop;
use crate::fpu::Fpu;
use crate::state::{Cpu, CR0_EM, CR0_TS};
use iced_x86::{Instruction, MemorySize, Mnemonic, OpKind};

use crate::fpu::MXCSR_MASK;

const INIT: u64 = 0;
const CLEX: u64 = 1;
const STCW: u64 = 2;
const LDCW: u64 = 3;
const STSW: u64 = 4;
const STSW_AX: u64 = 5;
const STENV: u64 = 6;
const LDENV: u64 = 7;
const SAVE: u64 = 8;
const RSTOR: u64 = 9;
const IGNORED: u64 = 10;

/// Bit 4 of `op.imm`: the waiting form (FINIT, FSTSW...), which checks for a pending
/// exception first.
const WAITING: u64 = 16;

fn control(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let kind = op.imm & 15;
    // FLDCW, FLDENV and FRSTOR are waiting instructions; the FN forms are not.
    let waiting = op.imm & WAITING != 0 || matches!(kind, LDCW | LDENV | RSTOR);
    enter(x, waiting)?;
    match kind {
        INIT => x.cpu.fpu.init(),
        CLEX => {
            x.cpu.fpu.fsw &= !(0x3f | crate::fpu::FSW_SF | crate::fpu::FSW_ES | crate::fpu::FSW_B)
        }
        STCW => {
            let a = ea(x, op);
            x.write(op.seg as usize, a, 2, x.cpu.fpu.fcw as u64)?;
        }
        LDCW => {
            let a = ea(x, op);
            let v = x.read(op.seg as usize, a, 2)? as u16;
            // Bit 6 reads as 1; bits 13-15 are reserved (SDM vol 1 Figure 8-6).
            x.cpu.fpu.fcw = (v & 0x1f3f) | 0x40;
            x.cpu.fpu.update_summary();
        }
        STSW => {
            let a = ea(x, op);
            x.write(op.seg as usize, a, 2, x.cpu.fpu.fsw as u64)?;
        }
        STSW_AX => {
            let v = x.cpu.fpu.fsw as u64;
            x.set_reg(0, 2, v);
        }
        STENV | SAVE => {
            let a = ea(x, op);
            let wide = op.size == 4;
            let env = env_image(x.cpu, wide);
            let mut bytes = env.to_vec();
            if kind == SAVE {
                for i in 0..8 {
                    bytes.extend_from_slice(&x.cpu.fpu.st(i).to_le_bytes()[..10]);
                }
            }
            x.write_bytes(op.seg as usize, a, &bytes)?;
            if kind == STENV {
                // FNSTENV masks every exception afterwards.
                x.cpu.fpu.fcw |= 0x3f;
                x.cpu.fpu.update_summary();
            } else {
                x.cpu.fpu.init();
            }
        }
        LDENV | RSTOR => {
            let a = ea(x, op);
            let wide = op.size == 4;
            let n = if wide { 28 } else { 14 };
            let total = if kind == RSTOR { n + 80 } else { n };
            let mut b = [0u8; 108];
            x.read_bytes(op.seg as usize, a, &mut b[..total])?;
            load_env(x.cpu, &b[..n], wide);
            if kind == RSTOR {
                for i in 0..8 {
                    let mut r = [0u8; 16];
                    r[..10].copy_from_slice(&b[n + 10 * i..n + 10 * i + 10]);
                    let p = x.cpu.fpu.phys(i);
                    x.cpu.fpu.regs[p] = u128::from_le_bytes(r);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The environment image: 28 bytes (32-bit operand size) or 14 (16-bit), in the
/// protected-mode or real-mode layout by the current mode.
fn env_image(cpu: &Cpu, wide: bool) -> Vec<u8> {
    let f = &cpu.fpu;
    let real = !cpu.protected() || cpu.v86();
    let tag = f.tag_word();
    let mut out = Vec::with_capacity(28);
    let put16 = |o: &mut Vec<u8>, v: u16| o.extend_from_slice(&v.to_le_bytes());
    let put32 = |o: &mut Vec<u8>, v: u32| o.extend_from_slice(&v.to_le_bytes());
    let fop = (f.fop & 0x7ff) as u32;
    if wide {
        // The upper halves of the first three dwords read as 1s on Intel processors.
        put32(&mut out, 0xffff_0000 | f.fcw as u32);
        put32(&mut out, 0xffff_0000 | f.fsw as u32);
        put32(&mut out, 0xffff_0000 | tag as u32);
        if real {
            // Real mode: linear 32-bit pointers split in halves, FOP beside (Figure 8-10).
            let ip = f.fip as u32;
            let dp = f.fdp as u32;
            put32(&mut out, 0xffff_0000 | (ip & 0xffff));
            put32(&mut out, (ip >> 16) << 12 | fop);
            put32(&mut out, 0xffff_0000 | (dp & 0xffff));
            put32(&mut out, (dp >> 16) << 12);
        } else {
            put32(&mut out, f.fip as u32);
            put32(&mut out, f.fcs as u32 | fop << 16);
            put32(&mut out, f.fdp as u32);
            put32(&mut out, 0xffff_0000 | f.fds as u32);
        }
    } else {
        put16(&mut out, f.fcw);
        put16(&mut out, f.fsw);
        put16(&mut out, tag);
        if real {
            let ip = f.fip as u32;
            let dp = f.fdp as u32;
            put16(&mut out, ip as u16);
            put16(&mut out, ((ip >> 16) << 12) as u16 | fop as u16);
            put16(&mut out, dp as u16);
            put16(&mut out, ((dp >> 16) << 12) as u16);
        } else {
            put16(&mut out, f.fip as u16);
            put16(&mut out, f.fcs);
            put16(&mut out, f.fdp as u16);
            put16(&mut out, f.fds);
        }
    }
    out
}

/// Loads an environment image (the inverse of [`env_image`]).
fn load_env(cpu: &mut Cpu, b: &[u8], wide: bool) {
    let real = !cpu.protected() || cpu.v86();
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let f = &mut cpu.fpu;
    let s = if wide { 4 } else { 2 };
    f.fcw = (u16_at(0) & 0x1f3f) | 0x40;
    f.fsw = u16_at(s);
    f.set_tag_word(u16_at(2 * s));
    if wide {
        if real {
            f.fip = (u32_at(12) & 0xffff) as u64 | ((u32_at(16) >> 12) as u64 & 0xffff) << 16;
            f.fop = (u32_at(16) & 0x7ff) as u16;
            f.fdp = (u32_at(20) & 0xffff) as u64 | ((u32_at(24) >> 12) as u64 & 0xffff) << 16;
        } else {
            f.fip = u32_at(12) as u64;
            f.fcs = u16_at(16);
            f.fop = ((u32_at(16) >> 16) & 0x7ff) as u16;
            f.fdp = u32_at(20) as u64;
            f.fds = u16_at(24);
        }
    } else if real {
        f.fip = u16_at(6) as u64 | ((u16_at(8) >> 12) as u64) << 16;
        f.fop = u16_at(8) & 0x7ff;
        f.fdp = u16_at(10) as u64 | ((u16_at(12) >> 12) as u64) << 16;
    } else {
        f.fip = u16_at(6) as u64;
        f.fcs = u16_at(8);
        f.fdp = u16_at(10) as u64;
        f.fds = u16_at(12);
    }
    f.update_summary();
}

/// The FXSAVE image of `cpu` (512 bytes; the reserved and available areas as in
/// `base`, which FXSAVE does not write). `rex_w`: the 64-bit layout of FIP/FDP;
/// `xmm_regs`: 16 in 64-bit mode, else 8.
pub fn fxsave_image(cpu: &Cpu, base: &mut [u8; 512], rex_w: bool, xmm_regs: usize) {
    let f: &Fpu = &cpu.fpu;
    base[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    base[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    base[4] = f.abridged_tags();
    base[5] = 0;
    base[6..8].copy_from_slice(&(f.fop & 0x7ff).to_le_bytes());
    if rex_w {
        base[8..16].copy_from_slice(&f.fip.to_le_bytes());
        base[16..24].copy_from_slice(&f.fdp.to_le_bytes());
    } else {
        base[8..12].copy_from_slice(&(f.fip as u32).to_le_bytes());
        base[12..14].copy_from_slice(&f.fcs.to_le_bytes());
        base[14..16].copy_from_slice(&[0, 0]);
        base[16..20].copy_from_slice(&(f.fdp as u32).to_le_bytes());
        base[20..22].copy_from_slice(&f.fds.to_le_bytes());
        base[22..24].copy_from_slice(&[0, 0]);
    }
    base[24..28].copy_from_slice(&cpu.mxcsr.to_le_bytes());
    base[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for i in 0..8 {
        let o = 32 + 16 * i;
        base[o..o + 10].copy_from_slice(&f.st(i).to_le_bytes()[..10]);
        base[o + 10..o + 16].fill(0);
    }
    for i in 0..xmm_regs {
        let o = 160 + 16 * i;
        base[o..o + 16].copy_from_slice(&cpu.xmm[i].to_le_bytes());
    }
}

/// Loads an FXSAVE image; false when MXCSR has a reserved bit set (#GP).
pub fn fxrstor_image(cpu: &mut Cpu, b: &[u8; 512], rex_w: bool, xmm_regs: usize) -> bool {
    let mxcsr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if mxcsr & !MXCSR_MASK != 0 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let f = &mut cpu.fpu;
    f.fcw = (u16_at(0) & 0x1f3f) | 0x40;
    f.fsw = u16_at(2);
    f.empty = !b[4];
    f.fop = u16_at(6) & 0x7ff;
    if rex_w {
        f.fip = u64_at(8);
        f.fdp = u64_at(16);
    } else {
        f.fip = u32_at(8) as u64;
        f.fcs = u16_at(12);
        f.fdp = u32_at(16) as u64;
        f.fds = u16_at(20);
    }
    for i in 0..8 {
        let o = 32 + 16 * i;
        let mut r = [0u8; 16];
        r[..10].copy_from_slice(&b[o..o + 10]);
        let p = f.phys(i);
        f.regs[p] = u128::from_le_bytes(r);
    }
    f.update_summary();
    cpu.mxcsr = mxcsr;
    for i in 0..xmm_regs {
        let o = 160 + 16 * i;
        cpu.xmm[i] = u128::from_le_bytes(b[o..o + 16].try_into().unwrap_or_default());
    }
    true
}

/// FXSAVE/FXRSTOR (and the 64 forms): #NM with CR0.TS, #UD with CR0.EM, #GP(0) for an
/// operand not 16-byte aligned; no check for pending x87 exceptions.
fn fx(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.cr0 & CR0_EM != 0 {
        return Err(x.ud());
    }
    if x.cpu.cr0 & CR0_TS != 0 {
        return Err(x.raise(crate::fault::NM, None));
    }
    let a = ea(x, op);
    let lin = x.linear(op.seg as usize, a, 512, false)?;
    if lin & 15 != 0 {
        return Err(x.gp(0));
    }
    let rex_w = op.imm & 2 != 0;
    let regs = if x.cpu.mode64() { 16 } else { 8 };
    let mut image = [0u8; 512];
    x.read_bytes(op.seg as usize, a, &mut image)?;
    if op.imm & 1 == 0 {
        fxsave_image(x.cpu, &mut image, rex_w, regs);
        x.write_bytes(op.seg as usize, a, &image)?;
    } else if !fxrstor_image(x.cpu, &image, rex_w, regs) {
        return Err(x.gp(0));
    }
    Ok(())
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    if matches!(m, M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64) {
        op.imm = matches!(m, M::Fxrstor | M::Fxrstor64) as u64
            | (matches!(m, M::Fxsave64 | M::Fxrstor64) as u64) << 1;
        return Some(fx);
    }
    let (kind, waiting) = match m {
        M::Finit => (INIT, true),
        M::Fninit => (INIT, false),
        M::Fclex => (CLEX, true),
        M::Fnclex => (CLEX, false),
        M::Fstcw => (STCW, true),
        M::Fnstcw => (STCW, false),
        M::Fldcw => (LDCW, false),
        M::Fstsw | M::Fnstsw => {
            let ax = ins.op_count() == 1 && ins.op_kind(0) == OpKind::Register;
            (if ax { STSW_AX } else { STSW }, m == M::Fstsw)
        }
        M::Fstenv => (STENV, true),
        M::Fnstenv => (STENV, false),
        M::Fldenv => (LDENV, false),
        M::Fsave => (SAVE, true),
        M::Fnsave => (SAVE, false),
        M::Frstor => (RSTOR, false),
        // FENI, FDISI, FSETPM: the 387 and later treat them as FNOP.
        M::Feni | M::Fdisi | M::Fsetpm => (IGNORED, true),
        _ => (IGNORED, false),
    };
    // The environment's operand size: 28/108 bytes with 32-bit operands, 14/94 with 16.
    op.size = match ins.memory_size() {
        MemorySize::FpuEnv14 | MemorySize::FpuState94 => 2,
        _ => 4,
    };
    op.imm = kind | if waiting { WAITING } else { 0 };
    Some(control)
}
