//! SIMD data movement: the full, half and scalar moves between XMM/MMX registers,
//! general registers and memory, the non-temporal and masked stores, sign masks,
//! shuffles, word inserts and extracts, MXCSR loads and stores, EMMS (SDM vol 2 for
//! each).

use super::{
    dst, dst_class, enter, enter_mmx, enter_sse, read_mem, reg, set_reg, src, src_class, write_mem,
    SimdClass,
};
use crate::decode::{Handler, Op};
use crate::exec::{Exec, NONE};
use crate::fault::Stop;
use crate::fpu::MXCSR_MASK;
use crate::state::CR0_TS;
use iced_x86::{Instruction, Mnemonic};

/// The low `n` bytes of `v`.
#[inline]
fn low(v: u128, n: usize) -> u128 {
    if n >= 16 {
        v
    } else {
        v & ((1u128 << (8 * n)) - 1)
    }
}

// `Op::imm2` for `mov`: how many bytes move, and what happens to the rest of an XMM
// destination.
const FULL: u64 = 0; // the whole register
const ZERO_UPPER: u64 = 1; // n bytes, the rest of the destination cleared
const MERGE: u64 = 2; // n bytes, the rest of the destination kept
const HIGH: u64 = 3; // the upper 8 bytes of an XMM register (MOVHPS/MOVHPD)

/// Moves of every shape: register to register, load, store.
fn mov(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let n = (op.imm2 >> 8) as usize;
    let how = op.imm2 & 0xff;
    if dst_class(op) == SimdClass::Mem {
        // A store: the source register (in `rm`), its low n bytes or its high half.
        let v = reg(x, src_class(op), op.rm, n);
        let v = if how == HIGH { v >> 64 } else { v };
        return write_mem(x, op, n, low(v, n));
    }
    let v = src(x, op, n)?;
    let d = dst_class(op);
    let out = match how {
        FULL => v,
        ZERO_UPPER => low(v, n),
        MERGE => {
            // A register source merges; a memory source clears the rest (MOVSS/MOVSD
            // loads), except for MOVLPS/MOVLPD, which `op.imm` marks.
            if op.rm == NONE && op.imm == 0 {
                low(v, n)
            } else {
                (dst(x, op) & !low(u128::MAX, n)) | low(v, n)
            }
        }
        _ => (dst(x, op) & u64::MAX as u128) | low(v, 8) << 64,
    };
    set_reg(
        x,
        d,
        op.r,
        if d == SimdClass::Gpr {
            op.size as usize
        } else {
            16
        },
        out,
    );
    Ok(())
}

/// MOVHLPS/MOVLHPS: one half of the source into the other half of the destination.
fn move_halves(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter_sse(x)?;
    let s = x.cpu.xmm[op.rm as usize];
    let d = &mut x.cpu.xmm[op.r as usize];
    *d = if op.imm2 == 0 {
        (*d & !(u64::MAX as u128)) | s >> 64
    } else {
        (*d & u64::MAX as u128) | s << 64
    };
    Ok(())
}

/// MOVQ2DQ (MMX to XMM, upper cleared) and MOVDQ2Q (XMM low half to MMX).
fn mmx_xmm(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter_sse(x)?;
    enter_mmx(x)?;
    if dst_class(op) == SimdClass::Xmm {
        x.cpu.xmm[op.r as usize] = x.cpu.fpu.mm(op.rm as usize) as u128;
    } else {
        let v = x.cpu.xmm[op.rm as usize] as u64;
        x.cpu.fpu.set_mm(op.r as usize, v);
    }
    Ok(())
}

/// MOVMSKPS, MOVMSKPD, PMOVMSKB: the lanes' sign bits into a general register.
fn movmsk(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let lane = op.imm2 as usize;
    let w = if src_class(op) == SimdClass::Mmx {
        8
    } else {
        16
    };
    let v = reg(x, src_class(op), op.rm, w);
    let mut m = 0u64;
    for i in 0..w / lane {
        m |= ((v >> (8 * lane * (i + 1) - 1)) & 1) as u64 * (1 << i);
    }
    x.set_reg(op.r, op.size as usize, m);
    Ok(())
}

/// MOVNTI: a non-temporal store of a general register (no SIMD state involved).
fn movnti(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let v = x.reg(op.rm, op.size as usize) as u128;
    write_mem(x, op, op.size as usize, v)
}

