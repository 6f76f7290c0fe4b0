//! MMX, SSE and SSE2 judged by the host CPU: every instruction form runs natively
//! (host-exec) and in the sim from the same XMM, MMX and general registers, MXCSR
//! (every rounding mode, DAZ, FTZ, the masks — some unmasked, so #XM is compared too)
//! and memory; lanes hold zeros, denormals, infinities, NaNs of both kinds, the ends of
//! the range and random values. The FXSAVE image (registers, MXCSR, tags), the general
//! registers, the flags, memory and the exception must be equal. RCPPS and RSQRTPS,
//! approximations whose low bits the manual leaves to the implementation, are held to
//! its bound instead (SDM vol 2 RCPPS: |relative error| ≤ 1.5 · 2^-12).
#![cfg(target_arch = "x86_64")]

mod common;

use common::*;
use host_exec::FxImage;
use iced_x86::code_asm::*;

type Emit = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// A float of `exp_bits`/`frac_bits` of one of the interesting kinds.
fn float(r: &mut Rng, exp_bits: u32, frac_bits: u32) -> u64 {
    let sign = r.below(2) << (exp_bits + frac_bits);
    let frac = r.next() & ((1 << frac_bits) - 1);
    let e_max = (1u64 << exp_bits) - 1;
    let bias = e_max / 2;
    let e = match r.below(12) {
        0 => 0,                         // zero or denormal
        1 => e_max,                     // infinity or NaN
        2 => 1,                         // smallest normals
        3 => e_max - 1,                 // largest
        4..=7 => bias - 3 + r.below(7), // near 1
        _ => r.below(e_max),
    };
    let frac = match r.below(6) {
        0 => 0,
        1 => (1 << (frac_bits - 1)) | frac, // quiet NaN when e is all ones
        _ => frac,
    };
    sign | e << frac_bits | frac
}

/// An XMM value: four singles, two doubles, or integer lanes.
fn xmm(r: &mut Rng) -> u128 {
    match r.below(4) {
        0 => (0..4).fold(0u128, |v, i| v | (float(r, 8, 23) as u128) << (32 * i)),
        1 => (0..2).fold(0u128, |v, i| v | (float(r, 11, 52) as u128) << (64 * i)),
        2 => {
            // Small and boundary integers in every lane width.
            let picks = [
                0u64,
                1,
                0x7f,
                0x80,
                0xff,
                0x7fff,
                0x8000,
                0xffff,
                0x7fff_ffff,
                0x8000_0000,
                u64::MAX,
            ];
            (0..2).fold(0u128, |v, i| {
                let p =
                    picks[r.below(picks.len() as u64) as usize] ^ (r.next() & r.next() & r.next());
                v | (p as u128) << (64 * i)
            })
        }
        _ => (r.next() as u128) << 64 | r.next() as u128,
    }
}

/// MXCSR: a rounding mode, DAZ, FTZ, and the masks (all set most of the time).
fn mxcsr(r: &mut Rng) -> u32 {
    let masks = if r.below(4) == 0 {
        r.next() as u32 & 0x3f
    } else {
        0x3f
    };
    let rc = r.below(4) as u32;
    let daz = if r.below(4) == 0 { 1 << 6 } else { 0 };
    let ftz = if r.below(4) == 0 { 1 << 15 } else { 0 };
    masks << 7 | rc << 13 | daz | ftz
}

fn state(r: &mut Rng) -> State {
    let mut s = State::default();
    for (i, v) in values(r.next()).skip(20).take(16).enumerate() {
        s.gpr[i] = v;
    }
    // Half the time a general-register source holds a float's bits or a small integer.
    if r.below(2) == 0 {
        s.gpr[0] = float(r, 11, 52);
    }
    s.gpr[3] = 0; // RBX: the memory operand, an offset into `mem`
    s.gpr[7] = 32; // RDI: MASKMOVDQU's destination
    s.rflags = r.next() & host_exec::FLAGS_IN;
    for i in 0..16 {
        s.fx.set_xmm(i, xmm(r));
    }
    s.fx.set_mxcsr(mxcsr(r));
    // MMX registers: random, in the x87 slots; the tags as MMX code leaves them, or empty.
    for i in 0..8 {
        let v = xmm(r) as u64;
        s.fx.0[32 + 16 * i..40 + 16 * i].copy_from_slice(&v.to_le_bytes());
        s.fx.0[40 + 16 * i..42 + 16 * i].copy_from_slice(&[0xff, 0xff]);
    }
    s.fx.0[4] = if r.below(2) == 0 { 0xff } else { 0 };
    s
}

