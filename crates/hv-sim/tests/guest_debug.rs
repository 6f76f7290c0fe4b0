//! The guest's own debugging, as kvm-unit-tests' x86/debug.c checks it on hardware:
//! DR0-DR3 breakpoints its DR7 enables (instruction, data write, data read/write, I/O),
//! DR6 as the #DB handler reads it, the single-step trap (RFLAGS.TF) around the
//! instructions that deliver events themselves (INT n, INT3, INT1), MOV SS blocking,
//! and instructions the VMM completes (a port exit) or that halt.
//!
//! Each guest runs in 64-bit mode at CPL 0 with a #DB handler that logs the RIP it
//! returns to and DR6, as debug.c's handle_db does (and sets RF in the image when a
//! breakpoint matched, so an instruction breakpoint lets its instruction run).

mod common;

use common::*;
use hv_core::message::*;
use hv_core::regs::pack_table;
use hv_core::{Exit, RegisterPageMode};
use iced_x86::code_asm::*;
use mshv_bindings::*;

const GDT: u64 = 0x500;
const IDT: u64 = 0x3000;
const DB_HANDLER: u64 = 0x4000;
const BP_HANDLER: u64 = 0x4100;
/// #DE: sets RCX to 1, puts an instruction breakpoint (DR0) on the faulting
/// instruction, and returns to it.
const DE_HANDLER: u64 = 0x4200;
const CODE: u64 = 0x1_0000;
/// The #DB log: a count, then (RIP, DR6) pairs.
const COUNT: u64 = 0x6000;
const LOG: u64 = 0x6100;
/// The RIP the #BP handler returned to.
const BP_RIP: u64 = 0x6008;
/// Where the guest stores the addresses the log is compared with.
const MARK: u64 = 0x6010;
/// The data breakpoints' target, alone on its page.
const VALUE: u64 = 0x7000;
/// The port whose OUT ends a guest.
const DONE: u16 = 0xe9;
/// DR6 with nothing to report: its reserved bits read as 1 (SDM vol 3 18.2.3).
const DR6_FIXED: u64 = 0xffff_0ff0;
const BS: u64 = 1 << 14;
const TF: u64 = 1 << 8;

/// A 64-bit guest at CPL 0 whose code is `f` at [`CODE`], ending with `out DONE, al`.
fn debug_guest(page: RegisterPageMode, f: impl FnOnce(&mut CodeAssembler)) -> Guest {
    let mut g = guest_with(config(page));
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let gdt: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    g.load(GDT, &gdt);
    for (v, h) in [(0u64, DE_HANDLER), (1, DB_HANDLER), (3, BP_HANDLER)] {
        let low = (h & 0xffff) | (8 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
        g.load(IDT + v * 16, &low.to_le_bytes());
    }
    g.load(
        DB_HANDLER,
        &assemble(64, DB_HANDLER, |a| {
            let mut no_rf = a.create_label();
            let mut more = a.create_label();
            a.push(rax).unwrap();
            a.push(rbx).unwrap();
            a.mov(rbx, qword_ptr(COUNT)).unwrap();
            a.shl(rbx, 4).unwrap();
            a.mov(rax, qword_ptr(rsp + 16)).unwrap();
            a.mov(qword_ptr(rbx + LOG), rax).unwrap();
            a.mov(rax, dr6).unwrap();
            a.mov(qword_ptr(rbx + LOG + 8), rax).unwrap();
            a.inc(qword_ptr(COUNT)).unwrap();
            // A breakpoint matched: RF in the image, so an instruction breakpoint's
            // instruction runs on return (debug.c sets it for DR6.B2).
            a.test(al, 0xf).unwrap();
            a.jz(no_rf).unwrap();
            a.bts(qword_ptr(rsp + 32), 16).unwrap();
            a.set_label(&mut no_rf).unwrap();
            // At ten, stop stepping and breaking, as debug.c does.
            a.cmp(qword_ptr(COUNT), 10).unwrap();
            a.jb(more).unwrap();
            a.and(qword_ptr(rsp + 32), !(TF as i32)).unwrap();
            a.mov(rax, 0x400u64).unwrap();
            a.mov(dr7, rax).unwrap();
            a.set_label(&mut more).unwrap();
            a.pop(rbx).unwrap();
            a.pop(rax).unwrap();
            a.iretq().unwrap();
        }),
    );
    g.load(
        BP_HANDLER,
        &assemble(64, BP_HANDLER, |a| {
            a.push(rax).unwrap();
            a.mov(rax, qword_ptr(rsp + 8)).unwrap();
            a.mov(qword_ptr(BP_RIP), rax).unwrap();
            a.pop(rax).unwrap();
            a.iretq().unwrap();
        }),
    );
    g.load(
        DE_HANDLER,
        &assemble(64, DE_HANDLER, |a| {
            a.mov(ecx, 1).unwrap();
            a.mov(r8, qword_ptr(rsp)).unwrap();
            a.mov(dr0, r8).unwrap();
            a.mov(r8, 0x402u64).unwrap(); // G0: execute
            a.mov(dr7, r8).unwrap();
            a.iretq().unwrap();
        }),
    );
    g.load(
        CODE,
        &assemble(64, CODE, |a| {
            f(a);
            a.out(DONE as u32, al).unwrap();
        }),
    );
    g.long_mode(CODE);
    g.set_raw(hv_register_name_HV_X64_REGISTER_GDTR, pack_table(GDT, 23));
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_IDTR,
        pack_table(IDT, 0xfff),
    );
    g
}