/// MASKMOVQ/MASKMOVDQU: the bytes of `r` whose mask byte (in `rm`) has its top bit set,
/// stored at DS:rDI (SDM vol 2 MASKMOVDQU).
fn maskmov(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let w = if dst_class(op) == SimdClass::Mmx {
        8
    } else {
        16
    };
    let data = reg(x, dst_class(op), op.r, w);
    let mask = reg(x, src_class(op), op.rm, w);
    let a = x.cpu.gpr[7] & crate::flags::mask(op.asize as usize);
    for i in 0..w {
        if (mask >> (8 * i + 7)) & 1 != 0 {
            let at = a.wrapping_add(i as u64) & crate::flags::mask(op.asize as usize);
            x.write(op.seg as usize, at, 1, (data >> (8 * i)) as u64 & 0xff)?;
        }
    }
    Ok(())
}

/// PSHUFD, PSHUFHW, PSHUFLW, PSHUFW: lanes picked by the immediate's 2-bit fields.
fn pshuf(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let w = if dst_class(op) == SimdClass::Mmx {
        8
    } else {
        16
    };
    let v = src(x, op, w)?;
    let sel = |v: u64, lanes: u32, size: u32| -> u64 {
        (0..lanes).fold(0u64, |out, i| {
            let k = (op.imm >> (2 * i)) & 3;
            out | ((v >> (size * k as u32)) & ((1u64 << size) - 1)) << (size * i)
        })
    };
    let out = match op.imm2 {
        // PSHUFD: four dwords.
        0 => (0..4).fold(0u128, |out, i| {
            let k = (op.imm >> (2 * i)) & 3;
            out | ((v >> (32 * k)) & 0xffff_ffff) << (32 * i)
        }),
        // PSHUFHW: the high four words; the low quadword is copied.
        1 => (v & u64::MAX as u128) | (sel((v >> 64) as u64, 4, 16) as u128) << 64,
        // PSHUFLW: the low four words; the high quadword is copied.
        2 => (v & !(u64::MAX as u128)) | sel(v as u64, 4, 16) as u128,
        // PSHUFW (MMX).
        _ => sel(v as u64, 4, 16) as u128,
    };
    set_reg(x, dst_class(op), op.r, w, out);
    Ok(())
}

/// SHUFPS (two lanes from the destination, two from the source) and SHUFPD.
fn shufp(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter_sse(x)?;
    let b = src(x, op, 16)?;
    let a = dst(x, op);
    let i = op.imm;
    let out = if op.imm2 == 0 {
        let pick = |v: u128, k: u64| (v >> (32 * (k & 3))) & 0xffff_ffff;
        pick(a, i) | pick(a, i >> 2) << 32 | pick(b, i >> 4) << 64 | pick(b, i >> 6) << 96
    } else {
        let pick = |v: u128, k: u64| (v >> (64 * (k & 1))) & u64::MAX as u128;
        pick(a, i) | pick(b, i >> 1) << 64
    };
    x.cpu.xmm[op.r as usize] = out;
    Ok(())
}

/// PEXTRW: a word of an MMX or XMM register, zero-extended into a general register.
fn pextrw(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let w = if src_class(op) == SimdClass::Mmx {
        4
    } else {
        8
    };
    let v = reg(x, src_class(op), op.rm, 16);
    let word = (v >> (16 * (op.imm as usize % w))) as u64 & 0xffff;
    x.set_reg(op.r, op.size as usize, word);
    Ok(())
}

/// PINSRW: a word from a general register or memory into the selected lane.
fn pinsrw(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter(x, op)?;
    let lanes = if dst_class(op) == SimdClass::Mmx {
        4
    } else {
        8
    };
    let v = if op.rm == NONE {
        read_mem(x, op, 2)?
    } else {
        x.reg(op.rm, 4) as u128
    } & 0xffff;
    let s = 16 * (op.imm as usize % lanes);
    let d = (dst(x, op) & !(0xffffu128 << s)) | v << s;
    set_reg(x, dst_class(op), op.r, 16, d);
    Ok(())
}

/// LDMXCSR (#GP(0) for a reserved bit) and STMXCSR.
fn mxcsr(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    enter_sse(x)?;
    if op.imm2 == 0 {
        let v = read_mem(x, op, 4)? as u32;
        if v & !MXCSR_MASK != 0 {
            return Err(x.gp(0));
        }
        x.cpu.mxcsr = v;
        Ok(())
    } else {
        let v = x.cpu.mxcsr as u128;
        write_mem(x, op, 4, v)
    }
}