fn memory(r: &mut Rng) -> Vec<u8> {
    let mut m = vec![0u8; 64];
    for k in 0..4 {
        m[16 * k..16 * k + 16].copy_from_slice(&xmm(r).to_le_bytes());
    }
    m
}

fn asm(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(0).unwrap()
}

const BASES: [usize; 2] = [3, 7];
const FLAGS: u64 = 0x8d5;

fn check(name: &str, code: &[u8], s: &State, mem: &[u8]) {
    let mut host_mem = mem.to_vec();
    let mut host = *s;
    // SAFETY: each snippet is one SIMD instruction on registers or on `mem` through RBX
    // (or RDI); its only exception is #XM, which host-exec catches.
    unsafe { host_exec::run(code, &mut host, &mut host_mem, &BASES).unwrap() };
    let mut sim_mem = mem.to_vec();
    let sim = sim_fx_snippet(code, s, &mut sim_mem, &BASES);
    let ctx = || {
        format!(
            "{name}\nmxcsr {:#x}\nxmm0 {:032x} xmm1 {:032x}\nmem0 {:032x}\nrax {:x}",
            s.fx.mxcsr(),
            s.fx.xmm(0),
            s.fx.xmm(1),
            u128::from_le_bytes(mem[..16].try_into().unwrap()),
            s.gpr[0]
        )
    };
    assert_eq!(sim.fault, host.fault, "{name}: fault\n{}", ctx());
    if fx_comparable(&sim.fx) != fx_comparable(&host.fx) {
        panic!(
            "{name}: state differs\nhost mxcsr {:#x} xmm0 {:032x} xmm1 {:032x} mm0 {:016x} tags {:#x}\nsim  mxcsr {:#x} xmm0 {:032x} xmm1 {:032x} mm0 {:016x} tags {:#x}\n{}",
            host.fx.mxcsr(), host.fx.xmm(0), host.fx.xmm(1), mm_zero(&host.fx), host.fx.0[4],
            sim.fx.mxcsr(), sim.fx.xmm(0), sim.fx.xmm(1), mm_zero(&sim.fx), sim.fx.0[4],
            ctx()
        );
    }
    assert_eq!(sim.gpr, host.gpr, "{name}: registers\n{}", ctx());
    if host.fault.is_none() {
        assert_eq!(
            sim.rflags & FLAGS,
            host.rflags & FLAGS,
            "{name}: flags\n{}",
            ctx()
        );
    }
    assert_eq!(sim_mem, host_mem, "{name}: memory\n{}", ctx());
}

fn mm_zero(fx: &FxImage) -> u64 {
    u64::from_le_bytes(fx.0[32..40].try_into().unwrap())
}

const CASES: u64 = 300;

fn run(forms: &[(&str, Emit)], seed: u64) {
    let mut r = Rng(seed);
    for (name, emit) in forms {
        let code = asm(emit);
        for _ in 0..CASES {
            let s = state(&mut r);
            let m = memory(&mut r);
            check(name, &code, &s, &m);
        }
    }
}

