//! CPUID tells the truth: every feature bit the sim's processor advertises is one it
//! implements, and instructions of features it does not advertise are #UD, as on a
//! processor without them (SDM vol 2 CPUID, and each instruction's "#UD If CPUID..."
//! line). Each case runs in 64-bit ring 0 with an IDT whose handlers report their
//! vector on port 0x81; a case passes by writing its result to port 0x80.

mod common;

use common::*;
use iced_x86::code_asm::*;
use sim_cpu::cpuid::bits;

const CODE: u64 = CASE_CODE;
const DATA: u64 = CASE_DATA;

fn run_case(body: impl FnOnce(&mut CodeAssembler)) -> Outcome {
    guest_case(|_| {}, body)
}

/// CPUID `leaf` in the guest: `[eax, ebx, ecx, edx]`.
fn cpuid(leaf: u32) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, reg) in [eax, ebx, ecx, edx].into_iter().enumerate() {
        let Outcome::Result(v) = run_case(|a| {
            a.mov(eax, leaf).unwrap();
            a.xor(ecx, ecx).unwrap();
            a.cpuid().unwrap();
            if reg != eax {
                a.mov(eax, reg).unwrap();
            }
        }) else {
            panic!("CPUID faulted")
        };
        out[i] = v as u32;
    }
    out
}

fn ok(v: u64) -> Outcome {
    Outcome::Result(v)
}

const UD: Outcome = Outcome::Vector(6);

/// One case per advertised feature bit: (leaf, register index, bit, what to run, what it
/// must give). Register index: 1 = EBX, 2 = ECX, 3 = EDX.
type Case = (
    u32,
    usize,
    u32,
    &'static str,
    fn(&mut CodeAssembler),
    Outcome,
);

