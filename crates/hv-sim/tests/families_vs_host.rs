//! Per-family differential tests: each snippet runs natively on the host CPU
//! (host-exec) and in the sim's interpreter from the same registers and memory;
//! registers, the defined flags and memory must agree.
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
const DF: u64 = 0x400;
const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

/// Emits a snippet's instructions.
type Emit = fn(&mut CodeAssembler) -> Result<(), IcedError>;

fn asm64(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(0).unwrap()
}

/// Runs `code` both ways and compares; `flags` are the RFLAGS bits the
/// architecture defines after it (DF is always compared).
fn check(name: &str, code: &[u8], state: State, mem: &[u8], bases: &[usize], flags: u64) {
    check_except(name, code, state, mem, bases, flags, &[]);
}

/// As [`check`], but the GPRs in `undefined` (whose value the SDM leaves undefined for
/// this state, so Intel and AMD hosts may differ) are not compared.
fn check_except(
    name: &str,
    code: &[u8],
    state: State,
    mem: &[u8],
    bases: &[usize],
    flags: u64,
    undefined: &[usize],
) {
    let mut host_mem = mem.to_vec();
    let mut host = state;
    // SAFETY: every snippet in this file is balanced, touches memory only through
    // the base registers within `mem`, and its operands are chosen not to fault.
    unsafe { host_exec::run(code, &mut host, &mut host_mem, bases).unwrap() };
    let mut sim_mem = mem.to_vec();
    let sim = sim_snippet(code, &state, &mut sim_mem, bases);
    for i in (0..16).filter(|&i| i != 4 && !undefined.contains(&i)) {
        assert_eq!(
            sim.gpr[i], host.gpr[i],
            "{name}: GPR {i} from {state:x?}\nsim {sim:x?}\nhost {host:x?}"
        );
    }
    let m = flags | DF;
    assert_eq!(
        sim.rflags & m,
        host.rflags & m,
        "{name}: flags (mask {m:#x}) from {state:x?}"
    );
    assert_eq!(sim_mem, host_mem, "{name}: memory from {state:x?}");
}

/// The CPUID feature a form needs on the host, when the host lacks it: the form is then
/// not compared (POPCNT and MOVBE would be #UD, LZCNT would run as BSR; LAHF and SAHF
/// are #UD in 64-bit mode without LAHF-SAHF). The sim's own features are held to its
/// CPUID by tests/cpuid_honest.rs.
fn host_lacks(name: &str) -> Option<&'static str> {
    use sim_cpu::cpuid::bits;
    let (leaf, bit, feature) = match name {
        "popcnt" => (1, bits::POPCNT, "POPCNT (CPUID.01H:ECX[23])"),
        "movbe" => (1, bits::MOVBE, "MOVBE (CPUID.01H:ECX[22])"),
        "lzcnt" => (0x8000_0001, bits::ABM, "LZCNT (CPUID.80000001H:ECX[5])"),
        n if n.starts_with("lahf") => (
            0x8000_0001,
            bits::LAHF_LM,
            "LAHF-SAHF (CPUID.80000001H:ECX[0])",
        ),
        _ => return None,
    };
    (host_cpuid(leaf)[2] & bit == 0).then_some(feature)
}

fn state(gpr: &[(usize, u64)], rflags: u64) -> State {
    let mut s = State::default();
    for (i, v) in values(0x1234).skip(20).take(16).enumerate() {
        s.gpr[i] = v;
    }
    for &(i, v) in gpr {
        s.gpr[i] = v;
    }
    s.rflags = rflags;
    s
}

fn pairs(seed: u64, n: usize) -> impl Iterator<Item = (u64, u64)> {
    let v: Vec<u64> = values(seed).take(n).collect();
    let w: Vec<u64> = values(seed ^ 0xdead_beef).take(n).collect();
    let k = v.len();
    (0..n).map(move |i| (v[i], w[(i * 5 + 3) % k]))
}

