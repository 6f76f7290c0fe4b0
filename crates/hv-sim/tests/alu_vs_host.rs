//! Differential tests: the interpreter's ALU flags against what the host CPU computes.
#![cfg(target_arch = "x86_64")]

mod common;

use common::values;
use hv_sim::alu;
use std::arch::asm;

const DEFINED: u64 = alu::ARITH;

macro_rules! host_binop {
    ($name:ident, $insn:literal, $reg:ty, $mod:literal) => {
        fn $name(a: u64, b: u64, cf_in: bool) -> (u64, u64) {
            let mut x = a as $reg;
            let y = b as $reg;
            let flags: u64;
            // SAFETY: pure register arithmetic; the stack is used only by pushfq/popfq pairs.
            unsafe {
                asm!(
                    "bt {cf:r}, 0",
                    concat!($insn, " {x", $mod, "}, {y", $mod, "}"),
                    "pushfq",
                    "pop {f}",
                    cf = in(reg) cf_in as u64,
                    x = inout(reg) x,
                    y = in(reg) y,
                    f = out(reg) flags,
                );
            }
            (x as u64, flags)
        }
    };
}

host_binop!(add64, "add", u64, "");
host_binop!(adc64, "adc", u64, "");
host_binop!(sub64, "sub", u64, "");
host_binop!(sbb64, "sbb", u64, "");
host_binop!(xor64, "xor", u64, "");
host_binop!(add32, "add", u32, ":e");
host_binop!(sub32, "sub", u32, ":e");
host_binop!(sbb32, "sbb", u32, ":e");
host_binop!(add16, "add", u16, ":x");
host_binop!(sub16, "sub", u16, ":x");

#[test]
fn add_sub_adc_sbb_logic_flags_match_the_host() {
    type Host = fn(u64, u64, bool) -> (u64, u64);
    type Ours = fn(usize, u64, u64, bool) -> (u64, u64);
    let cases: &[(&str, usize, Host, Ours)] = &[
        ("add64", 8, add64, |s, a, b, _| alu::add(s, a, b, false)),
        ("adc64", 8, adc64, alu::add),
        ("sub64", 8, sub64, |s, a, b, _| alu::sub(s, a, b, false)),
        ("sbb64", 8, sbb64, alu::sub),
        ("xor64", 8, xor64, |s, a, b, _| alu::logic(s, a ^ b)),
        ("add32", 4, add32, |s, a, b, _| alu::add(s, a, b, false)),
        ("sub32", 4, sub32, |s, a, b, _| alu::sub(s, a, b, false)),
        ("sbb32", 4, sbb32, alu::sub),
        ("add16", 2, add16, |s, a, b, _| alu::add(s, a, b, false)),
        ("sub16", 2, sub16, |s, a, b, _| alu::sub(s, a, b, false)),
    ];
    let vals: Vec<u64> = values(0x9e37_79b9_7f4a_7c15).take(300).collect();
    for (name, size, host, ours) in cases {
        for (i, &a) in vals.iter().enumerate() {
            let b = vals[(i * 7 + 3) % vals.len()];
            for cf in [false, true] {
                let (hr, hf) = host(a, b, cf);
                let (or, of) = ours(*size, a, b, cf);
                let m = alu::mask(*size);
                assert_eq!(or, hr & m, "{name}({a:#x}, {b:#x}, cf={cf}) result");
                let defined = if name.starts_with("xor") {
                    DEFINED & !alu::AF
                } else {
                    DEFINED
                };
                assert_eq!(
                    of & defined,
                    hf & defined,
                    "{name}({a:#x}, {b:#x}, cf={cf}) flags"
                );
            }
        }
    }
}

#[test]
fn shl_shr_sar_flags_match_the_host_for_count_one() {
    for a in values(0x9e37_79b9_7f4a_7c15).take(200) {
        let (mut x, mut y, mut z) = (a, a, a);
        let (f1, f2, f3): (u64, u64, u64);
        // SAFETY: register-only shifts and flag reads.
        unsafe {
            asm!("shl {x}, 1", "pushfq", "pop {f}", x = inout(reg) x, f = out(reg) f1);
            asm!("shr {x}, 1", "pushfq", "pop {f}", x = inout(reg) y, f = out(reg) f2);
            asm!("sar {x}, 1", "pushfq", "pop {f}", x = inout(reg) z, f = out(reg) f3);
        }
        let defined = DEFINED & !alu::AF;
        for (kind, host_r, host_f) in [(4u8, x, f1), (5, y, f2), (7, z, f3)] {
            let (r, f, which) = alu::shift(8, kind, a, 1, 0).unwrap();
            assert_eq!(r, host_r, "shift kind {kind} of {a:#x}");
            assert_eq!(
                f & which & defined,
                host_f & which & defined,
                "shift kind {kind} of {a:#x} flags"
            );
        }
    }
}