fn advertised_cases() -> Vec<Case> {
    use bits::*;
    vec![
        (
            1,
            3,
            FPU,
            "the x87 FPU: 1.5 + 2.25 stored as an integer",
            |a| {
                a.fninit().unwrap();
                a.mov(dword_ptr(DATA), 0x3fc0_0000).unwrap(); // 1.5f
                a.mov(dword_ptr(DATA + 4), 0x4010_0000).unwrap(); // 2.25f
                a.fld(dword_ptr(DATA)).unwrap();
                a.fadd(dword_ptr(DATA + 4)).unwrap();
                a.fistp(dword_ptr(DATA + 8)).unwrap(); // 3.75 rounds to 4
                a.mov(eax, dword_ptr(DATA + 8)).unwrap();
            },
            ok(4),
        ),
        (
            1,
            3,
            FXSR,
            "FXSAVE writes FCW and MXCSR where the layout says",
            |a| {
                a.fninit().unwrap();
                a.fxsave(ptr(DATA)).unwrap();
                a.mov(eax, dword_ptr(DATA + 24)).unwrap();
                a.shl(rax, 16).unwrap();
                a.mov(ax, word_ptr(DATA)).unwrap();
            },
            ok(0x1f80_037f),
        ),
        (
            1,
            3,
            MMX,
            "MMX: PADDB wraps each byte",
            |a| {
                a.mov(rax, 0x01ff_7f80_0000_0000u64).unwrap();
                a.movq(mm0, rax).unwrap();
                a.mov(rax, 0x0101_0101_0000_0001u64).unwrap();
                a.movq(mm1, rax).unwrap();
                a.paddb(mm0, mm1).unwrap();
                a.movq(rax, mm0).unwrap();
                a.emms().unwrap();
            },
            ok(0x0200_8081_0000_0001),
        ),
        (
            1,
            3,
            SSE,
            "SSE: ADDPS and MOVMSKPS (with CR4.OSFXSR)",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.bts(eax, 9).unwrap();
                a.mov(cr4, rax).unwrap();
                a.mov(dword_ptr(DATA), 0x3fc0_0000).unwrap(); // 1.5f
                a.mov(dword_ptr(DATA + 4), 0xc020_0000u32).unwrap(); // -2.5f
                a.movss(xmm0, dword_ptr(DATA)).unwrap();
                a.movss(xmm1, dword_ptr(DATA + 4)).unwrap();
                a.addps(xmm0, xmm1).unwrap(); // -1.0
                a.movmskps(eax, xmm0).unwrap(); // lane 0 negative
                a.movd(ecx, xmm0).unwrap();
                a.shl(rcx, 8).unwrap();
                a.or(rax, rcx).unwrap();
            },
            ok(0x00bf_8000_0001),
        ),
        (
            1,
            3,
            SSE2,
            "SSE2: PCMPEQB and PMOVMSKB find a zero byte (as strlen does)",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.bts(eax, 9).unwrap();
                a.mov(cr4, rax).unwrap();
                a.mov(rax, 0x006f_6c6c_6568_u64).unwrap(); // "hello\0\0\0"
                a.movq(xmm1, rax).unwrap();
                a.pxor(xmm0, xmm0).unwrap();
                a.pcmpeqb(xmm0, xmm1).unwrap();
                a.pmovmskb(eax, xmm0).unwrap();
                a.bsf(eax, eax).unwrap();
            },
            ok(5),
        ),
        (
            1,
            3,
            PSE,
            "CR4.PSE can be set",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.or(eax, 1 << 4).unwrap();
                a.mov(cr4, rax).unwrap();
                a.mov(rax, cr4).unwrap();
                a.shr(eax, 4).unwrap();
                a.and(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            1,
            3,
            TSC,
            "RDTSC counts up",
            |a| {
                a.rdtsc().unwrap();
                a.mov(ebx, eax).unwrap();
                a.mov(ecx, 1000).unwrap();
                let mut l = a.create_label();
                a.set_label(&mut l).unwrap();
                a.loop_(l).unwrap();
                a.rdtsc().unwrap();
                a.cmp(eax, ebx).unwrap();
                a.setne(al).unwrap();
                a.movzx(eax, al).unwrap();
            },
            ok(1),
        ),
        (
            1,
            3,
            MSR,
            "RDMSR/WRMSR of IA32_SYSENTER_EIP",
            |a| {
                a.mov(ecx, 0x176).unwrap();
                a.mov(eax, 0x1234_5678).unwrap();
                a.xor(edx, edx).unwrap();
                a.wrmsr().unwrap();
                a.xor(eax, eax).unwrap();
                a.rdmsr().unwrap();
            },
            ok(0x1234_5678),
        ),
        (
            1,
            3,
            PAE,
            "PAE paging is what long mode runs on",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.shr(eax, 5).unwrap();
                a.and(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            1,
            3,
            CX8,
            "CMPXCHG8B",
            |a| {
                a.mov(qword_ptr(DATA), 5).unwrap();
                a.mov(eax, 5).unwrap();
                a.xor(edx, edx).unwrap();
                a.mov(ebx, 9).unwrap();
                a.xor(ecx, ecx).unwrap();
                a.cmpxchg8b(qword_ptr(DATA)).unwrap();
                a.mov(rax, qword_ptr(DATA)).unwrap();
            },
            ok(9),
        ),
        (
            1,
            3,
            APIC,
            "IA32_APIC_BASE: enabled, at 0xFEE00000",
            |a| {
                a.mov(ecx, 0x1b).unwrap();
                a.rdmsr().unwrap();
                a.and(eax, 0xffff_f800u32 as i32).unwrap();
            },
            ok(0xfee0_0800),
        ),
        (
            1,
            2,
            X2APIC,
            "x2APIC mode: IA32_APIC_BASE.EXTD, then the version register through MSR 0x803",
            |a| {
                a.mov(ecx, 0x1b).unwrap();
                a.rdmsr().unwrap();
                a.or(eax, 0xc00).unwrap(); // EN, EXTD
                a.wrmsr().unwrap();
                a.mov(ecx, 0x803).unwrap();
                a.rdmsr().unwrap();
            },
            ok(0x0005_0014),
        ),
        (
            1,
            3,
            MCE,
            "CR4.MCE can be set",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.bts(eax, 6).unwrap();
                a.mov(cr4, rax).unwrap();
                a.mov(rax, cr4).unwrap();
                a.and(eax, 0x40).unwrap();
            },
            ok(0x40),
        ),
        (
            1,
            3,
            MCA,
            "IA32_MCG_CAP: no banks; IA32_MCG_STATUS holds MCIP",
            |a| {
                a.mov(ecx, 0x17a).unwrap();
                a.mov(eax, 4).unwrap();
                a.xor(edx, edx).unwrap();
                a.wrmsr().unwrap();
                a.rdmsr().unwrap();
                a.mov(esi, eax).unwrap();
                a.mov(ecx, 0x179).unwrap();
                a.rdmsr().unwrap();
                a.shl(rax, 8).unwrap();
                a.or(eax, esi).unwrap();
            },
            ok(4),
        ),
        (
            1,
            2,
            TSC_DEADLINE,
            "IA32_TSC_DEADLINE holds a deadline in the LVT timer's TSC-deadline mode",
            |a| {
                // LVT timer (APIC page + 0x320): masked, TSC-deadline mode (bits 18:17
                // = 10b, SDM vol 3 11.5.4.1); the MSR reads 0 in any other mode.
                a.mov(ebx, 0xfee0_0000u32).unwrap();
                a.mov(dword_ptr(rbx + 0x320), 0x0005_0040).unwrap();
                a.mov(ecx, 0x6e0).unwrap();
                a.mov(eax, 0x1234_5678).unwrap();
                a.mov(edx, 0x7f).unwrap();
                a.wrmsr().unwrap();
                a.xor(eax, eax).unwrap();
                a.rdmsr().unwrap();
            },
            ok(0x1234_5678),
        ),
        (
            1,
            3,
            SEP,
            "IA32_SYSENTER_CS holds a selector",
            |a| {
                a.mov(ecx, 0x174).unwrap();
                a.mov(eax, 0x08).unwrap();
                a.xor(edx, edx).unwrap();
                a.wrmsr().unwrap();
                a.rdmsr().unwrap();
            },
            ok(8),
        ),
        (
            1,
            3,
            MTRR,
            "IA32_MTRR_DEF_TYPE reads and writes",
            |a| {
                a.mov(ecx, 0x2ff).unwrap();
                a.mov(eax, 0xc06).unwrap();
                a.xor(edx, edx).unwrap();
                a.wrmsr().unwrap();
                a.xor(eax, eax).unwrap();
                a.rdmsr().unwrap();
            },
            ok(0xc06),
        ),
        (
            1,
            3,
            PGE,
            "CR4.PGE can be set",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.or(eax, 1 << 7).unwrap();
                a.mov(cr4, rax).unwrap();
                a.mov(rax, cr4).unwrap();
                a.shr(eax, 7).unwrap();
                a.and(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            1,
            3,
            CMOV,
            "CMOVZ",
            |a| {
                a.mov(eax, 1).unwrap();
                a.mov(ebx, 2).unwrap();
                a.cmp(eax, eax).unwrap();
                a.cmovz(eax, ebx).unwrap();
            },
            ok(2),
        ),
        (
            1,
            3,
            PAT,
            "IA32_PAT's reset value",
            |a| {
                a.mov(ecx, 0x277).unwrap();
                a.rdmsr().unwrap();
            },
            ok(0x0007_0406),
        ),
        (
            1,
            3,
            CLFSH,
            "CLFLUSH",
            |a| {
                a.clflush(byte_ptr(DATA)).unwrap();
                a.mov(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            1,
            2,
            CX16,
            "CMPXCHG16B",
            |a| {
                a.mov(qword_ptr(DATA), 5).unwrap();
                a.mov(qword_ptr(DATA + 8), 6).unwrap();
                a.mov(eax, 5).unwrap();
                a.mov(edx, 6).unwrap();
                a.mov(ebx, 9).unwrap();
                a.xor(ecx, ecx).unwrap();
                a.cmpxchg16b(xmmword_ptr(DATA)).unwrap();
                a.mov(rax, qword_ptr(DATA)).unwrap();
            },
            ok(9),
        ),
        (
            1,
            2,
            MOVBE,
            "MOVBE",
            |a| {
                a.mov(dword_ptr(DATA), 0x1122_3344).unwrap();
                a.movbe(eax, dword_ptr(DATA)).unwrap();
            },
            ok(0x4433_2211),
        ),
        (
            1,
            2,
            POPCNT,
            "POPCNT",
            |a| {
                a.mov(ebx, 0xf0f0).unwrap();
                a.popcnt(eax, ebx).unwrap();
            },
            ok(8),
        ),
        (
            7,
            1,
            FSGSBASE,
            "WRFSBASE/RDFSBASE with CR4.FSGSBASE",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.bts(eax, 16).unwrap();
                a.mov(cr4, rax).unwrap();
                a.mov(ebx, 0x4321).unwrap();
                a.wrfsbase(rbx).unwrap();
                a.rdfsbase(rax).unwrap();
            },
            ok(0x4321),
        ),
        (
            7,
            3,
            ARCH_CAPABILITIES,
            "RDMSR IA32_ARCH_CAPABILITIES (0x10A) reads the not-susceptible bits",
            |a| {
                a.mov(ecx, 0x10a).unwrap();
                a.rdmsr().unwrap();
                a.shl(rdx, 32).unwrap();
                a.or(rax, rdx).unwrap();
            },
            ok(sim_cpu::msr::NOT_SUSCEPTIBLE),
        ),
        (
            7,
            1,
            SMEP,
            "CR4.SMEP can be set",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.bts(eax, 20).unwrap();
                a.mov(cr4, rax).unwrap();
                a.mov(rax, cr4).unwrap();
                a.shr(eax, 20).unwrap();
                a.and(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            7,
            1,
            SMAP,
            "STAC sets RFLAGS.AC",
            |a| {
                a.mov(rax, cr4).unwrap();
                a.bts(eax, 21).unwrap();
                a.mov(cr4, rax).unwrap();
                a.stac().unwrap();
                a.pushfq().unwrap();
                a.pop(rax).unwrap();
                a.clac().unwrap();
                a.shr(eax, 18).unwrap();
                a.and(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            7,
            2,
            PKU,
            "PKRU.AD of a user page's key denies a read that succeeded before (SDM 4.6.2)",
            |a| {
                // CR4.PKE; linear 4 GiB as a user page with key 1 over physical 0.
                a.mov(rax, cr4).unwrap();
                a.bts(eax, 22).unwrap();
                a.mov(cr4, rax).unwrap();
                a.or(qword_ptr(0x10_0000), 4).unwrap();
                a.mov(rax, 0x0800_0000_0000_0087u64).unwrap();
                a.mov(qword_ptr(0x10_1020), rax).unwrap();
                a.mov(rax, cr3).unwrap();
                a.mov(cr3, rax).unwrap();
                a.mov(rbx, (1u64 << 32) + DATA).unwrap();
                a.mov(rax, qword_ptr(rbx)).unwrap();
                a.mov(eax, 1 << 2).unwrap(); // AD of key 1
                a.xor(ecx, ecx).unwrap();
                a.xor(edx, edx).unwrap();
                a.wrpkru().unwrap();
                a.mov(rax, qword_ptr(rbx)).unwrap();
            },
            Outcome::Vector(14),
        ),
        (
            7,
            2,
            PKS,
            "IA32_PKRS.AD of a supervisor page's key denies a read that succeeded before (SDM 4.6.2)",
            |a| {
                // CR4.PKS; linear 4 GiB as a supervisor page with key 1 over physical 0.
                a.mov(rax, cr4).unwrap();
                a.bts(eax, 24).unwrap();
                a.mov(cr4, rax).unwrap();
                a.mov(rax, 0x0800_0000_0000_0083u64).unwrap();
                a.mov(qword_ptr(0x10_1020), rax).unwrap();
                a.mov(rax, cr3).unwrap();
                a.mov(cr3, rax).unwrap();
                a.mov(rbx, (1u64 << 32) + DATA).unwrap();
                a.mov(rax, qword_ptr(rbx)).unwrap();
                a.mov(ecx, 0x6e1).unwrap(); // IA32_PKRS
                a.mov(eax, 1 << 2).unwrap(); // AD of key 1
                a.xor(edx, edx).unwrap();
                a.wrmsr().unwrap();
                a.mov(rax, qword_ptr(rbx)).unwrap();
            },
            Outcome::Vector(14),
        ),
        (
            0x8000_0001,
            2,
            LAHF_LM,
            "LAHF in 64-bit mode",
            |a| {
                a.xor(eax, eax).unwrap();
                a.stc().unwrap();
                a.lahf().unwrap();
                a.movzx(eax, ah).unwrap();
                a.and(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            0x8000_0001,
            2,
            ABM,
            "LZCNT",
            |a| {
                a.mov(ebx, 0x00ff_0000).unwrap();
                a.lzcnt(eax, ebx).unwrap();
            },
            ok(8),
        ),
        (
            0x8000_0001,
            2,
            PREFETCHW,
            "PREFETCHW",
            |a| {
                a.prefetchw(byte_ptr(DATA)).unwrap();
                a.mov(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            0x8000_0001,
            3,
            SYSCALL,
            "SYSCALL to IA32_LSTAR",
            |a| {
                a.mov(ecx, 0xc000_0080u32).unwrap();
                a.rdmsr().unwrap();
                a.or(eax, 1).unwrap();
                a.wrmsr().unwrap();
                a.mov(ecx, 0xc000_0081u32).unwrap();
                a.xor(eax, eax).unwrap();
                a.mov(edx, 0x0008).unwrap();
                a.wrmsr().unwrap();
                a.mov(ecx, 0xc000_0082u32).unwrap();
                a.mov(eax, (CODE + 0x800) as u32).unwrap();
                a.xor(edx, edx).unwrap();
                a.wrmsr().unwrap();
                // At LSTAR: mov eax, 0x5c; out 0x80, al; hlt.
                a.mov(rax, 0xf480_e600_0000_5cb8u64).unwrap();
                a.mov(qword_ptr(CODE + 0x800), rax).unwrap();
                a.mov(eax, 0xbad).unwrap();
                a.syscall().unwrap();
            },
            ok(0x5c),
        ),
        (
            0x8000_0001,
            3,
            NX,
            "EFER.NXE can be set",
            |a| {
                a.mov(ecx, 0xc000_0080u32).unwrap();
                a.rdmsr().unwrap();
                a.bts(eax, 11).unwrap();
                a.wrmsr().unwrap();
                a.rdmsr().unwrap();
                a.shr(eax, 11).unwrap();
                a.and(eax, 1).unwrap();
            },
            ok(1),
        ),
        (
            0x8000_0001,
            3,
            PAGE1GB,
            "a 1 GiB page maps this code",
            |a| {
                a.mov(rax, qword_ptr(0x10_1000)).unwrap();
                a.and(eax, 0x80).unwrap();
            },
            ok(0x80),
        ),
        (
            0x8000_0001,
            3,
            RDTSCP,
            "RDTSCP gives IA32_TSC_AUX",
            |a| {
                a.mov(ecx, 0xc000_0103u32).unwrap();
                a.mov(eax, 0x77).unwrap();
                a.xor(edx, edx).unwrap();
                a.wrmsr().unwrap();
                a.rdtscp().unwrap();
                a.mov(eax, ecx).unwrap();
            },
            ok(0x77),
        ),
        (
            0x8000_0001,
            3,
            LM,
            "EFER.LMA: this runs in long mode",
            |a| {
                a.mov(ecx, 0xc000_0080u32).unwrap();
                a.rdmsr().unwrap();
                a.shr(eax, 10).unwrap();
                a.and(eax, 1).unwrap();
            },
            ok(1),
        ),
    ]
}

#[test]
fn every_advertised_feature_works() {
    for (leaf, reg, bit, what, body, want) in advertised_cases() {
        assert_ne!(
            cpuid(leaf)[reg] & bit,
            0,
            "{what}: CPUID {leaf:#x} does not advertise it"
        );
        assert_eq!(run_case(body), want, "{what}");
    }
}

/// Every bit CPUID sets is covered by a case above (or is informational: the
/// hypervisor-present bit, OSXSAVE's and OSPKE's mirrors of CR4, PSE-36's wider 4 MiB
/// pages, which tests/guests/paging32.asm's 4 MiB pages run through).
#[test]
fn no_advertised_feature_goes_untested() {
    let covered: Vec<(u32, usize, u32)> =
        advertised_cases().iter().map(|c| (c.0, c.1, c.2)).collect();
    let informational = [
        (1, 2, bits::HYPERVISOR),
        (1, 2, bits::OSXSAVE),
        (7, 2, bits::OSPKE),
        (1, 3, bits::PSE36),
    ];
    for leaf in [1u32, 7, 0x8000_0001] {
        let regs = cpuid(leaf);
        for (reg, value) in regs.iter().enumerate().skip(1) {
            for b in 0..32 {
                let bit = 1u32 << b;
                if value & bit != 0 && !(leaf == 1 && reg == 1) {
                    assert!(
                        covered.contains(&(leaf, reg, bit))
                            || informational.contains(&(leaf, reg, bit)),
                        "CPUID {leaf:#x} register {reg} bit {b} is advertised but no case runs it"
                    );
                }
            }
        }
    }
}

/// CPUID 0x15/0x16 name the clocks, and the clocks keep to them: the APIC timer counts
/// at the crystal frequency and the TSC runs `EBX / EAX` times faster, so a timer
/// count of 1,000 (divide by 1) lasts 40,000 TSC ticks (SDM vol 3 11.5.4, vol 2 CPUID
/// leaf 15H).
#[test]
fn the_tsc_and_the_apic_timer_run_at_the_frequencies_cpuid_gives() {
    let l15 = cpuid(0x15);
    assert_eq!(l15, [1, 40, 25_000_000, 0], "TSC = 25 MHz x 40 / 1");
    let l16 = cpuid(0x16);
    assert_eq!(l16[..3], [1000, 1000, 25], "base, max and bus MHz");
    assert_eq!(
        cpuid(6)[0] & bits::ARAT,
        bits::ARAT,
        "the APIC timer always runs"
    );
    let Outcome::Result(ticks) = run_case(|a| {
        let mut spin = a.create_label();
        a.mov(ebx, 0xfee0_0000u32).unwrap();
        a.mov(dword_ptr(rbx + 0x3e0), 0xb).unwrap(); // divide by 1
        a.mov(dword_ptr(rbx + 0x320), 0x0001_0040).unwrap(); // one-shot, masked
        a.rdtsc().unwrap();
        a.mov(esi, eax).unwrap();
        a.mov(dword_ptr(rbx + 0x380), 1000).unwrap(); // initial count
        a.set_label(&mut spin).unwrap();
        a.cmp(dword_ptr(rbx + 0x390), 0).unwrap(); // current count
        a.jne(spin).unwrap();
        a.rdtsc().unwrap();
        a.sub(eax, esi).unwrap();
    }) else {
        panic!("the timer case faulted")
    };
    let want = 1000 * u64::from(l15[1] / l15[0]);
    assert!(
        (want..want + 100).contains(&ticks),
        "1,000 timer ticks lasted {ticks} TSC ticks; CPUID says {want}"
    );
}

#[test]
fn instructions_of_features_not_advertised_are_ud() {
    // (what, CPUID leaf, register, bit that must be clear, the instruction)
    type Absent = (&'static str, u32, usize, u32, fn(&mut CodeAssembler));
    let absent: [Absent; 11] = [
        ("ADDSUBPS (SSE3)", 1, 2, 1 << 0, |a| {
            a.addsubps(xmm0, xmm1).unwrap()
        }),
        ("PSHUFB (SSSE3)", 1, 2, 1 << 9, |a| {
            a.pshufb(xmm0, xmm1).unwrap()
        }),
        ("PMULLD (SSE4.1)", 1, 2, 1 << 19, |a| {
            a.pmulld(xmm0, xmm1).unwrap()
        }),
        ("VZEROUPPER (AVX)", 1, 2, 1 << 28, |a| {
            a.vzeroupper().unwrap()
        }),
        ("XGETBV (XSAVE)", 1, 2, 1 << 26, |a| a.xgetbv().unwrap()),
        ("RDRAND", 1, 2, 1 << 30, |a| a.rdrand(eax).unwrap()),
        ("RDSEED", 7, 1, 1 << 18, |a| a.rdseed(eax).unwrap()),
        ("ANDN (BMI1)", 7, 1, 1 << 3, |a| {
            a.andn(eax, ebx, ecx).unwrap()
        }),
        ("ADCX (ADX)", 7, 1, 1 << 19, |a| a.adcx(eax, ebx).unwrap()),
        ("RDPID", 7, 2, 1 << 22, |a| a.rdpid(rax).unwrap()),
        ("INVPCID", 7, 1, 1 << 10, |a| {
            a.invpcid(rax, xmmword_ptr(DATA)).unwrap()
        }),
    ];
    for (what, leaf, reg, bit, body) in absent {
        assert_eq!(
            cpuid(leaf)[reg] & bit,
            0,
            "{what}: CPUID advertises it; move it to the advertised cases"
        );
        assert_eq!(run_case(body), UD, "{what}");
    }
}

/// With IA32_APIC_BASE.EN clear the processor has no APIC, and CPUID.1:EDX.APIC
/// (bit 9) reads 0; set again, it reads 1 (SDM vol 3 11.4.3; kvm-unit-tests' apic.c
/// "CPUID.1H:EDX.APIC[bit 9] is clear"). The flag follows the MSR over a CPUID
/// answer the VMM registered too. The result: bit 0 the flag while disabled, bit 1
/// after re-enabling.
#[test]
fn cpuid_1_edx_apic_is_clear_while_apic_base_en_is_0_sdm_11_4_3() {
    let body = |a: &mut CodeAssembler| {
        a.mov(ecx, 0x1b).unwrap(); // IA32_APIC_BASE
        a.rdmsr().unwrap();
        a.mov(edi, eax).unwrap();
        a.and(eax, !(1u32 << 11) as i32).unwrap(); // EN off
        a.wrmsr().unwrap();
        a.mov(eax, 1).unwrap();
        a.cpuid().unwrap();
        a.mov(esi, edx).unwrap();
        a.shr(esi, 9).unwrap();
        a.and(esi, 1).unwrap();
        a.mov(eax, edi).unwrap(); // EN on again
        a.mov(ecx, 0x1b).unwrap();
        a.xor(edx, edx).unwrap();
        a.wrmsr().unwrap();
        a.mov(eax, 1).unwrap();
        a.cpuid().unwrap();
        a.mov(eax, edx).unwrap();
        a.shr(eax, 8).unwrap();
        a.and(eax, 2).unwrap();
        a.or(eax, esi).unwrap();
    };
    assert_eq!(guest_case(|_| {}, body), ok(0b10), "the processor's answer");
    let registered = guest_case(
        |g| {
            g.vcpu
                .set_cpuid_results(&[hv_core::CpuidResult {
                    leaf: 1,
                    subleaf: None,
                    registers: [None, None, None, Some(u32::MAX)],
                }])
                .unwrap()
        },
        body,
    );
    assert_eq!(registered, ok(0b10), "over an answer the VMM registered");
}

/// The machine-check architecture with no banks (SDM vol 3 16.3.1): IA32_MCG_CAP is 0
/// (no banks, no MCG_CTL) and read-only; IA32_MCG_STATUS takes RIPV, EIPV and MCIP and
/// #GP(0) for its reserved bits; IA32_MCG_CTL and every IA32_MCi_* MSR of a bank that
/// does not exist #GP(0) (kvm-unit-tests msr test_mce_msrs reads MCG_CAP and tries
/// banks 0-31). The result: MCG_CAP, then MCG_STATUS after a write of 7.
#[test]
fn sdm_16_3_1_machine_check_architecture_with_no_banks() {
    let rdmsr = |msr: u32| {
        run_case(move |a| {
            a.mov(ecx, msr).unwrap();
            a.rdmsr().unwrap();
        })
    };
    let wrmsr = |msr: u32, value: u64| {
        run_case(move |a| {
            a.mov(ecx, msr).unwrap();
            a.mov(eax, value as u32).unwrap();
            a.mov(edx, (value >> 32) as u32).unwrap();
            a.wrmsr().unwrap();
            a.xor(eax, eax).unwrap();
        })
    };
    const GP: Outcome = Outcome::Vector(13);
    assert_eq!(rdmsr(0x179), ok(0), "MCG_CAP: no banks");
    assert_eq!(wrmsr(0x179, 0), GP, "MCG_CAP is read-only");
    let status = run_case(|a| {
        a.mov(ecx, 0x17a).unwrap();
        a.mov(eax, 7).unwrap();
        a.xor(edx, edx).unwrap();
        a.wrmsr().unwrap();
        a.rdmsr().unwrap();
    });
    assert_eq!(status, ok(7), "MCG_STATUS: RIPV, EIPV, MCIP");
    assert_eq!(wrmsr(0x17a, 8), GP, "MCG_STATUS.LMCE_S without LMCE");
    assert_eq!(rdmsr(0x17b), GP, "no MCG_CTL");
    for bank in [0u32, 1, 31] {
        for (reg, name) in ["CTL", "STATUS", "ADDR", "MISC"].iter().enumerate() {
            let msr = 0x400 + 4 * bank + reg as u32;
            assert_eq!(rdmsr(msr), GP, "RDMSR IA32_MC{bank}_{name}");
            assert_eq!(wrmsr(msr, 0), GP, "WRMSR IA32_MC{bank}_{name}");
        }
        assert_eq!(rdmsr(0x280 + bank), GP, "IA32_MC{bank}_CTL2");
    }
}

/// IA32_ARCH_CAPABILITIES is read-only (SDM vol 4 table 2-2): a WRMSR of any value,
/// its own included, is #GP(0).
#[test]
fn ia32_arch_capabilities_is_read_only_sdm_vol4_table_2_2() {
    for value in [0, sim_cpu::msr::NOT_SUSCEPTIBLE] {
        let written = run_case(move |a| {
            a.mov(ecx, 0x10a).unwrap();
            a.mov(eax, value as u32).unwrap();
            a.mov(edx, (value >> 32) as u32).unwrap();
            a.wrmsr().unwrap();
            a.xor(eax, eax).unwrap();
        });
        assert_eq!(written, Outcome::Vector(13), "WRMSR 0x10a, {value:#x}");
    }
}