#[test]
fn floating_point_arithmetic() {
    let forms: &[(&str, Emit)] = &[
        ("addps", |a| a.addps(xmm0, xmm1)),
        ("addss", |a| a.addss(xmm0, xmm1)),
        ("addpd", |a| a.addpd(xmm0, xmm1)),
        ("addsd", |a| a.addsd(xmm0, xmm1)),
        ("addps m128", |a| a.addps(xmm0, xmmword_ptr(rbx))),
        ("addss m32", |a| a.addss(xmm0, dword_ptr(rbx))),
        ("subps", |a| a.subps(xmm0, xmm1)),
        ("subsd m64", |a| a.subsd(xmm0, qword_ptr(rbx))),
        ("mulps", |a| a.mulps(xmm0, xmm1)),
        ("mulsd", |a| a.mulsd(xmm0, xmm1)),
        ("divps", |a| a.divps(xmm0, xmm1)),
        ("divss", |a| a.divss(xmm0, xmm1)),
        ("divpd", |a| a.divpd(xmm0, xmm1)),
        ("divsd", |a| a.divsd(xmm0, xmm1)),
        ("sqrtps", |a| a.sqrtps(xmm0, xmm1)),
        ("sqrtss", |a| a.sqrtss(xmm0, xmm1)),
        ("sqrtpd", |a| a.sqrtpd(xmm0, xmm1)),
        ("sqrtsd m64", |a| a.sqrtsd(xmm0, qword_ptr(rbx))),
        ("minps", |a| a.minps(xmm0, xmm1)),
        ("minss", |a| a.minss(xmm0, xmm1)),
        ("minpd", |a| a.minpd(xmm0, xmm1)),
        ("maxps", |a| a.maxps(xmm0, xmm1)),
        ("maxsd", |a| a.maxsd(xmm0, xmm1)),
    ];
    run(forms, 11);
}

#[test]
fn comparisons() {
    let mut forms: Vec<(&str, Emit)> = vec![
        ("comiss", |a| a.comiss(xmm0, xmm1)),
        ("ucomiss", |a| a.ucomiss(xmm0, xmm1)),
        ("comisd", |a| a.comisd(xmm0, xmm1)),
        ("ucomisd m64", |a| a.ucomisd(xmm0, qword_ptr(rbx))),
    ];
    let cmps: [(&str, Emit); 16] = [
        ("cmpps 0", |a| a.cmpps(xmm0, xmm1, 0)),
        ("cmpps 1", |a| a.cmpps(xmm0, xmm1, 1)),
        ("cmpps 2", |a| a.cmpps(xmm0, xmm1, 2)),
        ("cmpps 3", |a| a.cmpps(xmm0, xmm1, 3)),
        ("cmpps 4", |a| a.cmpps(xmm0, xmm1, 4)),
        ("cmpps 5", |a| a.cmpps(xmm0, xmm1, 5)),
        ("cmpps 6", |a| a.cmpps(xmm0, xmm1, 6)),
        ("cmpps 7", |a| a.cmpps(xmm0, xmm1, 7)),
        ("cmpss 1", |a| a.cmpss(xmm0, xmm1, 1)),
        ("cmpss 4", |a| a.cmpss(xmm0, xmm1, 4)),
        ("cmppd 0", |a| a.cmppd(xmm0, xmm1, 0)),
        ("cmppd 2", |a| a.cmppd(xmm0, xmm1, 2)),
        ("cmppd 5", |a| a.cmppd(xmm0, xmm1, 5)),
        ("cmpsd 3", |a| a.cmpsd_3(xmm0, xmm1, 3)),
        ("cmpsd 6", |a| a.cmpsd_3(xmm0, xmm1, 6)),
        ("cmpsd 7", |a| a.cmpsd_3(xmm0, xmm1, 7)),
    ];
    forms.extend(cmps);
    run(&forms, 12);
}