/// Runs to the OUT to [`DONE`], completing every other port access as a VMM does:
/// RIP past the instruction, through the register page when there is one.
fn run_to_done(g: &mut Guest) {
    for _ in 0..100 {
        assert_eq!(g.run(), Exit::Message);
        assert_eq!(g.msg.message_type(), HVMSG_X64_IO_PORT_INTERCEPT);
        let io: hv_x64_io_port_intercept_message = g.msg.payload();
        if io.port_number == DONE {
            return;
        }
        let next = io.header.rip + io.header.instruction_length() as u64;
        match g.vcpu.register_page() {
            Some(p) => {
                p.write_u64(hv_core::page::RIP, next);
                p.write_u32(hv_core::page::DIRTY, hv_core::page::DIRTY_IP);
            }
            None => g.set(hv_register_name_HV_X64_REGISTER_RIP, next),
        }
    }
    panic!("the guest never reached its end");
}

/// The #DB log: (RIP, DR6) per #DB, in order.
fn log(g: &Guest) -> Vec<(u64, u64)> {
    let q = |at: u64| {
        let mut b = [0u8; 8];
        g.ram.read(at as usize, &mut b).unwrap();
        u64::from_le_bytes(b)
    };
    (0..q(COUNT))
        .map(|i| (q(LOG + 16 * i), q(LOG + 16 * i + 8)))
        .collect()
}