#[test]
fn mul_imul_in_all_forms_and_widths() {
    type Form = (&'static str, Emit);
    let forms: &[Form] = &[
        ("mul cl", |a| a.mul(cl)),
        ("mul cx", |a| a.mul(cx)),
        ("mul ecx", |a| a.mul(ecx)),
        ("mul rcx", |a| a.mul(rcx)),
        ("imul cl", |a| a.imul(cl)),
        ("imul cx", |a| a.imul(cx)),
        ("imul ecx", |a| a.imul(ecx)),
        ("imul rcx", |a| a.imul(rcx)),
        ("imul ax, cx", |a| a.imul_2(ax, cx)),
        ("imul eax, ecx", |a| a.imul_2(eax, ecx)),
        ("imul rax, rcx", |a| a.imul_2(rax, rcx)),
        ("imul eax, ecx, -7", |a| a.imul_3(eax, ecx, -7)),
        ("imul rax, rcx, 0x12345", |a| a.imul_3(rax, rcx, 0x12345)),
        ("imul ax, word [rbx+2]", |a| a.imul_2(ax, word_ptr(rbx + 2))),
    ];
    for (name, f) in forms {
        let code = asm64(*f);
        for (x, y) in pairs(1, 120) {
            let mem: Vec<u8> = y.to_le_bytes().repeat(2);
            check(
                name,
                &code,
                state(&[(0, x), (1, y), (3, 0)], 0),
                &mem,
                &[3],
                CF | OF,
            );
        }
    }
}

#[test]
fn div_idiv_in_all_widths_with_non_faulting_operands() {
    type Form = (&'static str, u32, Emit);
    let forms: &[Form] = &[
        ("div cl", 8, |a| a.div(cl)),
        ("div cx", 16, |a| a.div(cx)),
        ("div ecx", 32, |a| a.div(ecx)),
        ("div rcx", 64, |a| a.div(rcx)),
        ("idiv cl", 8, |a| a.idiv(cl)),
        ("idiv cx", 16, |a| a.idiv(cx)),
        ("idiv ecx", 32, |a| a.idiv(ecx)),
        ("idiv rcx", 64, |a| a.idiv(rcx)),
    ];
    for (name, bits, f) in forms {
        let code = asm64(*f);
        let signed = name.starts_with('i');
        for (x, y) in pairs(2, 150) {
            let m = if *bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let d = (y & m).max(1);
            if signed && d == m {
                continue; // -1: the only divisor whose quotient of a small dividend overflows
            }
            // The high half is below the divisor (unsigned) or the sign extension of
            // the low half (signed), so the quotient always fits.
            let hi = if signed {
                if (x >> (bits - 1)) & 1 == 1 {
                    m
                } else {
                    0
                }
            } else {
                x.rotate_left(29) % d
            };
            let (a_in, d_in) = match bits {
                8 => ((x & !0xffff) | (x & 0xff) | (hi << 8), 0x77),
                _ => (x, (y & !m) | hi),
            };
            let s = state(&[(0, a_in), (1, d), (2, d_in)], 0);
            check(name, &code, s, &[], &[], 0);
        }
    }
}

#[test]
fn shifts_and_rotates_for_every_count_and_width() {
    type Form = (&'static str, Emit);
    let forms: &[Form] = &[
        ("shl al, cl", |a| a.shl(al, cl)),
        ("shr ax, cl", |a| a.shr(ax, cl)),
        ("sar eax, cl", |a| a.sar(eax, cl)),
        ("shl rax, cl", |a| a.shl(rax, cl)),
        ("sar rax, cl", |a| a.sar(rax, cl)),
        ("shr byte [rbx], cl", |a| a.shr(byte_ptr(rbx), cl)),
        ("rol al, cl", |a| a.rol(al, cl)),
        ("ror ax, cl", |a| a.ror(ax, cl)),
        ("rol eax, cl", |a| a.rol(eax, cl)),
        ("ror rax, cl", |a| a.ror(rax, cl)),
        ("rcl al, cl", |a| a.rcl(al, cl)),
        ("rcr ax, cl", |a| a.rcr(ax, cl)),
        ("rcl eax, cl", |a| a.rcl(eax, cl)),
        ("rcr rax, cl", |a| a.rcr(rax, cl)),
        ("shl eax, 1", |a| a.shl(eax, 1)),
        ("sar al, 7", |a| a.sar(al, 7)),
    ];
    for (name, f) in forms {
        let code = asm64(*f);
        let rotate = name.starts_with('r');
        let wide = name.contains("rax");
        for (i, (x, _)) in pairs(3, 40).enumerate() {
            for count in [0u64, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65] {
                let masked = count & if wide { 63 } else { 31 };
                let fixed = name.ends_with(", 1") || name.ends_with(", 7");
                let effective = if fixed {
                    1 + 6 * name.ends_with('7') as u64
                } else {
                    masked
                };
                let defined = match (effective, rotate) {
                    (0, _) => ARITH,
                    (1, true) => CF | OF,
                    (_, true) => CF,
                    (1, false) => ARITH & !AF,
                    (_, false) => ARITH & !AF & !OF,
                };
                // SHL and SHR leave CF undefined when the count is at least the operand's
                // width (SDM vol 2 SAL/SAR/SHL/SHR, "Flags Affected"): only the byte and
                // word forms get there, their count being masked to 5 bits.
                let undefined_cf = (name.starts_with("shl") || name.starts_with("shr"))
                    && effective >= width(name);
                let defined = if undefined_cf { defined & !CF } else { defined };
                let mem = x.to_le_bytes();
                let s = state(&[(0, x), (1, count), (3, 0)], (i as u64 * 0x8d5) & ARITH);
                check(name, &code, s, &mem, &[3], defined);
            }
        }
    }
}

/// The operand width a shift's name gives (`rax`, `eax`, `ax`, else a byte).
fn width(name: &str) -> u64 {
    if name.contains("rax") {
        64
    } else if name.contains("eax") {
        32
    } else if name.contains("ax") {
        16
    } else {
        8
    }
}

#[test]
fn setcc_and_cmovcc_for_every_condition() {
    let conds: &[(&str, Emit, Emit)] = &[
        ("a", |a| a.seta(al), |a| a.cmova(rdx, rcx)),
        ("ae", |a| a.setae(al), |a| a.cmovae(rdx, rcx)),
        ("b", |a| a.setb(al), |a| a.cmovb(rdx, rcx)),
        ("be", |a| a.setbe(al), |a| a.cmovbe(edx, ecx)),
        ("e", |a| a.sete(al), |a| a.cmove(dx, cx)),
        ("ne", |a| a.setne(al), |a| a.cmovne(rdx, rcx)),
        ("g", |a| a.setg(al), |a| a.cmovg(rdx, rcx)),
        ("ge", |a| a.setge(al), |a| a.cmovge(rdx, rcx)),
        ("l", |a| a.setl(al), |a| a.cmovl(edx, ecx)),
        ("le", |a| a.setle(al), |a| a.cmovle(rdx, rcx)),
        ("o", |a| a.seto(al), |a| a.cmovo(rdx, rcx)),
        ("no", |a| a.setno(al), |a| a.cmovno(rdx, rcx)),
        ("s", |a| a.sets(al), |a| a.cmovs(rdx, rcx)),
        ("ns", |a| a.setns(al), |a| a.cmovns(rdx, rcx)),
        ("p", |a| a.setp(al), |a| a.cmovp(rdx, rcx)),
        ("np", |a| a.setnp(al), |a| a.cmovnp(rdx, qword_ptr(rbx))),
    ];
    for (name, set, cmov) in conds {
        let code = asm64(|a| {
            a.cmp(rsi, rdi)?;
            set(a)?;
            cmov(a)
        });
        for (x, y) in pairs(4, 80) {
            let s = state(&[(6, x), (7, if x % 3 == 0 { x } else { y }), (3, 0)], 0);
            check(name, &code, s, &y.to_le_bytes(), &[3], ARITH);
        }
    }
}

#[test]
fn bit_test_family_with_register_immediate_and_memory_bit_strings() {
    type Form = (&'static str, Emit);
    let forms: &[Form] = &[
        ("bt rax, rcx", |a| a.bt(rax, rcx)),
        ("bts eax, ecx", |a| a.bts(eax, ecx)),
        ("btr ax, cx", |a| a.btr(ax, cx)),
        ("btc rax, 45", |a| a.btc(rax, 45)),
        ("bts dword [rbx+8], 3", |a| a.bts(dword_ptr(rbx + 8), 3)),
        // A register bit offset addresses the bit string beyond the operand itself.
        ("bt [rbx+16], rcx", |a| a.bt(qword_ptr(rbx + 16), rcx)),
        ("btc [rbx+16], ecx", |a| a.btc(dword_ptr(rbx + 16), ecx)),
        ("btr [rbx+16], cx", |a| a.btr(word_ptr(rbx + 16), cx)),
    ];
    for (name, f) in forms {
        let code = asm64(*f);
        for (x, y) in pairs(5, 60) {
            // Bit offsets from -128 to +127 keep the string inside the 48-byte buffer.
            let off = (y as i8) as i64 as u64;
            let mem: Vec<u8> = [x, y, x ^ y, !x, y.rotate_left(7), x.rotate_right(3)]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            check(
                name,
                &code,
                state(&[(0, x), (1, off), (3, 0)], 0),
                &mem,
                &[3],
                CF,
            );
        }
    }
}

#[test]
fn unary_moves_exchanges_and_conversions() {
    type Form = (&'static str, u64, Emit);
    let forms: &[Form] = &[
        ("inc/dec", ARITH, |a| {
            a.inc(al)?;
            a.dec(ecx)?;
            a.inc(qword_ptr(rbx))
        }),
        ("neg", ARITH, |a| a.neg(rax)),
        ("neg byte", ARITH, |a| a.neg(byte_ptr(rbx + 1))),
        ("not", ARITH, |a| {
            a.not(eax)?;
            a.not(word_ptr(rbx + 2))
        }),
        ("movzx/movsx", ARITH, |a| {
            a.movzx(eax, cl)?;
            a.movsx(rdx, cx)?;
            a.movsxd(rsi, ecx)?;
            a.movsx(edi, byte_ptr(rbx + 3))
        }),
        ("lea", ARITH, |a| {
            a.lea(rax, qword_ptr(rcx + rdx * 4 + 0x7f))?;
            a.lea(esi, dword_ptr(rcx + rdx - 1))
        }),
        ("xchg/xadd/bswap", ARITH, |a| {
            a.xchg(rax, rcx)?;
            a.xchg(dword_ptr(rbx + 8), edx)?;
            a.xadd(rsi, rdi)?;
            a.bswap(r8)?;
            a.bswap(r9d)
        }),
        ("cmpxchg", ARITH, |a| a.cmpxchg(qword_ptr(rbx), rcx)),
        ("cbw..cqo", ARITH, |a| {
            a.cbw()?;
            a.cwde()?;
            a.cdqe()?;
            a.cqo()
        }),
        ("cwd/cdq", ARITH, |a| {
            a.mov(rdx, rcx)?;
            a.cwd()?;
            a.mov(r10, rdx)?;
            a.cdq()
        }),
        ("logic", ARITH & !AF, |a| {
            a.and(rax, rcx)?;
            a.or(dword_ptr(rbx), edx)?;
            a.xor(si, 0x1234)?;
            a.test(rdi, rsi)
        }),
        ("arith memory", ARITH, |a| {
            a.add(qword_ptr(rbx), rcx)?;
            a.adc(dword_ptr(rbx + 4), 0x7fff_ffff)?;
            a.sbb(rdx, qword_ptr(rbx + 8))?;
            a.cmp(byte_ptr(rbx + 3), 0x80)
        }),
        ("lahf/sahf/cmc/stc", ARITH, |a| {
            a.lahf()?;
            a.cmc()?;
            a.mov(r11, rax)?;
            a.mov(ah, cl)?;
            a.sahf()
        }),
    ];
    for (name, flags, f) in forms {
        if let Some(feature) = host_lacks(name) {
            eprintln!("{name}: not compared, the host lacks {feature}");
            continue;
        }
        let code = asm64(*f);
        for (i, (x, y)) in pairs(6, 100).enumerate() {
            let mem: Vec<u8> = [y, x].iter().flat_map(|v| v.to_le_bytes()).collect();
            let s = state(
                &[(0, x), (1, y), (2, x.rotate_left(17)), (3, 0)],
                (i as u64 * 0x4f1) & ARITH,
            );
            check(name, &code, s, &mem, &[3], *flags);
        }
    }
}

#[test]
fn string_instructions_with_rep_in_both_directions() {
    type Form = (&'static str, Emit);
    let forms: &[Form] = &[
        ("rep movsb", |a| a.rep().movsb()),
        ("rep movsq", |a| a.rep().movsq()),
        ("rep stosd", |a| a.rep().stosd()),
        ("stosw", |a| a.stosw()),
        ("lodsb", |a| a.lodsb()),
        ("lodsq", |a| a.lodsq()),
        ("repe cmpsb", |a| a.repe().cmpsb()),
        ("repne scasw", |a| a.repne().scasw()),
        ("repe scasb", |a| a.repe().scasb()),
        ("repne cmpsd", |a| a.repne().cmpsd()),
    ];
    let mem: Vec<u8> = (0..512u32).map(|i| (i * 7 % 13) as u8).collect();
    for (name, f) in forms {
        let code = asm64(*f);
        for (i, (x, y)) in pairs(7, 40).enumerate() {
            let down = i % 2 == 1;
            let count = x % 24;
            // Both pointers stay 200 bytes away from the ends whatever the direction.
            let (src, dst) = (200 + y % 40, 260 + x % 40);
            let s = state(
                &[(0, y % 13), (1, count), (6, src), (7, dst)],
                if down { DF } else { 0 } | ((i as u64 * 0x8d5) & ARITH),
            );
            check(name, &code, s, &mem, &[6, 7], ARITH);
        }
    }
}

#[test]
fn push_pop_and_control_flow_within_a_snippet() {
    let code = asm64(|a| {
        let mut top = a.create_label();
        let mut skip = a.create_label();
        let mut func = a.create_label();
        let mut end = a.create_label();
        a.push(rax)?;
        a.push(word_ptr(rbx))?;
        a.pop(dx)?;
        a.pushfq()?;
        a.pop(r12)?;
        a.and(r12d, 0xcd5)?; // the host runs with IF set, the guest without
        a.pop(rsi)?;
        a.and(ecx, 15)?;
        a.inc(ecx)?;
        a.set_label(&mut top)?;
        a.add(rdi, rsi)?;
        a.rol(rdi, 3)?;
        a.loop_(top)?;
        a.test(dil, 1)?;
        a.jz(skip)?;
        a.inc(r8)?;
        a.set_label(&mut skip)?;
        a.call(func)?;
        a.jmp(end)?;
        a.set_label(&mut func)?;
        a.xor(r9, rdi)?;
        a.ret()?;
        a.set_label(&mut end)?;
        let mut last = a.create_label();
        a.jrcxz(last)?; // taken: RCX is zero after LOOP
        a.inc(r10)?;
        a.set_label(&mut last)?;
        a.nop()
    });
    for (i, (x, y)) in pairs(8, 100).enumerate() {
        let s = state(&[(0, x), (1, y), (3, 0)], (i as u64 * 0x8d5) & ARITH);
        // The last flags are XOR's, whose AF is undefined (SDM vol 2 XOR).
        check(
            "push/pop/loop/call",
            &code,
            s,
            &y.to_le_bytes(),
            &[3],
            ARITH & !AF,
        );
    }
}

/// The forms sim-cpu added (#15): scans and counts, double shifts, the wide
/// compare-exchanges, MOVBE, XLAT, ENTER/LEAVE at each operand size (the 64-bit
/// LEAVE once popped 2 bytes instead of 8), each against the host.
#[test]
fn scans_double_shifts_wide_exchanges_movbe_xlat_enter_leave() {
    type Form = (&'static str, u64, Emit);
    let forms: &[Form] = &[
        // BSF/BSR define only ZF; POPCNT and LZCNT define all six.
        ("bsf/bsr", ZF, |a| {
            a.bsf(rax, rcx)?;
            a.bsr(edx, ecx)?;
            a.bsf(si, word_ptr(rdi))
        }),
        ("popcnt", ARITH, |a| {
            a.popcnt(rax, rcx)?;
            a.popcnt(dx, word_ptr(rdi + 2))
        }),
        ("lzcnt", CF | ZF, |a| {
            a.lzcnt(rax, rcx)?;
            a.lzcnt(edx, dword_ptr(rdi + 4))
        }),
        // A count of 1 defines OF too; larger counts only CF, SF, ZF, PF.
        ("shld/shrd by 1", CF | OF | SF | ZF | PF, |a| {
            a.shld(rax, rcx, 1)?;
            a.shrd(dx, si, 1)
        }),
        ("shld/shrd by cl", CF | SF | ZF | PF, |a| {
            a.and(ecx, 31)?;
            a.shld(eax, edx, cl)?;
            a.shrd(qword_ptr(rdi), rsi, cl)
        }),
        ("cmpxchg8b", ZF, |a| a.cmpxchg8b(qword_ptr(rdi))),
        ("movbe", 0, |a| {
            a.movbe(rax, qword_ptr(rdi))?;
            a.movbe(dword_ptr(rdi + 8), ecx)?;
            a.movbe(dx, word_ptr(rdi + 4))
        }),
        ("xlat", 0, |a| {
            a.and(eax, 7)?;
            a.mov(rbx, rdi)?;
            a.xlatb()?;
            a.xor(ebx, ebx)
        }),
        ("enter/leave 64", 0, |a| {
            a.mov(r8, rbp)?;
            a.enter(24u32, 0u32)?;
            a.mov(r9, rbp)?;
            a.sub(r9, rsp)?;
            a.leave()?;
            a.mov(rbp, r8)
        }),
        ("enter/leave nested", 0, |a| {
            a.mov(r8, rbp)?;
            a.lea(rbp, qword_ptr(rsp - 64))?;
            a.enter(8u32, 3u32)?;
            a.mov(r9, rsp)?;
            a.sub(r9, rbp)?;
            a.leave()?;
            a.mov(rbp, r8)
        }),
        ("leave 16", 0, |a| {
            a.mov(r8, rbp)?;
            a.mov(rbp, rsp)?;
            a.push(word_ptr(rdi))?;
            a.push(word_ptr(rdi + 2))?;
            a.sub(rbp, 2)?;
            a.db(&[0x66, 0xc9])?; // 16-bit LEAVE: RSP = RBP (S - 2), BP = pop: RSP back at S
            a.movzx(r10d, bp)?; // the popped word (the rest of RBP is a stack address)
            a.mov(rbp, r8)
        }),
    ];
    for (name, flags, f) in forms {
        if let Some(feature) = host_lacks(name) {
            eprintln!("{name}: not compared, the host lacks {feature}");
            continue;
        }
        let code = asm64(*f);
        for (i, (x, y)) in pairs(9, 80).enumerate() {
            let mut mem: Vec<u8> = [y, x, y ^ x, x.rotate_left(7)]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            if i % 3 == 0 {
                // The compare-exchanges' equal case: memory matches EDX:EAX / RDX:RAX.
                mem[..8].copy_from_slice(&x.to_le_bytes());
                mem[8..16].copy_from_slice(&x.rotate_left(17).to_le_bytes());
            }
            let s = state(
                &[
                    (0, x),
                    (1, y),
                    (2, x.rotate_left(17)),
                    (3, y ^ 0x55),
                    (6, y.rotate_right(5)),
                    (7, 0),
                ],
                (i as u64 * 0x4f1) & ARITH,
            );
            // BSF and BSR of a zero source leave the destination undefined (SDM vol 2
            // BSF, BSR): RAX from RCX, EDX from ECX, SI from the word at [RDI].
            let mut undefined = Vec::new();
            if *name == "bsf/bsr" {
                for (dest, zero) in [
                    (0, s.gpr[1] == 0),
                    (2, s.gpr[1] as u32 == 0),
                    (6, mem[0] == 0 && mem[1] == 0),
                ] {
                    if zero {
                        undefined.push(dest);
                    }
                }
            }
            check_except(name, &code, s, &mem, &[7], *flags, &undefined);
        }
    }
}

/// The sim's own rule for BSF and BSR of a zero source, which the host comparison leaves
/// out: ZF set and the destination unchanged, all 64 bits of it, at every operand size
/// (AMD APM vol 3 BSF/BSR; the SDM says "undefined", and Intel's processors leave it
/// unchanged too, which Linux's ffs()/fls() rely on).
#[test]
fn bsf_bsr_of_zero_leave_the_destination_unchanged() {
    type Form = (&'static str, Emit);
    let forms: &[Form] = &[
        ("bsf rax, rcx", |a| a.bsf(rax, rcx)),
        ("bsr rax, rcx", |a| a.bsr(rax, rcx)),
        ("bsf eax, ecx", |a| a.bsf(eax, ecx)),
        ("bsr eax, dword [rbx]", |a| a.bsr(eax, dword_ptr(rbx))),
        ("bsf ax, cx", |a| a.bsf(ax, cx)),
        ("bsr ax, word [rbx]", |a| a.bsr(ax, word_ptr(rbx))),
    ];
    for (name, f) in forms {
        let code = asm64(*f);
        for rflags in [0, ARITH] {
            let before = 0x1111_2222_3333_4444;
            // RCX is zero in the low 32 bits only: the sources are ECX, CX and memory.
            let src = if name.contains("rcx") {
                0
            } else {
                0xffff_ffff_0000_0000
            };
            let s = state(&[(0, before), (1, src), (3, 0)], rflags);
            let mut mem = [0u8; 8];
            let out = sim_snippet(&code, &s, &mut mem, &[3]);
            assert_eq!(out.gpr[0], before, "{name}: the destination");
            assert_eq!(out.rflags & ZF, ZF, "{name}: ZF");
        }
    }
}

/// A 64-bit near branch to a non-canonical address is #GP at the branch, with RIP
/// still on it (SDM vol 2 JMP, "64-Bit Mode Exceptions"); the sim once went on
/// executing at the non-canonical RIP.
#[test]
fn a_jump_to_a_non_canonical_address_faults_at_the_jump() {
    let mut g = guest();
    // mov rax, 0x0000_8000_0000_0000; jmp rax; hlt
    let code = asm64(|a| {
        a.mov(rax, 0x0000_8000_0000_0000u64)?;
        a.jmp(rax)?;
        a.hlt()
    });
    g.load(0x2000, &code);
    g.long_mode(0x2000);
    // An IDT whose #GP gate is absent: the #GP becomes a double fault, then a
    // triple fault, and the exit says where: RIP on the JMP.
    g.set_raw(
        mshv_bindings::hv_register_name_HV_X64_REGISTER_IDTR,
        hv_core::regs::pack_table(0, 0),
    );
    assert_eq!(g.run(), hv_core::Exit::Message);
    assert_eq!(
        g.msg.message_type(),
        hv_core::message::HVMSG_UNRECOVERABLE_EXCEPTION
    );
    let h: mshv_bindings::hv_x64_intercept_message_header = g.msg.payload();
    assert_eq!({ h.rip }, 0x2000 + 10, "RIP on the JMP, not past it");
}