/// EMMS: every x87 register empty (SDM vol 2 EMMS: #UD with CR0.EM, #NM with CR0.TS,
/// #MF for a pending exception).
fn emms(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    if x.cpu.cr0 & crate::state::CR0_EM != 0 {
        return Err(x.ud());
    }
    if x.cpu.cr0 & CR0_TS != 0 {
        return Err(x.raise(crate::fault::NM, None));
    }
    if x.cpu.fpu.pending() && x.cpu.cr0 & crate::state::CR0_NE != 0 {
        return Err(x.raise(crate::fault::MF, None));
    }
    x.cpu.fpu.empty = 0xff;
    Ok(())
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    let set = |op: &mut Op, how: u64, n: u64| op.imm2 = how | n << 8;
    Some(match m {
        M::Movaps
        | M::Movups
        | M::Movapd
        | M::Movupd
        | M::Movdqa
        | M::Movdqu
        | M::Movntps
        | M::Movntpd
        | M::Movntdq => {
            set(op, FULL, 16);
            mov
        }
        M::Movntq => {
            set(op, FULL, 8);
            mov
        }
        M::Movss => {
            set(op, MERGE, 4);
            op.imm = 0;
            mov
        }
        M::Movsd => {
            set(op, MERGE, 8);
            op.imm = 0;
            mov
        }
        M::Movlps | M::Movlpd => {
            // A load keeps the upper half (`imm` 1 marks it); a store writes the low 8.
            set(op, MERGE, 8);
            op.imm = 1;
            mov
        }
        M::Movhps | M::Movhpd => {
            set(op, HIGH, 8);
            mov
        }
        M::Movhlps | M::Movlhps => {
            op.imm2 = (m == M::Movlhps) as u64;
            move_halves
        }
        M::Movd | M::Movq => {
            // Into an XMM register the rest is cleared; between MMX registers or into a
            // general register, the operand size decides.
            let n = if m == M::Movd { 4 } else { 8 };
            let d = dst_class(op);
            if d == SimdClass::Xmm {
                set(op, ZERO_UPPER, n);
            } else if d == SimdClass::Gpr {
                set(op, FULL, n);
                op.size = n as u8;
            } else {
                set(op, ZERO_UPPER, n);
            }
            mov
        }
        M::Movq2dq | M::Movdq2q => mmx_xmm,
        M::Movmskps => {
            op.imm2 = 4;
            movmsk
        }
        M::Movmskpd => {
            op.imm2 = 8;
            movmsk
        }
        M::Pmovmskb => {
            op.imm2 = 1;
            movmsk
        }
        M::Movnti => movnti,
        M::Maskmovq | M::Maskmovdqu => {
            // The implicit destination is DS:rDI (overridable); the operands are the
            // data and the mask registers.
            let class = if m == M::Maskmovq {
                SimdClass::Mmx
            } else {
                SimdClass::Xmm
            };
            let n = |r: iced_x86::Register| {
                let base = if class == SimdClass::Mmx {
                    iced_x86::Register::MM0
                } else {
                    iced_x86::Register::XMM0
                };
                ((r as u32).wrapping_sub(base as u32) & 15) as u8
            };
            op.r = n(ins.op_register(1));
            op.rm = n(ins.op_register(2));
            // Neither MASKMOVQ's 8 bytes nor MASKMOVDQU's need alignment.
            op.set_simd(class, class, false);
            op.seg = crate::decode::seg_index(ins.memory_segment());
            maskmov
        }
        M::Pshufd => {
            op.imm2 = 0;
            pshuf
        }
        M::Pshufhw => {
            op.imm2 = 1;
            pshuf
        }
        M::Pshuflw => {
            op.imm2 = 2;
            pshuf
        }
        M::Pshufw => {
            op.imm2 = 3;
            pshuf
        }
        M::Shufps => {
            op.imm2 = 0;
            shufp
        }
        M::Shufpd => {
            op.imm2 = 1;
            shufp
        }
        M::Pextrw => pextrw,
        M::Pinsrw => pinsrw,
        M::Ldmxcsr => {
            op.imm2 = 0;
            mxcsr
        }
        M::Stmxcsr => {
            op.imm2 = 1;
            mxcsr
        }
        M::Emms => emms,
        _ => return None,
    })
}