#[test]
fn conversions() {
    let forms: &[(&str, Emit)] = &[
        ("cvtsi2ss r32", |a| a.cvtsi2ss(xmm0, eax)),
        ("cvtsi2ss r64", |a| a.cvtsi2ss(xmm0, rax)),
        ("cvtsi2sd r32", |a| a.cvtsi2sd(xmm0, eax)),
        ("cvtsi2sd r64", |a| a.cvtsi2sd(xmm0, rax)),
        ("cvtss2si r32", |a| a.cvtss2si(eax, xmm1)),
        ("cvtss2si r64", |a| a.cvtss2si(rax, xmm1)),
        ("cvttss2si r32", |a| a.cvttss2si(eax, xmm1)),
        ("cvtsd2si r32", |a| a.cvtsd2si(eax, xmm1)),
        ("cvtsd2si r64", |a| a.cvtsd2si(rax, xmm1)),
        ("cvttsd2si r64", |a| a.cvttsd2si(rax, xmm1)),
        ("cvtss2sd", |a| a.cvtss2sd(xmm0, xmm1)),
        ("cvtsd2ss", |a| a.cvtsd2ss(xmm0, xmm1)),
        ("cvtps2pd", |a| a.cvtps2pd(xmm0, xmm1)),
        ("cvtpd2ps", |a| a.cvtpd2ps(xmm0, xmm1)),
        ("cvtdq2ps", |a| a.cvtdq2ps(xmm0, xmm1)),
        ("cvtdq2pd", |a| a.cvtdq2pd(xmm0, xmm1)),
        ("cvtps2dq", |a| a.cvtps2dq(xmm0, xmm1)),
        ("cvttps2dq", |a| a.cvttps2dq(xmm0, xmm1)),
        ("cvtpd2dq", |a| a.cvtpd2dq(xmm0, xmm1)),
        ("cvttpd2dq", |a| a.cvttpd2dq(xmm0, xmm1)),
        ("cvtpi2ps", |a| a.cvtpi2ps(xmm0, mm1)),
        ("cvtpi2pd", |a| a.cvtpi2pd(xmm0, mm1)),
        ("cvtps2pi", |a| a.cvtps2pi(mm0, xmm1)),
        ("cvttps2pi", |a| a.cvttps2pi(mm0, xmm1)),
        ("cvtpd2pi", |a| a.cvtpd2pi(mm0, xmm1)),
        ("cvttpd2pi", |a| a.cvttpd2pi(mm0, xmm1)),
        ("cvtsd2ss m64", |a| a.cvtsd2ss(xmm0, qword_ptr(rbx))),
        ("cvtpd2ps m128", |a| a.cvtpd2ps(xmm0, xmmword_ptr(rbx))),
    ];
    run(forms, 13);
}

