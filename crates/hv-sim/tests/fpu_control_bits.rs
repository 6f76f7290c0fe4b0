//! What CR0.EM, CR0.MP, CR0.TS, CR0.NE, CR4.OSFXSR and CR4.OSXMMEXCPT do to x87, MMX,
//! SSE and FXSAVE instructions. The host CPU cannot judge these (user code cannot set
//! control registers), so each case is held to the manual: SDM vol 3 2.5 and Table 2-2
//! ("Action Taken By x87 FPU Instructions for Different Combinations of EM, MP, and
//! TS"), vol 1 11.6.2 and 13.1 (OSFXSR, OSXMMEXCPT), vol 2 for each instruction's
//! exceptions (EMMS, FXSAVE, LDMXCSR, MOVAPS).

mod common;

use common::*;
use iced_x86::code_asm::*;
use mshv_bindings::*;

const NM: Outcome = Outcome::Vector(7);
const UD: Outcome = Outcome::Vector(6);
const GP: Outcome = Outcome::Vector(13);
const MF: Outcome = Outcome::Vector(16);
const XM: Outcome = Outcome::Vector(19);
const DONE: Outcome = Outcome::Result(0);

const MP: u64 = 1 << 1;
const EM: u64 = 1 << 2;
const TS: u64 = 1 << 3;
const NE: u64 = 1 << 5;
const OSFXSR: u64 = 1 << 9;
const OSXMMEXCPT: u64 = 1 << 10;

/// Runs `body` with CR0 = PE | ET | PG | `cr0` and CR4 = PAE | `cr4`; RAX is 0 on a
/// clean finish.
fn case(c0: u64, c4: u64, body: fn(&mut CodeAssembler)) -> Outcome {
    guest_case(
        |g| {
            g.set(hv_register_name_HV_X64_REGISTER_CR0, 0x8000_0011 | c0);
            g.set(hv_register_name_HV_X64_REGISTER_CR4, (1 << 5) | c4);
        },
        |a| {
            body(a);
            a.xor(eax, eax).unwrap();
        },
    )
}

fn fld1(a: &mut CodeAssembler) {
    a.fld1().unwrap();
}

fn wait(a: &mut CodeAssembler) {
    a.wait().unwrap();
}

fn addps(a: &mut CodeAssembler) {
    a.addps(xmm0, xmm1).unwrap();
}

fn paddb_mm(a: &mut CodeAssembler) {
    a.paddb(mm0, mm1).unwrap();
}

fn fxsave(a: &mut CodeAssembler) {
    a.fxsave(ptr(CASE_DATA)).unwrap();
}

/// SDM vol 3 Table 2-2, row by row: EM, MP, TS against a floating-point instruction
/// and WAIT/FWAIT.
#[test]
fn table_2_2_em_mp_ts_for_x87_and_wait() {
    let rows: [(u64, Outcome, Outcome); 8] = [
        // (CR0 bits, x87 instruction, WAIT)
        (0, DONE, DONE),
        (TS, NM, DONE),
        (MP, DONE, DONE),
        (MP | TS, NM, NM),
        (EM, NM, DONE),
        (EM | TS, NM, DONE),
        (EM | MP, NM, DONE),
        (EM | MP | TS, NM, NM),
    ];
    for (bits, x87, w) in rows {
        assert_eq!(
            case(bits | NE, OSFXSR, fld1),
            x87,
            "FLD1 with CR0 bits {bits:#x}"
        );
        assert_eq!(
            case(bits | NE, OSFXSR, wait),
            w,
            "WAIT with CR0 bits {bits:#x}"
        );
    }
}

/// SSE: #UD with CR0.EM or without CR4.OSFXSR, #NM with CR0.TS (vol 2 ADDPS,
/// "Exceptions Type 2").
#[test]
fn sse_needs_osfxsr_and_no_em_and_faults_nm_with_ts() {
    assert_eq!(case(NE, OSFXSR, addps), DONE);
    assert_eq!(case(NE, 0, addps), UD, "CR4.OSFXSR clear");
    assert_eq!(case(NE | EM, OSFXSR, addps), UD, "CR0.EM set");
    assert_eq!(case(NE | TS, OSFXSR, addps), NM, "CR0.TS set");
}

