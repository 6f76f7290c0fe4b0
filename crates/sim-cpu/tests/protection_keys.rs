//! Protection keys, each rule by its SDM section: PKRU with CR4.PKE for user-mode pages
//! and IA32_PKRS with CR4.PKS for supervisor-mode ones (vol 3 4.6.2), the #PF error
//! code's PK bit (4.7), RDPKRU and WRPKRU (vol 2), CPUID.(EAX=07H,ECX=0):ECX.PKU, OSPKE
//! and PKS, and a TLB that holds keys rather than rights (4.10.2.2).
//!
//! Each case runs in 64-bit mode at CPL 0 or 3 under 4-level paging: the first GiB is
//! an identity-mapped user page with key 0 (code, tables, stacks), and a page table
//! maps test pages at 1 GiB with keys of their own. Every exception stub reports its
//! vector in EDX (0x100 + vector), the error code in RAX and CR2 in RBX; a case that
//! completes ends with INT 0x20, whose stub reports 0x600D.

mod common;

use hv_core::{HostRegion, UnknownMsr};
use iced_x86::code_asm::*;
use sim_cpu::fault::Exit;
use sim_cpu::paging::Access;
use sim_cpu::phys::PhysMap;
use sim_cpu::{Env, Processor, RunEnd, Segment};
use std::sync::Arc;

const RAM: usize = 2 << 20;

const GDT: u64 = 0x500;
const TSS: u64 = 0x600;
const CODE: u64 = 0x2000;
const STUBS: u64 = 0x3000;
const IDT: u64 = 0x4000;
const STACK: u64 = 0x8_0000;
const RSP0: u64 = 0x9_0000;

/// A user page with key 1, writable (physical 0x18_0000).
const USER_K1: u64 = 0x4000_0000;
/// A supervisor page with key 1, writable (0x18_1000).
const SUP_K1: u64 = 0x4000_1000;
/// A user page with key 2, read-only (0x18_2000).
const USER_RO_K2: u64 = 0x4000_2000;
/// A user page with key 1 holding code: INT 0x20 (0x18_3000).
const USER_CODE_K1: u64 = 0x4000_3000;
/// A user page with key 1 over a device (GPA 0x3000_0000, beyond RAM): accesses exit.
const DEVICE_K1: u64 = 0x4000_4000;
/// A 2 MiB user page with key 3 in its PDE, over physical 0.
const LARGE_K3: u64 = 0x4020_0000;

/// PTE bits: present, writable, user, accessed, dirty.
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const AD_BITS: u64 = 0x60;

/// PKRU/IA32_PKRS bits of key `k`: access-disable and write-disable.
const fn ad(k: u32) -> u32 {
    1 << (2 * k)
}
const fn wd(k: u32) -> u32 {
    2 << (2 * k)
}

const CR0_PE_PG_ET: u64 = 0x8000_0011;
const CR0_WP: u64 = 1 << 16;
const CR4_PAE: u64 = 1 << 5;
const CR4_PKE: u64 = 1 << 22;
const CR4_PKS: u64 = 1 << 24;

/// The #PF error code's bits (SDM vol 3 4.7).
const PF_P: u64 = 1;
const PF_W: u64 = 2;
const PF_U: u64 = 4;
const PF_PK: u64 = 1 << 5;

/// A hypervisor that may hide CPUID.(EAX=07H,ECX=0):ECX bits.
#[derive(Default)]
struct TestEnv {
    hide_leaf7_ecx: u32,
}