#[test]
fn integer_arithmetic_on_xmm_and_mmx() {
    let forms: &[(&str, Emit)] = &[
        ("paddb", |a| a.paddb(xmm0, xmm1)),
        ("paddw mm", |a| a.paddw(mm0, mm1)),
        ("paddd", |a| a.paddd(xmm0, xmmword_ptr(rbx))),
        ("paddq", |a| a.paddq(xmm0, xmm1)),
        ("paddq mm", |a| a.paddq(mm0, mm1)),
        ("psubb", |a| a.psubb(xmm0, xmm1)),
        ("psubq", |a| a.psubq(xmm0, xmm1)),
        ("paddsb", |a| a.paddsb(xmm0, xmm1)),
        ("paddsw mm", |a| a.paddsw(mm0, qword_ptr(rbx))),
        ("psubsb", |a| a.psubsb(xmm0, xmm1)),
        ("psubsw", |a| a.psubsw(xmm0, xmm1)),
        ("paddusb", |a| a.paddusb(xmm0, xmm1)),
        ("paddusw", |a| a.paddusw(xmm0, xmm1)),
        ("psubusb", |a| a.psubusb(xmm0, xmm1)),
        ("psubusw mm", |a| a.psubusw(mm0, mm1)),
        ("pmullw", |a| a.pmullw(xmm0, xmm1)),
        ("pmulhw", |a| a.pmulhw(xmm0, xmm1)),
        ("pmulhuw", |a| a.pmulhuw(xmm0, xmm1)),
        ("pmuludq", |a| a.pmuludq(xmm0, xmm1)),
        ("pmuludq mm", |a| a.pmuludq(mm0, mm1)),
        ("pmaddwd", |a| a.pmaddwd(xmm0, xmm1)),
        ("pavgb", |a| a.pavgb(xmm0, xmm1)),
        ("pavgw mm", |a| a.pavgw(mm0, mm1)),
        ("psadbw", |a| a.psadbw(xmm0, xmm1)),
        ("psadbw mm", |a| a.psadbw(mm0, mm1)),
        ("pmaxsw", |a| a.pmaxsw(xmm0, xmm1)),
        ("pmaxub", |a| a.pmaxub(xmm0, xmm1)),
        ("pminsw mm", |a| a.pminsw(mm0, mm1)),
        ("pminub", |a| a.pminub(xmm0, xmm1)),
        ("pcmpeqb", |a| a.pcmpeqb(xmm0, xmm1)),
        ("pcmpeqw mm", |a| a.pcmpeqw(mm0, mm1)),
        ("pcmpeqd", |a| a.pcmpeqd(xmm0, xmm1)),
        ("pcmpgtb", |a| a.pcmpgtb(xmm0, xmm1)),
        ("pcmpgtw", |a| a.pcmpgtw(xmm0, xmm1)),
        ("pcmpgtd mm", |a| a.pcmpgtd(mm0, mm1)),
        ("pand", |a| a.pand(xmm0, xmm1)),
        ("pandn", |a| a.pandn(xmm0, xmm1)),
        ("por mm", |a| a.por(mm0, mm1)),
        ("pxor", |a| a.pxor(xmm0, xmm1)),
        ("andps", |a| a.andps(xmm0, xmm1)),
        ("andnpd", |a| a.andnpd(xmm0, xmm1)),
        ("orps", |a| a.orps(xmm0, xmm1)),
        ("xorpd", |a| a.xorpd(xmm0, xmm1)),
        ("packsswb", |a| a.packsswb(xmm0, xmm1)),
        ("packsswb mm", |a| a.packsswb(mm0, mm1)),
        ("packssdw", |a| a.packssdw(xmm0, xmm1)),
        ("packuswb", |a| a.packuswb(xmm0, xmm1)),
        ("punpcklbw", |a| a.punpcklbw(xmm0, xmm1)),
        ("punpcklwd mm", |a| a.punpcklwd(mm0, mm1)),
        ("punpckldq", |a| a.punpckldq(xmm0, xmm1)),
        ("punpcklqdq", |a| a.punpcklqdq(xmm0, xmm1)),
        ("punpckhbw", |a| a.punpckhbw(xmm0, xmm1)),
        ("punpckhwd", |a| a.punpckhwd(xmm0, xmm1)),
        ("punpckhdq mm", |a| a.punpckhdq(mm0, mm1)),
        ("punpckhqdq", |a| a.punpckhqdq(xmm0, xmm1)),
        ("unpcklps", |a| a.unpcklps(xmm0, xmm1)),
        ("unpckhpd", |a| a.unpckhpd(xmm0, xmm1)),
        ("psllw imm", |a| a.psllw(xmm0, 3)),
        ("psllw xmm", |a| a.psllw(xmm0, xmm1)),
        ("pslld mm imm", |a| a.pslld(mm0, 31)),
        ("psllq", |a| a.psllq(xmm0, 40)),
        ("psrlw", |a| a.psrlw(xmm0, 17)),
        ("psrld xmm", |a| a.psrld(xmm0, xmm1)),
        ("psrlq mm", |a| a.psrlq(mm0, mm1)),
        ("psraw", |a| a.psraw(xmm0, 5)),
        ("psrad xmm", |a| a.psrad(xmm0, xmm1)),
        ("psrad mm", |a| a.psrad(mm0, 40)),
        ("pslldq", |a| a.pslldq(xmm0, 5)),
        ("psrldq", |a| a.psrldq(xmm0, 11)),
        ("psrldq 16", |a| a.psrldq(xmm0, 16)),
    ];
    run(forms, 14);
}