fn qword(g: &Guest, at: u64) -> u64 {
    let mut b = [0u8; 8];
    g.ram.read(at as usize, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Stores the address of `label` at `MARK + 8 * slot`.
fn mark(a: &mut CodeAssembler, label: CodeLabel, slot: u64) {
    a.lea(rbx, ptr(label)).unwrap();
    a.mov(qword_ptr(MARK + 8 * slot), rbx).unwrap();
}

/// Sets TF: it takes effect after the POPF (SDM vol 3 18.3.1.4).
fn set_tf(a: &mut CodeAssembler) {
    a.pushfq().unwrap();
    a.pop(rax).unwrap();
    a.or(rax, TF as i32).unwrap();
    a.push(rax).unwrap();
}

/// `and rax, ~TF` in its 6-byte form (48 25 imm32), as the offsets below count it.
const AND_RAX_NOT_TF: [u8; 6] = [0x48, 0x25, 0xff, 0xfe, 0xff, 0xff];

/// SDM vol 3 18.2.5: an enabled instruction breakpoint (R/W = 00) is a #DB fault before
/// the instruction, RIP on it, with DR6.Bn of the slot set and B0-B3 of earlier #DBs
/// cleared while BS (set by software here) stays (18.2.3); RF in the image lets the
/// instruction run on return (18.3.1.1). kvm-unit-tests debug "Wanted #DB on ... got 0
/// #DBs": the sim had no guest breakpoints.
#[test]
fn sdm_18_2_5_an_instruction_breakpoint_faults_before_its_instruction() {
    let mut g = debug_guest(RegisterPageMode::Off, |a| {
        let mut bp1 = a.create_label();
        let mut bp2 = a.create_label();
        mark(a, bp1, 0);
        mark(a, bp2, 1);
        a.mov(dr2, rbx).unwrap();
        a.mov(rax, qword_ptr(MARK)).unwrap();
        a.mov(dr2, rax).unwrap();
        a.mov(rax, 0x420u64).unwrap(); // G2
        a.mov(dr7, rax).unwrap();
        a.set_label(&mut bp1).unwrap();
        a.nop().unwrap();
        // Again with DR6 = BS | B1 (debug.c's hw_bp2).
        a.mov(rax, qword_ptr(MARK + 8)).unwrap();
        a.mov(dr2, rax).unwrap();
        a.mov(rax, BS | 2).unwrap();
        a.mov(dr6, rax).unwrap();
        a.set_label(&mut bp2).unwrap();
        a.nop().unwrap();
        a.mov(rax, 0x400u64).unwrap();
        a.mov(dr7, rax).unwrap();
    });
    run_to_done(&mut g);
    let (bp1, bp2) = (qword(&g, MARK), qword(&g, MARK + 8));
    assert_eq!(
        log(&g),
        [(bp1, DR6_FIXED | 4), (bp2, DR6_FIXED | BS | 4)],
        "one #DB at each breakpoint, before its NOP"
    );
}

/// SDM vol 3 18.2.5: data breakpoints are traps after the instruction that accessed
/// their aligned range: R/W = 01 on writes only, 11 on reads and writes; DR6.Bn set,
/// B0-B3 of earlier #DBs cleared, BS left as software set it. kvm-unit-tests debug "hw
/// watchpoint (test that dr6.BS is not cleared)" and "... is not set".
#[test]
fn sdm_18_2_5_data_breakpoints_trap_after_the_access() {
    let mut g = debug_guest(RegisterPageMode::Off, |a| {
        let mut w1 = a.create_label();
        let mut w2 = a.create_label();
        let mut r = a.create_label();
        mark(a, w1, 0);
        mark(a, w2, 1);
        mark(a, r, 2);
        a.mov(rax, VALUE).unwrap();
        a.mov(dr1, rax).unwrap();
        a.mov(rax, BS).unwrap();
        a.mov(dr6, rax).unwrap();
        a.mov(rax, 0x00d0_040au64).unwrap(); // DR1: 4-byte write (debug.c's value)
        a.mov(dr7, rax).unwrap();
        a.mov(rax, 42u64).unwrap();
        a.mov(qword_ptr(VALUE), rax).unwrap();
        a.set_label(&mut w1).unwrap();
        // A read does not match a write breakpoint; a write past its 4 bytes neither.
        a.mov(rcx, qword_ptr(VALUE)).unwrap();
        a.mov(dword_ptr(VALUE + 4), eax).unwrap();
        a.xor(eax, eax).unwrap();
        a.mov(dr6, rax).unwrap();
        a.mov(word_ptr(VALUE + 2), ax).unwrap();
        a.set_label(&mut w2).unwrap();
        a.mov(rax, 0x00f0_040au64).unwrap(); // 4-byte read or write
        a.mov(dr7, rax).unwrap();
        a.mov(rcx, qword_ptr(VALUE)).unwrap();
        a.set_label(&mut r).unwrap();
        a.mov(rax, 0x400u64).unwrap();
        a.mov(dr7, rax).unwrap();
    });
    run_to_done(&mut g);
    let (w1, w2, r) = (qword(&g, MARK), qword(&g, MARK + 8), qword(&g, MARK + 16));
    assert_eq!(
        log(&g),
        [
            (w1, DR6_FIXED | BS | 2),
            (w2, DR6_FIXED | 2),
            (r, DR6_FIXED | 2),
        ]
    );
}

/// SDM vol 3 18.2.4 and 18.2.5: with CR4.DE an I/O breakpoint (R/W = 10) traps after an
/// IN or OUT to its ports; here the instruction exits to the VMM, so the #DB comes when
/// the VMM has completed it and the vCPU resumes after it. Without CR4.DE, R/W = 10 is
/// undefined: nothing traps.
#[test]
fn sdm_18_2_4_an_io_breakpoint_traps_after_the_vmm_completes_the_access() {
    for de in [true, false] {
        let mut g = debug_guest(RegisterPageMode::Off, |a| {
            let mut after = a.create_label();
            mark(a, after, 0);
            if de {
                a.mov(rax, cr4).unwrap();
                a.or(rax, 1 << 3).unwrap();
                a.mov(cr4, rax).unwrap();
            }
            a.mov(rax, 0x80u64).unwrap();
            a.mov(dr0, rax).unwrap();
            a.mov(rax, 0x0002_0402u64).unwrap(); // G0, R/W0 = 10, one byte
            a.mov(dr7, rax).unwrap();
            a.out(0x81, al).unwrap(); // another port
            a.out(0x80, al).unwrap();
            a.set_label(&mut after).unwrap();
            a.mov(rax, 0x400u64).unwrap();
            a.mov(dr7, rax).unwrap();
        });
        run_to_done(&mut g);
        let expected = if de {
            vec![(qword(&g, MARK), DR6_FIXED | 1)]
        } else {
            vec![]
        };
        assert_eq!(log(&g), expected, "CR4.DE {de}");
    }
}

/// SDM vol 3 18.3.1.4: with TF set every instruction is followed by a single-step trap,
/// also one that exits to the VMM: the trap comes when the VMM has completed the IN
/// (RIP past it, by the register page or a set-register call) and the vCPU resumes, as
/// KVM's kvm_skip_emulated_instruction -> kvm_vcpu_do_singlestep delivers it for an
/// instruction it completed. CPUID, which the hypervisor answers itself, steps as any
/// other. kvm-unit-tests debug "Single-step #DB on emulated instructions".
#[test]
fn sdm_18_3_1_4_single_step_traps_after_an_in_the_vmm_completes() {
    for page in [RegisterPageMode::On, RegisterPageMode::Off] {
        let mut g = debug_guest(page, |a| {
            let mut start = a.create_label();
            mark(a, start, 0);
            set_tf(a);
            a.popfq().unwrap();
            a.db(&AND_RAX_NOT_TF).unwrap();
            a.set_label(&mut start).unwrap();
            // push rax; xor rax, rax; cpuid; mov edx, 0x3fd; in al, dx; popfq
            a.db(&[
                0x50, 0x48, 0x31, 0xc0, 0x0f, 0xa2, 0xba, 0xfd, 0x03, 0, 0, 0xec, 0x9d,
            ])
            .unwrap();
        });
        run_to_done(&mut g);
        let s = qword(&g, MARK);
        let steps: Vec<_> = [0, 1, 4, 6, 11, 12, 13]
            .iter()
            .map(|d| (s + d, DR6_FIXED | BS))
            .collect();
        assert_eq!(log(&g), steps, "{page:?}");
    }
}

/// SDM vol 3 6.8.3: MOV SS holds off debug exceptions to the next instruction boundary:
/// its own single-step trap does not come, the next instruction's does. kvm-unit-tests
/// debug "Single-step #DB w/ MOVSS blocking" (the sim trapped after the MOV SS).
#[test]
fn sdm_6_8_3_mov_ss_holds_off_its_single_step_trap() {
    let mut g = debug_guest(RegisterPageMode::Off, |a| {
        let mut start = a.create_label();
        mark(a, start, 0);
        set_tf(a);
        a.mov(ax, ss).unwrap();
        a.popfq().unwrap();
        a.mov(ss, ax).unwrap();
        a.db(&AND_RAX_NOT_TF).unwrap();
        a.set_label(&mut start).unwrap();
        a.push(rax).unwrap();
        a.popfq().unwrap();
    });
    run_to_done(&mut g);
    let s = qword(&g, MARK);
    assert_eq!(
        log(&g),
        [
            (s, DR6_FIXED | BS),
            (s + 1, DR6_FIXED | BS),
            (s + 2, DR6_FIXED | BS)
        ]
    );
}

/// SDM vol 3 18.3.1.4 and 6.12.1.2: INT1 (ICEBP) delivers a #DB that sets no DR6 bit,
/// through a gate that clears TF: no single-step trap follows it, neither on the
/// handler's first instruction nor on return; after MOV SS the held-off step trap is
/// not reported either. kvm-unit-tests debug "Single-Step + ICEBP #DB w/ MOVSS
/// blocking" (the sim added a single-step #DB on the handler's first instruction).
#[test]
fn sdm_18_3_1_4_int1_is_followed_by_no_single_step_trap() {
    let mut g = debug_guest(RegisterPageMode::Off, |a| {
        let mut start = a.create_label();
        mark(a, start, 0);
        a.xor(ecx, ecx).unwrap();
        a.mov(dr6, rcx).unwrap();
        set_tf(a);
        a.mov(ax, ss).unwrap();
        a.popfq().unwrap();
        a.mov(ss, ax).unwrap();
        a.int1().unwrap();
        a.set_label(&mut start).unwrap();
        a.int1().unwrap();
        a.db(&AND_RAX_NOT_TF).unwrap();
        a.push(rax).unwrap();
        a.popfq().unwrap();
    });
    run_to_done(&mut g);
    let s = qword(&g, MARK);
    assert_eq!(
        log(&g),
        [
            (s, DR6_FIXED),
            (s + 1, DR6_FIXED),
            (s + 7, DR6_FIXED | BS),
            (s + 8, DR6_FIXED | BS),
            (s + 9, DR6_FIXED | BS),
        ]
    );
}

/// SDM vol 3 18.3.1.4: STI's interrupt window does not hold off #DB, and a HLT with TF
/// set is followed by its trap (RIP past the HLT) rather than a halt, as KVM delivers
/// it before blocking: the vCPU is not left halted. kvm-unit-tests debug "Single-step #DB w/ STI;HLT" (without its
/// timer interrupt).
#[test]
fn sdm_18_3_1_4_hlt_with_tf_traps_instead_of_halting() {
    let mut g = debug_guest(RegisterPageMode::Off, |a| {
        let mut start = a.create_label();
        mark(a, start, 0);
        a.cli().unwrap();
        set_tf(a);
        a.popfq().unwrap();
        a.sti().unwrap();
        a.set_label(&mut start).unwrap();
        a.hlt().unwrap();
        a.db(&AND_RAX_NOT_TF).unwrap();
        a.push(rax).unwrap();
        a.popfq().unwrap();
        // An exit, and a run after it that must not find the vCPU halted.
        a.out(0x80, al).unwrap();
    });
    run_to_done(&mut g);
    let s = qword(&g, MARK);
    let steps: Vec<_> = [0, 1, 7, 8, 9]
        .iter()
        .map(|d| (s + d, DR6_FIXED | BS))
        .collect();
    assert_eq!(log(&g), steps);
}

/// SDM vol 3 6.8.3: a data breakpoint MOV SS hits is held off to the next instruction
/// boundary. There, after INT1, the #DB INT1 delivers reports it (one #DB); after INT n
/// or INT3, which enter their handler first, it is delivered at the handler's first
/// instruction (the behaviour behind CVE-2018-8897). kvm-unit-tests debug "MOV SS +
/// watchpoint + ICEBP", "+ int $1", "+ INT3".
#[test]
fn sdm_6_8_3_a_data_breakpoint_of_mov_ss_waits_for_the_next_instruction() {
    let cases: [(&str, &[u8]); 3] = [
        ("icebp", &[0x2e, 0x2e, 0xf1]),
        ("int 1", &[0xcd, 0x01]),
        ("int3", &[0xcc]),
    ];
    for (name, ins) in cases {
        let mut g = debug_guest(RegisterPageMode::Off, |a| {
            let mut after = a.create_label();
            mark(a, after, 0);
            a.mov(qword_ptr(VALUE), 0x10).unwrap();
            a.mov(rax, VALUE).unwrap();
            a.mov(dr1, rax).unwrap();
            a.xor(eax, eax).unwrap();
            a.mov(dr6, rax).unwrap();
            a.mov(rax, 0x00f0_0408u64).unwrap(); // DR1: 4-byte read or write
            a.mov(dr7, rax).unwrap();
            a.mov(ss, word_ptr(VALUE)).unwrap();
            a.db(ins).unwrap();
            a.set_label(&mut after).unwrap();
            a.mov(rax, 0x400u64).unwrap();
            a.mov(dr7, rax).unwrap();
        });
        run_to_done(&mut g);
        let after = qword(&g, MARK);
        let b1 = DR6_FIXED | 2;
        let expected: Vec<(u64, u64)> = match name {
            "icebp" => vec![(after, b1)],
            // The held-off #DB first, at the handler INT 1 entered; then INT 1's own.
            "int 1" => vec![(DB_HANDLER, b1), (after, b1)],
            _ => vec![(BP_HANDLER, b1)],
        };
        assert_eq!(log(&g), expected, "{name}");
        if name == "int3" {
            assert_eq!(qword(&g, BP_RIP), after, "the #BP handler ran on");
        }
    }
}

/// DR0-DR3 and DR7 the VMM sets (not a MOV DR in the guest) count from the next run:
/// an instruction breakpoint set at an exit fires.
#[test]
fn breakpoints_the_vmm_sets_in_dr7_count_from_the_next_run() {
    let mut g = debug_guest(RegisterPageMode::Off, |a| {
        let mut at = a.create_label();
        mark(a, at, 0);
        a.out(0x80, al).unwrap();
        a.set_label(&mut at).unwrap();
        a.nop().unwrap();
    });
    assert_eq!(g.run(), Exit::Message, "the OUT 0x80");
    let at = qword(&g, MARK);
    g.set(hv_register_name_HV_X64_REGISTER_DR0, at);
    g.set(hv_register_name_HV_X64_REGISTER_DR7, 0x402);
    let rip = g.get(hv_register_name_HV_X64_REGISTER_RIP);
    g.set(hv_register_name_HV_X64_REGISTER_RIP, rip + 2);
    run_to_done(&mut g);
    assert_eq!(log(&g), [(at, DR6_FIXED | 1)]);
}

/// SDM vol 3 18.3.1.1: a fault pushes RF set, so the faulting instruction, re-executed
/// when the handler returns, does not hit an instruction breakpoint on it: the #DE
/// handler puts one on the DIV it returns to (and makes the divisor 1); the DIV then
/// completes with no #DB. Then RF is clear again: the breakpoint fires on the next pass.
#[test]
fn sdm_18_3_1_1_a_fault_handler_returns_past_an_instruction_breakpoint() {
    let mut g = debug_guest(RegisterPageMode::Off, |a| {
        let mut div = a.create_label();
        mark(a, div, 0);
        a.mov(r9, 2u64).unwrap();
        a.xor(ecx, ecx).unwrap();
        let mut again = a.create_label();
        a.set_label(&mut again).unwrap();
        a.xor(edx, edx).unwrap();
        a.mov(eax, 7).unwrap();
        a.set_label(&mut div).unwrap();
        a.div(rcx).unwrap();
        a.mov(qword_ptr(MARK + 8), rax).unwrap();
        a.dec(r9).unwrap();
        a.jnz(again).unwrap();
        a.mov(rbx, 0x400u64).unwrap();
        a.mov(dr7, rbx).unwrap();
    });
    run_to_done(&mut g);
    assert_eq!(
        log(&g),
        [(qword(&g, MARK), DR6_FIXED | 1)],
        "no #DB on the DIV's return from #DE, one on its second pass"
    );
    assert_eq!(qword(&g, MARK + 8), 7, "the DIV completed");
}

/// SYSCALL and SYSRET single-step by TF as they leave it (kvm-unit-tests syscall.c:
/// "#DB is raised if TF is 1 at the *end* of syscall/sysret"): a SYSCALL whose
/// IA32_FMASK clears TF enters the kernel with no trap; a SYSRET that sets TF from R11
/// traps at once, at the ring-3 instruction it returns to.
#[test]
fn sdm_18_3_1_4_syscall_and_sysret_single_step_by_tf_as_they_leave_it() {
    const TSS: u64 = 0x5000;
    let mut g = debug_guest(RegisterPageMode::Off, |a| {
        let mut after = a.create_label();
        let mut kernel = a.create_label();
        let mut finish = a.create_label();
        mark(a, after, 0);
        mark(a, kernel, 1);
        let wrmsr = |a: &mut CodeAssembler, msr: u32, v: u64| {
            a.mov(ecx, msr).unwrap();
            a.mov(eax, v as u32).unwrap();
            a.mov(edx, (v >> 32) as u32).unwrap();
            a.wrmsr().unwrap();
        };
        a.mov(ecx, 0xc000_0080u32).unwrap();
        a.rdmsr().unwrap();
        a.or(eax, 1).unwrap(); // EFER.SCE
        a.wrmsr().unwrap();
        wrmsr(a, 0xc000_0081, (0x10 << 48) | (0x08 << 32)); // STAR
        wrmsr(a, 0xc000_0084, TF); // FMASK: SYSCALL clears TF
        a.mov(ecx, 0xc000_0082u32).unwrap(); // LSTAR
        a.mov(rax, qword_ptr(MARK + 8)).unwrap();
        a.mov(rdx, rax).unwrap();
        a.shr(rdx, 32).unwrap();
        a.wrmsr().unwrap();
        a.xor(r12d, r12d).unwrap();
        set_tf(a);
        a.popfq().unwrap();
        a.syscall().unwrap(); // TF cleared on the way in: no trap in the kernel
        a.set_label(&mut after).unwrap();
        a.syscall().unwrap(); // at ring 3, again with TF set
        a.set_label(&mut kernel).unwrap();
        a.inc(r12).unwrap();
        a.cmp(r12, 1).unwrap();
        a.jne(finish).unwrap();
        a.sysretq().unwrap(); // R11's TF: the trap comes at `after`, at ring 3
        a.set_label(&mut finish).unwrap();
    });
    // Ring 3 may use the page tables (U at each level), and a #DB taken there needs
    // RSP0 from a TSS; GDT: ring-3 data (0x18) and 64-bit code (0x20) for SYSRET.
    g.ram
        .write(0x10_0000, &(0x10_1007u64).to_le_bytes())
        .unwrap();
    g.ram.write(0x10_1000, &(0x87u64).to_le_bytes()).unwrap();
    let gdt: [u64; 5] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
    ];
    let gdt: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    g.load(GDT, &gdt);
    g.set_raw(hv_register_name_HV_X64_REGISTER_GDTR, pack_table(GDT, 39));
    g.load(TSS + 4, &0x7_0000u64.to_le_bytes());
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_TR,
        hv_core::regs::pack_segment(TSS, 0x67, 0x28, 0x8b),
    );
    run_to_done(&mut g);
    assert_eq!(log(&g), [(qword(&g, MARK), DR6_FIXED | BS)]);
}