impl Env for TestEnv {
    fn cpuid(&mut self, leaf: u32, subleaf: u32, native: [u32; 4]) -> [u32; 4] {
        let mut r = native;
        if leaf == 7 && subleaf == 0 {
            r[2] &= !self.hide_leaf7_ecx;
        }
        r
    }
    fn msr_exits(&self, _msr: u32) -> bool {
        false
    }
    fn unknown_msr(&self) -> UnknownMsr {
        UnknownMsr::Fault
    }
    fn apic_id(&self) -> u32 {
        0
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Fault { vector: u8, code: u64, cr2: u64 },
}

const DONE: u64 = 0x600d;

struct Machine {
    cpu: Processor,
    ram: Arc<HostRegion>,
    mem: PhysMap,
    env: TestEnv,
}

fn qword(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

impl Machine {
    /// A 64-bit machine at CPL `cpl` (0 or 3) with `cr0_extra` and `cr4_extra` set
    /// over paging, running `body` and then INT 0x20.
    fn new(cpl: u8, cr0_extra: u64, cr4_extra: u64, body: impl FnOnce(&mut CodeAssembler)) -> Self {
        let ram = Arc::new(HostRegion::new(RAM).unwrap());
        let mem = common::ram_map(&ram);
        let w = |at: u64, b: &[u8]| ram.write(at as usize, b).unwrap();
        // GDT: null, ring-0 code 0x08 and data 0x10, ring-3 code 0x1b and data 0x23,
        // the TSS at 0x28 (16 bytes), an LDT at 0x38 (16 bytes) on USER_K1.
        let tss_low = 0x67 | (TSS & 0xff_ffff) << 16 | 0x89 << 40;
        let ldt_low = 0xf | (USER_K1 & 0xff_ffff) << 16 | 0x82 << 40 | (USER_K1 >> 24) << 56;
        let gdt: [u64; 9] = [
            0,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x00af_fb00_0000_ffff,
            0x00cf_f300_0000_ffff,
            tss_low,
            0,
            ldt_low,
            0,
        ];
        for (i, d) in gdt.iter().enumerate() {
            w(GDT + 8 * i as u64, &qword(*d));
        }
        w(TSS + 4, &qword(RSP0));
        // The stubs and their interrupt gates (DPL 3: INT 0x20 from ring 3).
        for v in 0..=0x20u64 {
            let stub = STUBS + v * 16;
            let report = if v == 0x20 { DONE } else { 0x100 + v } as u32;
            let mut s = vec![0xba];
            s.extend(report.to_le_bytes());
            if matches!(v, 8 | 10..=14 | 17) {
                s.push(0x58); // pop rax
            }
            s.extend([0x0f, 0x20, 0xd3, 0xf4]); // mov rbx, cr2; hlt
            w(stub, &s);
            let gate = (stub & 0xffff) | (8 << 16) | (0xee00 << 32) | (stub >> 16) << 48;
            w(IDT + v * 16, &qword(gate));
        }
        // 4-level paging: the first GiB identity-mapped as a user page with key 0; at
        // 1 GiB a page directory with a page table of keyed pages and a 2 MiB page.
        w(0x10_0000, &qword(0x10_1000 | P | RW | US));
        w(0x10_1000, &qword(0x80 | P | RW | US));
        w(0x10_1008, &qword(0x10_2000 | P | RW | US));
        w(0x10_2000, &qword(0x10_3000 | P | RW | US));
        w(0x10_2008, &qword(0x80 | P | RW | US | AD_BITS | 3 << 59));
        let pte = |phys: u64, bits: u64, key: u64| phys | bits | AD_BITS | key << 59;
        w(0x10_3000, &qword(pte(0x18_0000, P | RW | US, 1)));
        w(0x10_3008, &qword(pte(0x18_1000, P | RW, 1)));
        w(0x10_3010, &qword(pte(0x18_2000, P | US, 2)));
        w(0x10_3018, &qword(pte(0x18_3000, P | RW | US, 1)));
        w(0x10_3020, &qword(pte(0x3000_0000, P | RW | US, 1)));
        w(0x18_3000, &[0xcd, 0x20]);
        // The LDT on USER_K1: a ring-0 data segment at selector 4.
        w(0x18_0000, &qword(0x00cf_9300_0000_ffff));
        let mut a = CodeAssembler::new(64).unwrap();
        body(&mut a);
        a.int(0x20).unwrap();
        w(CODE, &a.assemble(CODE).unwrap());

        let mut cpu = Processor::new(true);
        let c = &mut cpu.cpu;
        let (code, data, dpl) = if cpl == 3 {
            (0x1b, 0x23, 0x60)
        } else {
            (0x08, 0x10, 0)
        };
        c.seg[1] = Segment {
            selector: code,
            base: 0,
            limit: 0xffff_ffff,
            attributes: 0xa09b | dpl,
        };
        for s in [0, 2, 3] {
            c.seg[s] = Segment {
                selector: data,
                base: 0,
                limit: 0xffff_ffff,
                attributes: 0xc093 | dpl,
            };
        }
        c.tr = Segment {
            selector: 0x28,
            base: TSS,
            limit: 0x67,
            attributes: 0x8b,
        };
        c.gdtr = sim_cpu::Table {
            base: GDT,
            limit: 8 * 9 - 1,
        };
        c.idtr = sim_cpu::Table {
            base: IDT,
            limit: 0x21 * 16 - 1,
        };
        c.cr3 = 0x10_0000;
        c.cr4 = CR4_PAE | cr4_extra;
        c.efer = (1 << 8) | (1 << 10);
        c.cr0 = CR0_PE_PG_ET | cr0_extra;
        c.rip = CODE;
        c.gpr[4] = STACK;
        let mut m = Machine {
            cpu,
            ram,
            mem,
            env: TestEnv::default(),
        };
        m.cpu.state_changed(&m.mem);
        m
    }

    fn run(&mut self) -> Outcome {
        match self
            .cpu
            .run(&self.mem, &mut self.env, 10_000, &mut || false)
        {
            RunEnd::Exit(Exit::Halt) => {}
            other => panic!(
                "the case did not halt: {other:?} at {:#x} cr2 {:#x}",
                self.cpu.cpu.rip, self.cpu.cpu.cr2
            ),
        }
        let c = &self.cpu.cpu;
        match c.gpr[2] {
            DONE => Outcome::Done,
            v @ 0x100..=0x11f => Outcome::Fault {
                vector: (v - 0x100) as u8,
                code: if matches!(v - 0x100, 8 | 10..=14 | 17) {
                    c.gpr[0]
                } else {
                    0
                },
                cr2: c.gpr[3],
            },
            v => panic!("EDX {v:#x}"),
        }
    }

    fn dword(&self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ram.read(gpa as usize, &mut b).unwrap();
        u32::from_le_bytes(b)
    }
}

/// WRPKRU with EAX = `pkru`.
fn wrpkru(a: &mut CodeAssembler, pkru: u32) {
    a.mov(eax, pkru).unwrap();
    a.xor(ecx, ecx).unwrap();
    a.xor(edx, edx).unwrap();
    a.wrpkru().unwrap();
}

/// WRMSR IA32_PKRS = `pkrs`.
fn wrpkrs(a: &mut CodeAssembler, pkrs: u32) {
    a.mov(ecx, 0x6e1).unwrap();
    a.mov(eax, pkrs).unwrap();
    a.xor(edx, edx).unwrap();
    a.wrmsr().unwrap();
}

fn read(a: &mut CodeAssembler, at: u64) {
    a.mov(rsi, at).unwrap();
    a.mov(eax, dword_ptr(rsi)).unwrap();
}

fn write(a: &mut CodeAssembler, at: u64, v: u32) {
    a.mov(rsi, at).unwrap();
    a.mov(dword_ptr(rsi), v).unwrap();
}

fn pf(code: u64, address: u64) -> Outcome {
    Outcome::Fault {
        vector: 14,
        code,
        cr2: address,
    }
}

fn case(cpl: u8, cr0_bits: u64, cr4_bits: u64, body: impl FnOnce(&mut CodeAssembler)) -> Outcome {
    Machine::new(cpl, cr0_bits, cr4_bits, body).run()
}

/// SDM vol 3 4.6.2: with CR4.PKE, PKRU's ADi denies every data access to a user-mode
/// page with key i, user-mode and supervisor-mode, reads and writes, and the #PF has
/// PK (bit 5) set (4.7); other keys' pages are untouched; a 2 MiB page's key is its
/// PDE's bits 62:59 (4.5, Table 4-17).
#[test]
fn sdm_4_6_2_pkru_ad_denies_every_data_access_to_user_pages_with_the_key_4_7_pk() {
    let cases: [(&str, u8, u64, bool, u64); 5] = [
        ("CPL 3 read", 3, USER_K1, false, PF_P | PF_U | PF_PK),
        ("CPL 3 write", 3, USER_K1, true, PF_P | PF_W | PF_U | PF_PK),
        ("CPL 0 read", 0, USER_K1, false, PF_P | PF_PK),
        ("CPL 0 write", 0, USER_K1, true, PF_P | PF_W | PF_PK),
        (
            "a 2 MiB page with key 3",
            3,
            LARGE_K3 + 0x100,
            false,
            PF_P | PF_U | PF_PK,
        ),
    ];
    for (what, cpl, at, is_write, code) in cases {
        let got = case(cpl, CR0_WP, CR4_PKE, |a| {
            wrpkru(a, ad(1) | ad(3));
            if is_write {
                write(a, at, 1);
            } else {
                read(a, at);
            }
        });
        assert_eq!(got, pf(code, at), "{what}");
    }
    // AD of key 1 leaves key 2's page (read-only, so a read) and key 0's alone.
    let got = case(3, CR0_WP, CR4_PKE, |a| {
        wrpkru(a, ad(1) | wd(1));
        read(a, USER_RO_K2);
        write(a, 0x18_0000 - 0x100, 7);
    });
    assert_eq!(got, Outcome::Done, "other keys");
    // With CR4.PKE clear PKRU rules nothing (set while PKE was on).
    let mut m = Machine::new(3, CR0_WP, 0, |a| write(a, USER_K1, 5));
    m.cpu.cpu.pkru = u32::MAX;
    assert_eq!(m.run(), Outcome::Done, "CR4.PKE clear");
    assert_eq!(m.dword(0x18_0000), 5);
}

/// SDM vol 3 4.6.2: PKRU's WDi denies user-mode writes to user-mode pages with key i,
/// and supervisor-mode writes only while CR0.WP = 1; reads stay allowed. A write the
/// page's R/W denies too faults with PK as well (4.7 sets PK whenever the key denies
/// the access; Xen's pagewalk found hardware so).
#[test]
fn sdm_4_6_2_pkru_wd_denies_user_writes_and_supervisor_writes_only_with_cr0_wp() {
    let wd1 = |is_write: bool, at: u64| {
        move |a: &mut CodeAssembler| {
            wrpkru(a, wd(1) | wd(2));
            if is_write {
                write(a, at, 9);
            } else {
                read(a, at);
            }
        }
    };
    assert_eq!(
        case(3, CR0_WP, CR4_PKE, wd1(true, USER_K1)),
        pf(PF_P | PF_W | PF_U | PF_PK, USER_K1),
        "CPL 3 write"
    );
    assert_eq!(
        case(3, 0, CR4_PKE, wd1(true, USER_K1)),
        pf(PF_P | PF_W | PF_U | PF_PK, USER_K1),
        "CPL 3 write, CR0.WP clear"
    );
    assert_eq!(
        case(3, CR0_WP, CR4_PKE, wd1(false, USER_K1)),
        Outcome::Done,
        "CPL 3 read"
    );
    assert_eq!(
        case(0, CR0_WP, CR4_PKE, wd1(true, USER_K1)),
        pf(PF_P | PF_W | PF_PK, USER_K1),
        "CPL 0 write, CR0.WP set"
    );
    let mut m = Machine::new(0, 0, CR4_PKE, wd1(true, USER_K1));
    assert_eq!(m.run(), Outcome::Done, "CPL 0 write, CR0.WP clear");
    assert_eq!(m.dword(0x18_0000), 9);
    assert_eq!(
        case(3, CR0_WP, CR4_PKE, wd1(true, USER_RO_K2)),
        pf(PF_P | PF_W | PF_U | PF_PK, USER_RO_K2),
        "a read-only page's write denied by the key too"
    );
    assert_eq!(
        case(3, CR0_WP, CR4_PKE, |a| write(a, USER_RO_K2, 1)),
        pf(PF_P | PF_W | PF_U, USER_RO_K2),
        "the same write with the key's rights clear: no PK"
    );
}

/// SDM vol 3 4.6.2: "Protection keys apply only to data accesses": code on a page whose
/// key has AD and WD set runs.
#[test]
fn sdm_4_6_2_instruction_fetches_are_not_checked() {
    let got = case(3, CR0_WP, CR4_PKE, |a| {
        wrpkru(a, ad(1) | wd(1));
        a.mov(rax, USER_CODE_K1).unwrap();
        a.jmp(rax).unwrap();
    });
    assert_eq!(got, Outcome::Done);
}

/// SDM vol 3 4.6.1, 4.6.2: keys rule implicit supervisor-mode accesses to user-mode
/// pages too (data "may be read (implicitly or explicitly)" only "with a protection key
/// for which read access is permitted"): MOV DS of an LDT selector reads the LDT on a
/// page whose key has AD, and faults as a supervisor-mode read.
#[test]
fn sdm_4_6_2_pkru_rules_implicit_supervisor_accesses_to_user_pages() {
    let load_ds = |pkru: u32| {
        move |a: &mut CodeAssembler| {
            wrpkru(a, pkru);
            a.mov(ax, 0x38).unwrap();
            a.lldt(ax).unwrap();
            a.mov(ax, 4).unwrap();
            a.mov(ds, ax).unwrap();
        }
    };
    assert_eq!(
        case(0, CR0_WP, CR4_PKE, load_ds(ad(1))),
        pf(PF_P | PF_PK, USER_K1)
    );
    assert_eq!(case(0, CR0_WP, CR4_PKE, load_ds(wd(1))), Outcome::Done);
}

/// SDM vol 2 RDPKRU and WRPKRU: #UD while CR4.PKE is clear; RDPKRU #GP(0) unless ECX
/// is 0, WRPKRU unless ECX and EDX are; the high halves of RAX, RCX and RDX are
/// ignored; RDPKRU gives EDX 0. Both run at CPL 3.
#[test]
fn sdm_vol2_rdpkru_and_wrpkru() {
    let ud = Outcome::Fault {
        vector: 6,
        code: 0,
        cr2: 0,
    };
    let gp = |m: &mut Machine| match m.run() {
        Outcome::Fault {
            vector: 13, code, ..
        } => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        case(0, 0, 0, |a| {
            a.xor(ecx, ecx).unwrap();
            a.rdpkru().unwrap();
        }),
        ud,
        "RDPKRU without CR4.PKE"
    );
    assert_eq!(
        case(0, 0, 0, |a| wrpkru(a, 0)),
        ud,
        "WRPKRU without CR4.PKE"
    );
    let mut m = Machine::new(3, 0, CR4_PKE, |a| {
        a.mov(ecx, 1).unwrap();
        a.rdpkru().unwrap();
    });
    assert_eq!(gp(&mut m), 0, "RDPKRU with ECX 1");
    for (what, reg) in [("ECX", ecx), ("EDX", edx)] {
        let mut m = Machine::new(3, 0, CR4_PKE, |a| {
            a.xor(ecx, ecx).unwrap();
            a.xor(edx, edx).unwrap();
            a.mov(reg, 1).unwrap();
            a.wrpkru().unwrap();
        });
        assert_eq!(gp(&mut m), 0, "WRPKRU with {what} 1");
        assert_eq!(m.cpu.cpu.pkru, 0, "WRPKRU with {what} 1 wrote nothing");
    }
    let mut m = Machine::new(3, 0, CR4_PKE, |a| {
        a.mov(rax, 0xdead_0000_5555_5554u64).unwrap();
        a.mov(rcx, 1u64 << 32).unwrap();
        a.mov(rdx, 1u64 << 32).unwrap();
        a.wrpkru().unwrap();
        a.mov(rax, u64::MAX).unwrap();
        a.mov(rdx, u64::MAX).unwrap();
        a.rdpkru().unwrap();
        a.mov(r8, rax).unwrap();
        a.mov(r9, rdx).unwrap();
    });
    assert_eq!(m.run(), Outcome::Done);
    let c = &m.cpu.cpu;
    assert_eq!(c.pkru, 0x5555_5554);
    assert_eq!(
        (c.gpr[8], c.gpr[9]),
        (0x5555_5554, 0),
        "EDX:EAX, zero-extended"
    );
}

/// SDM vol 3 4.6.2 and 4.10.2.2: the TLB caches a page's key, not its rights, so
/// WRPKRU rules the very next access with no INVLPG, taking grants away and giving
/// them back. The sim's TLB re-derives the grants of the entries it keeps: a
/// translation cached before WRPKRU is still used after it (the PTE, made not present
/// meanwhile without INVLPG, is not read again), as a processor may.
#[test]
fn sdm_4_10_2_2_wrpkru_rules_the_next_access_with_no_tlb_invalidation() {
    let got = case(3, CR0_WP, CR4_PKE, |a| {
        wrpkru(a, 0);
        read(a, USER_K1);
        write(a, USER_K1, 3);
        wrpkru(a, wd(1));
        read(a, USER_K1);
        write(a, USER_K1, 4);
    });
    assert_eq!(
        got,
        pf(PF_P | PF_W | PF_U | PF_PK, USER_K1),
        "WD after a cached write"
    );
    let got = case(3, CR0_WP, CR4_PKE, |a| {
        read(a, USER_K1);
        wrpkru(a, ad(1));
        read(a, USER_K1);
    });
    assert_eq!(
        got,
        pf(PF_P | PF_U | PF_PK, USER_K1),
        "AD after a cached read"
    );
    // Grants back: cached with PKRU 0, denied, then allowed again, the PTE gone
    // meanwhile (the TLB still holds the translation, as hardware's may).
    let mut m = Machine::new(0, CR0_WP, CR4_PKE, |a| {
        write(a, USER_K1, 1);
        wrpkru(a, ad(1));
        a.mov(rdi, 0x10_3000u64).unwrap();
        a.mov(qword_ptr(rdi), 0).unwrap();
        wrpkru(a, 0);
        write(a, USER_K1, 2);
        a.mov(eax, dword_ptr(rsi)).unwrap();
    });
    assert_eq!(
        m.run(),
        Outcome::Done,
        "the kept translation with its grants back"
    );
    assert_eq!(m.dword(0x18_0000), 2);
    assert_eq!(m.cpu.cpu.gpr[0], 2);
}

/// SDM vol 3 4.6.2, 4.10.2.2: a device page's translation is cached as RAM's is (the
/// access exits to the VMM with its GPA), and it keeps its key too: after WRPKRU sets
/// the key's AD the next access is a #PF with PK, not an exit.
#[test]
fn sdm_4_10_2_2_a_cached_device_page_keeps_its_key() {
    let mut m = Machine::new(3, CR0_WP, CR4_PKE, |a| {
        read(a, DEVICE_K1);
        wrpkru(a, ad(1));
        read(a, DEVICE_K1);
    });
    match m.cpu.run(&m.mem, &mut m.env, 100, &mut || false) {
        RunEnd::Exit(Exit::Mmio {
            gpa: 0x3000_0000,
            access: Access::Read,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The VMM completes the read.
    m.cpu.cpu.rip += u64::from(m.cpu.exit_instruction.len);
    assert_eq!(m.run(), pf(PF_P | PF_U | PF_PK, DEVICE_K1));
}

/// SDM vol 3 4.6.2: with CR4.PKS, IA32_PKRS rules supervisor-mode pages as PKRU rules
/// user-mode ones: AD denies every data access, WD writes while CR0.WP = 1; the PK bit
/// is set (4.7). PKRS rules no user page and PKRU no supervisor page; with CR4.PKS clear
/// PKRS rules nothing. WRMSR rules the next access with no TLB invalidation.
#[test]
fn sdm_4_6_2_pkrs_rules_supervisor_pages_with_cr4_pks() {
    let access = |rights: u32, at: u64, is_write: bool| {
        move |a: &mut CodeAssembler| {
            read(a, at); // cached first: the WRMSR must take the grant away
            wrpkrs(a, rights);
            if is_write {
                write(a, at, 6);
            } else {
                read(a, at);
            }
        }
    };
    let all = CR4_PKE | CR4_PKS;
    assert_eq!(
        case(0, CR0_WP, all, access(ad(1), SUP_K1, false)),
        pf(PF_P | PF_PK, SUP_K1),
        "AD, read"
    );
    assert_eq!(
        case(0, 0, all, access(ad(1), SUP_K1, true)),
        pf(PF_P | PF_W | PF_PK, SUP_K1),
        "AD, write"
    );
    assert_eq!(
        case(0, CR0_WP, all, access(wd(1), SUP_K1, true)),
        pf(PF_P | PF_W | PF_PK, SUP_K1),
        "WD, write with CR0.WP"
    );
    assert_eq!(
        case(0, CR0_WP, all, access(wd(1), SUP_K1, false)),
        Outcome::Done,
        "WD, read"
    );
    let mut m = Machine::new(0, 0, all, access(wd(1), SUP_K1, true));
    assert_eq!(m.run(), Outcome::Done, "WD, write without CR0.WP");
    assert_eq!(m.dword(0x18_1000), 6);
    assert_eq!(
        case(0, CR0_WP, all, access(u32::MAX, USER_K1, true)),
        Outcome::Done,
        "PKRS does not rule a user page"
    );
    assert_eq!(
        case(0, CR0_WP, CR4_PKS, access(u32::MAX, SUP_K1, true)),
        pf(PF_P | PF_W | PF_PK, SUP_K1),
        "PKS without PKE"
    );
    assert_eq!(
        case(0, CR0_WP, all, |a| {
            // Every key but 0, the key of the tables and stacks (user pages).
            wrpkru(a, u32::MAX << 2);
            write(a, SUP_K1, 1);
        }),
        Outcome::Done,
        "PKRU does not rule a supervisor page"
    );
    let mut m = Machine::new(0, CR0_WP, 0, |a| write(a, SUP_K1, 8));
    m.cpu.cpu.msr.pkrs = u64::from(u32::MAX);
    assert_eq!(m.run(), Outcome::Done, "CR4.PKS clear");
}

/// SDM vol 3 4.6.2: IA32_PKRS (MSR 0x6E1) reads back what WRMSR wrote; bits 63:32 are
/// reserved, #GP(0) to set.
#[test]
fn sdm_4_6_2_ia32_pkrs_reads_back_and_its_high_half_is_reserved() {
    let mut m = Machine::new(0, 0, 0, |a| {
        wrpkrs(a, 0x1234_5678);
        a.xor(eax, eax).unwrap();
        a.rdmsr().unwrap();
        a.mov(r8d, eax).unwrap();
        a.mov(edx, 1).unwrap();
        a.wrmsr().unwrap();
    });
    assert!(matches!(
        m.run(),
        Outcome::Fault {
            vector: 13,
            code: 0,
            ..
        }
    ));
    assert_eq!(m.cpu.cpu.gpr[8], 0x1234_5678);
    assert_eq!(m.cpu.cpu.msr.pkrs, 0x1234_5678);
}

/// SDM vol 2 CPUID: leaf 7 subleaf 0 ECX enumerates PKU (bit 3) and PKS (bit 31), and
/// OSPKE (bit 4) is CR4.PKE, as OSXSAVE is CR4.OSXSAVE; subleaf 1 has none of them.
#[test]
fn sdm_vol2_cpuid_7_enumerates_pku_and_pks_and_ospke_mirrors_cr4_pke() {
    let mut m = Machine::new(0, 0, 0, |a| {
        for (sub, out) in [(0, r8), (1, r10)] {
            a.mov(eax, 7).unwrap();
            a.mov(ecx, sub).unwrap();
            a.cpuid().unwrap();
            a.mov(out, rcx).unwrap();
        }
        a.mov(rax, cr4).unwrap();
        a.bts(eax, 22).unwrap();
        a.mov(cr4, rax).unwrap();
        a.mov(eax, 7).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.cpuid().unwrap();
        a.mov(r9, rcx).unwrap();
    });
    assert_eq!(m.run(), Outcome::Done);
    let c = &m.cpu.cpu;
    let (before, after, sub1) = (c.gpr[8], c.gpr[9], c.gpr[10]);
    assert_eq!(before & (1 << 3 | 1 << 31), 1 << 3 | 1 << 31, "PKU and PKS");
    assert_eq!(before & 1 << 4, 0, "OSPKE with CR4.PKE clear");
    assert_eq!(after & 1 << 4, 1 << 4, "OSPKE with CR4.PKE set");
    assert_eq!(sub1 & (1 << 3 | 1 << 4 | 1 << 31), 0, "subleaf 1");
}

/// SDM vol 3 2.5 and MOV (Control Registers): CR4 bits of features CPUID does not
/// enumerate are reserved: a hypervisor's CPUID without PKU (or PKS) makes setting
/// CR4.PKE (or CR4.PKS) #GP(0), and OSPKE stays clear.
#[test]
fn sdm_2_5_cr4_pke_and_pks_are_reserved_where_cpuid_lacks_pku_and_pks() {
    for (what, hide, bit) in [("PKE", 1u32 << 3, 22u32), ("PKS", 1 << 31, 24)] {
        let mut m = Machine::new(0, 0, 0, |a| {
            a.mov(rax, cr4).unwrap();
            a.bts(eax, bit).unwrap();
            a.mov(cr4, rax).unwrap();
        });
        m.env.hide_leaf7_ecx = hide;
        assert!(
            matches!(
                m.run(),
                Outcome::Fault {
                    vector: 13,
                    code: 0,
                    ..
                }
            ),
            "CR4.{what} without CPUID's bit"
        );
        assert_eq!(m.cpu.cpu.cr4 & 1 << bit, 0);
    }
}

/// SDM vol 3 4.6.2: "If CR4.PKE = 0, or if IA-32e paging is not active, the processor
/// does not associate linear addresses with protection keys". CR4.PKE and CR4.PKS may
/// be set outside IA-32e mode (MOV to CR4 asks nothing more of them), RDPKRU and WRPKRU
/// work there, and no access is checked: here in real mode with every key's AD and WD.
#[test]
fn sdm_4_6_2_keys_rule_nothing_unless_4_level_paging_is_active() {
    let mut a = CodeAssembler::new(16).unwrap();
    a.mov(eax, cr4).unwrap();
    a.or(eax, (CR4_PKE | CR4_PKS) as u32).unwrap();
    a.mov(cr4, eax).unwrap();
    a.mov(eax, u32::MAX).unwrap();
    a.xor(ecx, ecx).unwrap();
    a.xor(edx, edx).unwrap();
    a.wrpkru().unwrap();
    a.mov(word_ptr(0x7000), 0x1234).unwrap();
    a.mov(bx, word_ptr(0x7000)).unwrap();
    a.xor(eax, eax).unwrap();
    a.rdpkru().unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).unwrap();
    let ram = Arc::new(HostRegion::new(RAM).unwrap());
    ram.write(0x1000, &code).unwrap();
    let mem = common::ram_map(&ram);
    let mut p = Processor::new(true);
    for s in 0..6 {
        p.cpu.seg[s] = Segment::real(0, if s == 1 { 0x9b } else { 0x93 });
    }
    p.cpu.rip = 0x1000;
    p.state_changed(&mem);
    let end = p.run(&mem, &mut TestEnv::default(), 100, &mut || false);
    assert!(matches!(end, RunEnd::Exit(Exit::Halt)), "{end:?}");
    assert_eq!(p.cpu.cr4 & (CR4_PKE | CR4_PKS), CR4_PKE | CR4_PKS);
    assert_eq!(p.cpu.gpr[3] & 0xffff, 0x1234, "the write and the read");
    assert_eq!(p.cpu.gpr[0], 0xffff_ffff, "RDPKRU");
}

/// The VMM's translation (the translate-GVA hypercall) walks as the processor does: a
/// data access the key denies is a protection fault with PK; a fetch is not checked.
#[test]
fn the_vmm_translation_applies_protection_keys_as_the_processor_does_sdm_4_6_2() {
    let mut m = Machine::new(0, CR0_WP, CR4_PKE, |_| {});
    m.cpu.cpu.pkru = ad(1);
    let fault = m
        .cpu
        .translate(&m.mem, USER_K1, Access::Read, true, false)
        .unwrap_err();
    assert_eq!(u64::from(fault.error_code), PF_P | PF_U | PF_PK);
    assert_eq!(
        m.cpu
            .translate(&m.mem, USER_K1 + 8, Access::Execute, true, false),
        Ok(0x18_0008)
    );
    m.cpu.cpu.pkru = 0;
    assert_eq!(
        m.cpu
            .translate(&m.mem, USER_K1 + 8, Access::Write, true, false),
        Ok(0x18_0008)
    );
}