#[test]
fn moves_shuffles_and_masks() {
    let forms: &[(&str, Emit)] = &[
        ("movaps", |a| a.movaps(xmm0, xmm1)),
        ("movaps load", |a| a.movaps(xmm0, xmmword_ptr(rbx))),
        ("movups load", |a| a.movups(xmm0, xmmword_ptr(rbx + 1))),
        ("movups store", |a| a.movups(xmmword_ptr(rbx + 3), xmm1)),
        ("movdqa store", |a| a.movdqa(xmmword_ptr(rbx + 16), xmm1)),
        ("movdqu load", |a| a.movdqu(xmm0, xmmword_ptr(rbx + 7))),
        ("movapd", |a| a.movapd(xmm0, xmm1)),
        ("movss reg", |a| a.movss(xmm0, xmm1)),
        ("movss load", |a| a.movss(xmm0, dword_ptr(rbx))),
        ("movss store", |a| a.movss(dword_ptr(rbx + 4), xmm1)),
        ("movsd reg", |a| a.movsd_2(xmm0, xmm1)),
        ("movsd load", |a| a.movsd_2(xmm0, qword_ptr(rbx))),
        ("movlps load", |a| a.movlps(xmm0, qword_ptr(rbx))),
        ("movlps store", |a| a.movlps(qword_ptr(rbx + 8), xmm1)),
        ("movhps load", |a| a.movhps(xmm0, qword_ptr(rbx))),
        ("movhpd store", |a| a.movhpd(qword_ptr(rbx + 8), xmm1)),
        ("movhlps", |a| a.movhlps(xmm0, xmm1)),
        ("movlhps", |a| a.movlhps(xmm0, xmm1)),
        ("movd xmm, r32", |a| a.movd(xmm0, eax)),
        ("movd r32, xmm", |a| a.movd(eax, xmm1)),
        ("movq xmm, r64", |a| a.movq(xmm0, rax)),
        ("movq r64, xmm", |a| a.movq(rax, xmm1)),
        ("movq xmm, xmm", |a| a.movq(xmm0, xmm1)),
        ("movq xmm, m64", |a| a.movq(xmm0, qword_ptr(rbx))),
        ("movq m64, xmm", |a| a.movq(qword_ptr(rbx + 8), xmm1)),
        ("movd mm, r32", |a| a.movd(mm0, eax)),
        ("movq r64, mm", |a| a.movq(rax, mm1)),
        ("movq mm, mm", |a| a.movq(mm0, mm1)),
        ("movq mm, m64", |a| a.movq(mm0, qword_ptr(rbx))),
        ("movq m64, mm", |a| a.movq(qword_ptr(rbx + 8), mm1)),
        ("movq2dq", |a| a.movq2dq(xmm0, mm1)),
        ("movdq2q", |a| a.movdq2q(mm0, xmm1)),
        ("movmskps", |a| a.movmskps(eax, xmm1)),
        ("movmskpd", |a| a.movmskpd(eax, xmm1)),
        ("pmovmskb", |a| a.pmovmskb(eax, xmm1)),
        ("pmovmskb mm", |a| a.pmovmskb(eax, mm1)),
        ("movntps", |a| a.movntps(xmmword_ptr(rbx + 16), xmm1)),
        ("movntdq", |a| a.movntdq(xmmword_ptr(rbx), xmm1)),
        ("movnti", |a| a.movnti(qword_ptr(rbx + 8), rax)),
        ("movntq", |a| a.movntq(qword_ptr(rbx + 8), mm1)),
        ("maskmovdqu", |a| a.maskmovdqu(xmm0, xmm1)),
        ("maskmovq", |a| a.maskmovq(mm0, mm1)),
        ("pshufd", |a| a.pshufd(xmm0, xmm1, 0x1b)),
        ("pshufd m128", |a| a.pshufd(xmm0, xmmword_ptr(rbx), 0xe4)),
        ("pshufhw", |a| a.pshufhw(xmm0, xmm1, 0x39)),
        ("pshuflw", |a| a.pshuflw(xmm0, xmm1, 0x93)),
        ("pshufw", |a| a.pshufw(mm0, mm1, 0x4e)),
        ("shufps", |a| a.shufps(xmm0, xmm1, 0xb1)),
        ("shufpd", |a| a.shufpd(xmm0, xmm1, 2)),
        ("pextrw", |a| a.pextrw(eax, xmm1, 5)),
        ("pextrw mm", |a| a.pextrw(eax, mm1, 6)),
        ("pinsrw", |a| a.pinsrw(xmm0, eax, 3)),
        ("pinsrw m16", |a| a.pinsrw(xmm0, word_ptr(rbx), 7)),
        ("pinsrw mm", |a| a.pinsrw(mm0, eax, 2)),
        ("stmxcsr", |a| a.stmxcsr(dword_ptr(rbx))),
        ("emms", |a| a.emms()),
    ];
    run(forms, 15);
}