/// MMX: #UD with CR0.EM, #NM with CR0.TS, #MF for a pending x87 exception; OSFXSR does
/// not matter (vol 2 PADDB, "Exceptions Type 22-7"; vol 1 9.5.2).
#[test]
fn mmx_follows_the_x87_rules() {
    assert_eq!(case(NE, 0, paddb_mm), DONE);
    assert_eq!(case(NE | EM, 0, paddb_mm), UD);
    assert_eq!(case(NE | TS, 0, paddb_mm), NM);
    let pending = |a: &mut CodeAssembler| {
        // An unmasked zero divide, then an MMX instruction.
        a.fninit().unwrap();
        a.mov(dword_ptr(CASE_DATA), 0x037bu32).unwrap(); // ZM clear
        a.fldcw(word_ptr(CASE_DATA)).unwrap();
        a.fld1().unwrap();
        a.fldz().unwrap();
        a.fdivp(st1, st0).unwrap();
        a.paddb(mm0, mm1).unwrap();
    };
    assert_eq!(case(NE, 0, pending), MF);
}

/// With CR0.NE clear an unmasked x87 exception does not raise #MF: the processor
/// asserts FERR# (for the PC's IRQ 13) and goes on (vol 1 8.7, Appendix D).
#[test]
fn without_ne_a_pending_exception_goes_to_ferr_not_mf() {
    let pending_then_wait = |a: &mut CodeAssembler| {
        a.fninit().unwrap();
        a.mov(dword_ptr(CASE_DATA), 0x037bu32).unwrap();
        a.fldcw(word_ptr(CASE_DATA)).unwrap();
        a.fld1().unwrap();
        a.fldz().unwrap();
        a.fdivp(st1, st0).unwrap();
        a.wait().unwrap();
    };
    assert_eq!(case(NE, 0, pending_then_wait), MF);
    assert_eq!(case(0, 0, pending_then_wait), DONE);
}

/// An unmasked SIMD exception is #XM with CR4.OSXMMEXCPT, #UD without (vol 1 11.5.2).
#[test]
fn an_unmasked_simd_exception_is_xm_only_with_osxmmexcpt() {
    let divide_by_zero = |a: &mut CodeAssembler| {
        a.mov(dword_ptr(CASE_DATA), 0x1f80u32 & !(1 << 9)).unwrap(); // ZM clear
        a.ldmxcsr(dword_ptr(CASE_DATA)).unwrap();
        a.mov(eax, 0x3f80_0000).unwrap();
        a.movd(xmm0, eax).unwrap();
        a.xorps(xmm1, xmm1).unwrap();
        a.divss(xmm0, xmm1).unwrap();
    };
    assert_eq!(case(NE, OSFXSR | OSXMMEXCPT, divide_by_zero), XM);
    assert_eq!(case(NE, OSFXSR, divide_by_zero), UD);
}

/// FXSAVE: #NM with CR0.TS, #UD with CR0.EM, #GP(0) for an unaligned operand (vol 2
/// FXSAVE); LDMXCSR: #GP(0) for a reserved bit; MOVAPS: #GP(0) unaligned.
#[test]
fn fxsave_ldmxcsr_and_alignment_faults() {
    assert_eq!(case(NE, OSFXSR, fxsave), DONE);
    assert_eq!(case(NE | TS, OSFXSR, fxsave), NM);
    assert_eq!(case(NE | EM, OSFXSR, fxsave), UD);
    let unaligned = |a: &mut CodeAssembler| a.fxsave(ptr(CASE_DATA + 8)).unwrap();
    assert_eq!(case(NE, OSFXSR, unaligned), GP);
    let reserved = |a: &mut CodeAssembler| {
        a.mov(dword_ptr(CASE_DATA), 0x1f80u32 | 1 << 16).unwrap();
        a.ldmxcsr(dword_ptr(CASE_DATA)).unwrap();
    };
    assert_eq!(case(NE, OSFXSR, reserved), GP);
    let movaps = |a: &mut CodeAssembler| a.movaps(xmm0, xmmword_ptr(CASE_DATA + 4)).unwrap();
    assert_eq!(case(NE, OSFXSR, movaps), GP);
    let movups = |a: &mut CodeAssembler| a.movups(xmm0, xmmword_ptr(CASE_DATA + 4)).unwrap();
    assert_eq!(case(NE, OSFXSR, movups), DONE);
}

/// EMMS: #UD with CR0.EM, #NM with CR0.TS; it empties every x87 register.
#[test]
fn emms_empties_the_tags() {
    assert_eq!(case(NE | EM, 0, |a| a.emms().unwrap()), UD);
    assert_eq!(case(NE | TS, 0, |a| a.emms().unwrap()), NM);
    let tags_after = |a: &mut CodeAssembler| {
        a.paddb(mm0, mm1).unwrap();
        a.emms().unwrap();
        a.fnstenv(ptr(CASE_DATA)).unwrap();
        a.movzx(eax, word_ptr(CASE_DATA + 8)).unwrap();
        // Report the tag word now: the case's own tail zeroes EAX.
        a.out(0x80, al).unwrap();
    };
    assert_eq!(
        case(NE, 0, tags_after),
        Outcome::Result(0xffff),
        "every tag 11 (empty)"
    );
}
