//! Differential tests: ADD/ADC/SUB/SBB/XOR and the count-1 shifts at every width, in
//! the sim against the host CPU, with the carry in set and clear; result and the
//! defined flags must agree (the lazily computed flags included).
#![cfg(target_arch = "x86_64")]

mod common;

use common::*;
use iced_x86::code_asm::*;

const CF: u64 = 0x1;
const PF: u64 = 0x4;
const AF: u64 = 0x10;
const ZF: u64 = 0x40;
const SF: u64 = 0x80;
const OF: u64 = 0x800;
const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

type Emit = fn(&mut CodeAssembler) -> Result<(), IcedError>;

fn code(f: Emit) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    // Read the carry flag the test sets, then the operation, then the flags.
    f(&mut a).unwrap();
    a.assemble(0).unwrap()
}

fn compare(name: &str, emit: Emit, defined: u64) {
    let bytes = code(emit);
    let vals: Vec<u64> = values(0x9e37_79b9_7f4a_7c15).take(120).collect();
    for (i, &a) in vals.iter().enumerate() {
        let b = vals[(i * 7 + 3) % vals.len()];
        for cf in [0, CF] {
            let mut s = State::default();
            s.gpr[0] = a;
            s.gpr[3] = b;
            s.rflags = cf | 2;
            let mut host = s;
            let mut mem = [0u8; 8];
            // SAFETY: register-only arithmetic.
            unsafe { host_exec::run(&bytes, &mut host, &mut mem, &[]).unwrap() };
            let sim = sim_snippet(&bytes, &s, &mut mem, &[]);
            assert_eq!(
                sim.gpr[0], host.gpr[0],
                "{name}({a:#x}, {b:#x}, cf={cf}) result"
            );
            assert_eq!(
                sim.rflags & defined,
                host.rflags & defined,
                "{name}({a:#x}, {b:#x}, cf={cf}) flags"
            );
        }
    }
}

#[test]
fn add_adc_sub_sbb_xor_flags_match_the_host_at_every_width() {
    let cases: &[(&str, Emit)] = &[
        ("add64", |a| a.add(rax, rbx)),
        ("adc64", |a| a.adc(rax, rbx)),
        ("sub64", |a| a.sub(rax, rbx)),
        ("sbb64", |a| a.sbb(rax, rbx)),
        ("add32", |a| a.add(eax, ebx)),
        ("adc32", |a| a.adc(eax, ebx)),
        ("sbb32", |a| a.sbb(eax, ebx)),
        ("add16", |a| a.add(ax, bx)),
        ("sub16", |a| a.sub(ax, bx)),
        ("adc8", |a| a.adc(al, bl)),
        ("sbb8", |a| a.sbb(al, bl)),
        ("neg32", |a| a.neg(eax)),
        ("inc16", |a| a.inc(ax)),
        ("dec8", |a| a.dec(al)),
    ];
    for (name, emit) in cases {
        compare(name, *emit, ARITH);
    }
    // Logic operations leave AF undefined.
    for (name, emit) in [
        ("xor64", (|a: &mut CodeAssembler| a.xor(rax, rbx)) as Emit),
        ("and16", |a| a.and(ax, bx)),
        ("or8", |a| a.or(al, bl)),
    ] {
        compare(name, emit, ARITH & !AF);
    }
}

#[test]
fn shl_shr_sar_flags_match_the_host_for_count_one() {
    // A count of 1 defines OF; AF is undefined for shifts.
    for (name, emit) in [
        ("shl", (|a: &mut CodeAssembler| a.shl(rax, 1)) as Emit),
        ("shr", |a| a.shr(rax, 1)),
        ("sar", |a| a.sar(rax, 1)),
        ("shl8", |a| a.shl(al, 1)),
        ("sar16", |a| a.sar(ax, 1)),
    ] {
        compare(name, emit, ARITH & !AF);
    }
}