/// LDMXCSR with valid values (a reserved bit is #GP, which host-exec does not catch;
/// the sim's refusal is checked by the FP register test).
#[test]
fn ldmxcsr_sets_rounding_daz_ftz_and_masks() {
    let code = asm(|a| a.ldmxcsr(dword_ptr(rbx)));
    let mut r = Rng(16);
    for _ in 0..CASES {
        let s = state(&mut r);
        let mut m = memory(&mut r);
        m[..4].copy_from_slice(&(r.next() as u32 & 0xffff).to_le_bytes());
        check("ldmxcsr", &code, &s, &m);
    }
}

/// RCPPS, RCPSS, RSQRTPS, RSQRTSS: within the manual's bound of the true value, and the
/// specials (zeros, infinities, NaNs, negative square roots) exactly as the host.
#[test]
fn reciprocal_approximations_within_the_manuals_bound() {
    let forms: &[(&str, Emit, bool)] = &[
        ("rcpps", |a| a.rcpps(xmm0, xmm1), false),
        ("rcpss", |a| a.rcpss(xmm0, xmm1), false),
        ("rsqrtps", |a| a.rsqrtps(xmm0, xmm1), true),
        ("rsqrtss", |a| a.rsqrtss(xmm0, xmm1), true),
    ];
    let mut r = Rng(17);
    for (name, emit, sqrt) in forms {
        let code = asm(emit);
        for _ in 0..CASES {
            let s = state(&mut r);
            let m = memory(&mut r);
            let mut host_mem = m.clone();
            let mut host = s;
            // SAFETY: a register-only instruction that raises no exception.
            unsafe { host_exec::run(&code, &mut host, &mut host_mem, &BASES).unwrap() };
            let mut sim_mem = m.clone();
            let sim = sim_fx_snippet(&code, &s, &mut sim_mem, &BASES);
            assert_eq!(sim.fx.mxcsr(), host.fx.mxcsr(), "{name}: no flags");
            let scalar = name.ends_with("ss");
            for lane in 0..4 {
                let at = |v: u128| (v >> (32 * lane)) as u32;
                if scalar && lane > 0 {
                    assert_eq!(
                        at(sim.fx.xmm(0)),
                        at(s.fx.xmm(0)),
                        "{name}: lane {lane} kept"
                    );
                    assert_eq!(
                        at(host.fx.xmm(0)),
                        at(s.fx.xmm(0)),
                        "{name}: lane {lane} kept"
                    );
                    continue;
                }
                let (h, z, x) = (at(host.fx.xmm(0)), at(sim.fx.xmm(0)), at(s.fx.xmm(1)));
                let (hf, zf) = (f32::from_bits(h), f32::from_bits(z));
                if !hf.is_finite() || hf == 0.0 || !zf.is_finite() || zf == 0.0 {
                    assert_eq!(z, h, "{name} lane {lane} of {x:#x}: specials are exact");
                    continue;
                }
                let v = f32::from_bits(x) as f64;
                let exact = if *sqrt { 1.0 / v.sqrt() } else { 1.0 / v };
                let err = ((zf as f64 - exact) / exact).abs();
                assert!(
                    err <= 1.5 / 4096.0,
                    "{name} lane {lane} of {x:#x}: {zf} against {exact}"
                );
                let herr = ((hf as f64 - zf as f64) / zf as f64).abs();
                assert!(
                    herr <= 3.0 / 4096.0,
                    "{name} lane {lane} of {x:#x}: sim {zf}, host {hf}"
                );
            }
        }
    }
}
