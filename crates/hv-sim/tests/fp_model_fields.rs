//! The FXSAVE fields the architecture leaves to the processor model, held to what the
//! sim's own CPUID says its model is. The host-differential suites (x87_vs_host,
//! sse_vs_host) cannot judge these, since they differ between hosts: MXCSR_MASK is
//! 0x0002FFFF on AMD's Zen 4 and 5 (misaligned SSE) and 0x0000FFFF on Intel's; whether
//! FDP, FCS and FDS are saved depends on CPUID.(EAX=07H,ECX=0):EBX bits 6 and 13 (and on
//! AMD on a pending exception). `common::fx_comparable` leaves them out of those
//! comparisons; here each is checked against the sim's CPUID, run in the guest.

mod common;

use common::*;
use iced_x86::code_asm::*;
use mshv_bindings::*;
use sim_cpu::cpuid::bits;

const DATA: u64 = CASE_DATA;
const GP: Outcome = Outcome::Vector(13);

/// Runs `body` in 64-bit ring 0 with CR4.OSFXSR and CR4.OSXMMEXCPT set, as an OS
/// that uses SSE runs; the case ends with RAX on port 0x80.
fn run(body: impl FnOnce(&mut CodeAssembler)) -> Outcome {
    guest_case(
        |g| {
            g.set(
                hv_register_name_HV_X64_REGISTER_CR4,
                (1 << 5) | (1 << 9) | (1 << 10),
            );
        },
        body,
    )
}

fn result(o: Outcome) -> u64 {
    match o {
        Outcome::Result(v) => v,
        Outcome::Vector(v) => panic!("vector {v}"),
    }
}

/// CPUID `leaf` (subleaf 0) in the guest: `[eax, ebx, ecx, edx]`.
fn cpuid(leaf: u32) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, reg) in [eax, ebx, ecx, edx].into_iter().enumerate() {
        out[i] = result(run(|a| {
            a.mov(eax, leaf).unwrap();
            a.xor(ecx, ecx).unwrap();
            a.cpuid().unwrap();
            a.mov(eax, reg).unwrap();
        })) as u32;
    }
    out
}

/// The MXCSR_MASK the sim's CPUID describes (SDM vol 1 11.6.6 "Guidelines for Writing
/// to the MXCSR Register", 10.5.1.2; AMD APM vol 2 11.4.4 "Saving Media and
/// x87 State"): bits 0-15 with DAZ (bit 6, which every SSE2 processor has), and bit 17 MM
/// where CPUID.80000001H:ECX[7] MisAlignSse is set; every other bit reserved.
fn mask_from_cpuid() -> u32 {
    let leaf1 = cpuid(1);
    assert_ne!(leaf1[3] & bits::FXSR, 0, "FXSAVE advertised");
    assert_ne!(leaf1[3] & bits::SSE2, 0, "SSE2 advertised");
    let misaligned_sse = cpuid(0x8000_0001)[2] & (1 << 7) != 0;
    0xffff | if misaligned_sse { 1 << 17 } else { 0 }
}

/// FXSAVE's MXCSR_MASK (bytes 28-31) in the sim.
fn mxcsr_mask() -> u32 {
    result(run(|a| {
        a.fxsave(ptr(DATA)).unwrap();
        a.mov(eax, dword_ptr(DATA + 28)).unwrap();
    })) as u32
}

#[test]
fn fxsave_mxcsr_mask_is_the_one_cpuid_describes_sdm_11_6_6() {
    assert_eq!(mxcsr_mask(), mask_from_cpuid());
}

/// SDM vol 1 11.6.6: writing a 1 to an MXCSR bit that is 0 in MXCSR_MASK is #GP(0),
/// by LDMXCSR and by FXRSTOR alike; every bit the mask has is accepted and reads back.
#[test]
fn ldmxcsr_and_fxrstor_accept_exactly_the_bits_of_mxcsr_mask_sdm_11_6_6() {
    let mask = mxcsr_mask();
    for bit in 0..32 {
        let v = 0x1f80 | 1u32 << bit;
        let want = if mask & 1 << bit != 0 {
            Outcome::Result(v as u64)
        } else {
            GP
        };
        let ldmxcsr = run(|a| {
            a.mov(dword_ptr(DATA), v).unwrap();
            a.ldmxcsr(dword_ptr(DATA)).unwrap();
            a.stmxcsr(dword_ptr(DATA + 4)).unwrap();
            a.mov(eax, dword_ptr(DATA + 4)).unwrap();
        });
        assert_eq!(ldmxcsr, want, "LDMXCSR of {v:#x}");
        let fxrstor = run(|a| {
            a.fxsave(ptr(DATA)).unwrap();
            a.mov(dword_ptr(DATA + 24), v).unwrap();
            a.fxrstor(ptr(DATA)).unwrap();
            a.stmxcsr(dword_ptr(DATA + 512)).unwrap();
            a.mov(eax, dword_ptr(DATA + 512)).unwrap();
        });
        assert_eq!(fxrstor, want, "FXRSTOR of MXCSR {v:#x}");
    }
}

/// MXCSR_MASK bit 6 says DAZ is supported (SDM vol 1 11.6.3 "Checking for the DAZ Flag
/// in the MXCSR Register"), and then DAZ does what it says: a denormal source reads as
/// zero (vol 1 10.2.3.4).
#[test]
fn daz_in_mxcsr_mask_means_denormal_sources_read_as_zero_sdm_11_6_3() {
    assert_ne!(mxcsr_mask() & 1 << 6, 0, "DAZ supported");
    for (mxcsr, sum) in [(0x1f80u32, 1u64), (0x1f80 | 1 << 6, 0)] {
        let got = result(run(|a| {
            a.mov(dword_ptr(DATA), mxcsr).unwrap();
            a.ldmxcsr(dword_ptr(DATA)).unwrap();
            a.mov(eax, 1).unwrap(); // the smallest denormal single
            a.movd(xmm0, eax).unwrap();
            a.xorps(xmm1, xmm1).unwrap();
            a.addss(xmm0, xmm1).unwrap();
            a.movd(eax, xmm0).unwrap();
        }));
        assert_eq!(got, sum, "denormal + 0 with MXCSR {mxcsr:#x}");
    }
}

/// The x87 pointers FXSAVE reports after `fld dword [DATA + 0x100]` and then a control
/// instruction (FNSTCW), against CPUID.(EAX=07H,ECX=0):EBX (SDM vol 1 8.1.8 "x87 FPU
/// Instruction and Data (Operand) Pointers"): FIP is the FLD's address (control
/// instructions do not update it); FDP is its operand's address unless bit 6
/// FDP_EXCPTN_ONLY is set (then only an unmasked exception updates it and it stays 0 from
/// FNINIT); FCS and FDS are the selectors unless bit 13 deprecates them (saved as 0).
#[test]
fn fxsave_pointers_follow_cpuid_7_ebx_bits_6_and_13_sdm_8_1_8() {
    let leaf7 = cpuid(7)[1];
    let fdp_exception_only = leaf7 & (1 << 6) != 0;
    let fcs_fds_deprecated = leaf7 & (1 << 13) != 0;
    let operand = DATA + 0x100;
    // FXSAVE without REX.W: FIP at 8, FCS at 12, FDP at 16, FDS at 20 (32 bits, 16, 32,
    // 16). Each case returns one field; FIP as its distance from the FLD.
    let field = |at: u64, word: bool| {
        result(run(|a| {
            let mut fld = a.create_label();
            a.fninit().unwrap();
            a.mov(dword_ptr(operand), 0x3fc0_0000).unwrap(); // 1.5f
            a.set_label(&mut fld).unwrap();
            a.fld(dword_ptr(operand)).unwrap();
            a.fnstcw(word_ptr(DATA + 0x110)).unwrap();
            a.fxsave(ptr(DATA)).unwrap();
            if word {
                a.movzx(eax, word_ptr(DATA + at)).unwrap();
            } else {
                a.mov(eax, dword_ptr(DATA + at)).unwrap();
            }
            if at == 8 {
                a.lea(rcx, ptr(fld)).unwrap();
                a.sub(eax, ecx).unwrap();
            }
        }))
    };
    assert_eq!(field(8, false), 0, "FIP: the FLD, not the FNSTCW");
    let (code_sel, data_sel) = if fcs_fds_deprecated { (0, 0) } else { (8, 16) };
    assert_eq!(field(12, true), code_sel, "FCS");
    assert_eq!(field(20, true), data_sel, "FDS");
    let fdp = if fdp_exception_only { 0 } else { operand };
    assert_eq!(field(16, false), fdp, "FDP");
}

/// FXSAVE does not write bytes 464-511, which are left to software (SDM vol 2 FXSAVE,
/// Table 3-53 note; vol 1 10.5.1).
#[test]
fn fxsave_leaves_the_software_available_bytes_alone() {
    let pattern = 0xa5c3_96e1_5a3c_691eu64;
    let differing = result(run(|a| {
        a.mov(rcx, pattern).unwrap();
        for k in 0..6 {
            a.mov(qword_ptr(DATA + 464 + 8 * k), rcx).unwrap();
        }
        a.fxsave(ptr(DATA)).unwrap();
        a.xor(eax, eax).unwrap();
        for k in 0..6 {
            a.mov(rdx, qword_ptr(DATA + 464 + 8 * k)).unwrap();
            a.xor(rdx, rcx).unwrap();
            a.or(rax, rdx).unwrap();
        }
    }));
    assert_eq!(differing, 0);
}
