//! Interrupt-driven guests on the sim's local APICs, as MSHV's hypervisor-emulated APIC
//! takes them: the LAPIC timer in each mode (SDM vol 3 11.5.4), interrupts the VMM
//! requests (`HVCALL_ASSERT_VIRTUAL_INTERRUPT`), priority nesting (11.8.3), the STI/HLT
//! window (vol 2 STI: "the processor responds to interrupts after executing the next
//! instruction"), EOIs of level-triggered vectors coming back as `HVMSG_X64_APIC_EOI`
//! (OpenVMM's virt_mshv hands them to its I/O APIC), IPIs between vCPUs and INIT/SIPI
//! starting an AP (10.4.4.1), and deterministic time replaying a run exactly.

mod common;

use common::*;
use hv_core::message::{HVMSG_X64_APIC_EOI, HVMSG_X64_IO_PORT_INTERCEPT};
use hv_core::{
    ClockMode, Exit, ExitMessage, HostRegion, InterruptKind, InterruptRequest, RunLimits,
    VcpuBackend, VmBackend, VmConfig,
};
use iced_x86::code_asm::*;
use mshv_bindings::*;
use std::sync::Arc;

const GDT: u64 = 0x500;
const CODE: u64 = 0x2000;
const IDT: u64 = 0x3000;
/// vCPU 1's long-mode code.
const AP_CODE: u64 = 0x5000;
/// A u32 count of each vector taken.
const COUNT: u64 = 0x6000;
/// The log: one byte per event, in order; `LOGPOS` is the next free byte.
const LOGPOS: u64 = 0x6400;
const LOG: u64 = 0x6500;
/// Where a handler may store what it saw (the interrupted RIP).
const SLOT: u64 = 0x6480;
/// Vector v's handler is at `HANDLERS + v * 0x100`.
const HANDLERS: u64 = 0x1_0000;
const APIC: u32 = 0xfee0_0000;
/// Local APIC register offsets (SDM vol 3 table 11-1).
const TPR: i32 = 0x80;
const EOI: i32 = 0xb0;
const SVR: i32 = 0xf0;
const ICR_LOW: i32 = 0x300;
const ICR_HIGH: i32 = 0x310;
const LVT_TIMER: i32 = 0x320;
const TIMER_INITIAL: i32 = 0x380;
const TIMER_DIVIDE: i32 = 0x3e0;
const TSC_DEADLINE_MSR: u32 = 0x6e0;

struct Machine {
    _vm: Box<dyn VmBackend>,
    ram: Arc<HostRegion>,
    cpus: Vec<Box<dyn VcpuBackend>>,
    msg: ExitMessage,
    interrupts: Arc<dyn hv_core::Interrupts>,
}

fn machine(vcpus: u8, clock: ClockMode) -> Machine {
    let config = VmConfig {
        clock: Some(clock),
        ..VmConfig::default()
    };
    let (mut vm, ram) = vm_with_ram(&config, RAM);
    let cpus = (0..vcpus).map(|i| vm.create_vcpu(i).unwrap()).collect();
    // GDT: null, 64-bit code (0x08), data (0x10).
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let gdt: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.write(GDT as usize, &gdt).unwrap();
    // 256 interrupt gates, vector v to HANDLERS + v * 0x100.
    for v in 0..256u64 {
        let h = HANDLERS + v * 0x100;
        let low = (h & 0xffff) | (8 << 16) | (0x8e00 << 32) | ((h >> 16) & 0xffff) << 48;
        ram.write((IDT + v * 16) as usize, &low.to_le_bytes())
            .unwrap();
        ram.write((IDT + v * 16 + 8) as usize, &(h >> 32).to_le_bytes())
            .unwrap();
    }
    let interrupts = vm.interrupts();
    Machine {
        _vm: vm,
        ram,
        cpus,
        msg: ExitMessage::default(),
        interrupts,
    }
}

impl Machine {
    /// Starts vCPU `i` in 64-bit mode at `ip` (interrupts off) with its own stack.
    fn start(&mut self, i: usize, ip: u64) {
        let ram = Arc::clone(&self.ram);
        let cpu = self.cpus[i].as_mut();
        enter_long_mode(cpu, &ram, ip, 0x8_0000 - 0x1_0000 * i as u64);
        cpu.set_registers(
            &[
                hv_register_name_HV_X64_REGISTER_GDTR,
                hv_register_name_HV_X64_REGISTER_IDTR,
            ],
            &[
                hv_core::regs::pack_table(GDT, 23),
                hv_core::regs::pack_table(IDT, 256 * 16 - 1),
            ],
        )
        .unwrap();
    }

    fn code(&self, at: u64, f: impl FnOnce(&mut CodeAssembler)) {
        self.ram.write(at as usize, &assemble(64, at, f)).unwrap();
    }

    /// Vector `v`'s handler: counts and logs it, runs `body`, EOIs, returns. RBX holds
    /// the APIC base in `body`.
    fn handler(&self, v: u8, body: impl FnOnce(&mut CodeAssembler)) {
        self.code(HANDLERS + v as u64 * 0x100, |a| {
            a.push(rax).unwrap();
            a.push(rbx).unwrap();
            a.push(rcx).unwrap();
            a.mov(ebx, APIC).unwrap();
            a.lock().inc(dword_ptr(COUNT + 4 * v as u64)).unwrap();
            log(a, v);
            body(a);
            a.mov(dword_ptr(rbx + EOI), 0).unwrap();
            a.pop(rcx).unwrap();
            a.pop(rbx).unwrap();
            a.pop(rax).unwrap();
            a.iretq().unwrap();
        });
    }

    /// Runs vCPU `i` until an exit for the VMM, never blocking on a halt.
    fn run(&mut self, i: usize) -> Exit {
        self.cpus[i]
            .run(
                &mut self.msg,
                &RunLimits {
                    max_instructions: Some(50_000_000),
                    ..RunLimits::default()
                },
            )
            .unwrap()
    }

    /// Runs vCPU `i` to its `out 0x80, eax`, whose value it returns.
    fn run_to_out(&mut self, i: usize) -> u64 {
        let exit = self.run(i);
        assert_eq!(exit, Exit::Message, "vCPU {i} ended its run with {exit:?}");
        assert_eq!(
            self.msg.message_type(),
            HVMSG_X64_IO_PORT_INTERCEPT,
            "vCPU {i} exited with message {:#x}",
            self.msg.message_type()
        );
        let io: hv_x64_io_port_intercept_message = self.msg.payload();
        io.rax
    }

    /// Runs vCPU `i` to its `out 0x82, al` (see [`sync`]) and completes that OUT.
    fn pass_sync(&mut self, i: usize) {
        let exit = self.run(i);
        assert_eq!(exit, Exit::Message, "vCPU {i} ended its run with {exit:?}");
        let io: hv_x64_io_port_intercept_message = self.msg.payload();
        let (port, rip) = (io.port_number, io.header.rip);
        assert_eq!(port, 0x82, "vCPU {i} reached its sync point");
        let next = rip + io.header.instruction_length() as u64;
        self.cpus[i]
            .set_registers(&[hv_register_name_HV_X64_REGISTER_RIP], &[[next, 0]])
            .unwrap();
    }

    fn count(&self, v: u8) -> u32 {
        u32::from_le_bytes(self.read::<4>(COUNT + 4 * v as u64))
    }

    fn read<const N: usize>(&self, gpa: u64) -> [u8; N] {
        let mut b = [0u8; N];
        self.ram.read(gpa as usize, &mut b).unwrap();
        b
    }

    fn log(&self) -> Vec<u8> {
        let n = u32::from_le_bytes(self.read::<4>(LOGPOS)) as usize;
        let mut b = vec![0u8; n];
        self.ram.read(LOG as usize, &mut b).unwrap();
        b
    }

    fn request(&self, vector: u8, destination: u32, level: bool) -> hv_core::Result<()> {
        self.interrupts.request(&InterruptRequest {
            kind: InterruptKind::Fixed,
            destination,
            logical: false,
            vector,
            level,
        })
    }
}

/// Appends `byte` to the log (RAX is clobbered).
fn log(a: &mut CodeAssembler, byte: u8) {
    a.mov(eax, 1).unwrap();
    a.lock().xadd(dword_ptr(LOGPOS), eax).unwrap();
    a.mov(byte_ptr(rax + LOG as i32), byte as u32).unwrap();
}

/// RBX = the APIC base; software-enables the APIC (SVR bit 8, spurious vector 0xFF).
fn enable_apic(a: &mut CodeAssembler) {
    a.mov(ebx, APIC).unwrap();
    a.mov(dword_ptr(rbx + SVR), 0x1ff).unwrap();
}

/// A point where the guest stops for the VMM (its APIC enabled, say, before the VMM
/// raises an interrupt: a software-disabled APIC drops fixed interrupts, SDM vol 3
/// 11.4.7.2, as KVM's `__apic_accept_irq` does).
fn sync(a: &mut CodeAssembler) {
    a.out(0x82, al).unwrap();
}

/// Halts with interrupts enabled until vector `v` has been taken `n` times: the
/// check with interrupts off, then `sti; hlt`, whose window no interrupt slips through.
fn wait_for(a: &mut CodeAssembler, v: u8, n: u32) {
    let mut again = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut again).unwrap();
    a.cli().unwrap();
    a.cmp(dword_ptr(COUNT + 4 * v as u64), n).unwrap();
    a.jae(done).unwrap();
    a.sti().unwrap();
    a.hlt().unwrap();
    a.jmp(again).unwrap();
    a.set_label(&mut done).unwrap();
    a.nop().unwrap();
}

/// EDX:EAX = TSC, kept in R8.
fn tsc_to_r8(a: &mut CodeAssembler) {
    a.rdtsc().unwrap();
    a.shl(rdx, 32).unwrap();
    a.or(rax, rdx).unwrap();
    a.mov(r8, rax).unwrap();
}

/// RAX = TSC - R8.
fn tsc_since_r8(a: &mut CodeAssembler) {
    a.rdtsc().unwrap();
    a.shl(rdx, 32).unwrap();
    a.or(rax, rdx).unwrap();
    a.sub(rax, r8).unwrap();
}

fn out(a: &mut CodeAssembler) {
    a.out(0x80, eax).unwrap();
    a.hlt().unwrap();
}

#[test]
fn the_periodic_lapic_timer_wakes_hlt_at_its_period() {
    let mut m = machine(1, ClockMode::Deterministic);
    m.handler(0x40, |_| {});
    m.code(CODE, |a| {
        enable_apic(a);
        a.mov(dword_ptr(rbx + TIMER_DIVIDE), 0xb).unwrap(); // divide by 1
        a.mov(dword_ptr(rbx + LVT_TIMER), (1 << 17) | 0x40).unwrap(); // periodic
        tsc_to_r8(a);
        a.mov(dword_ptr(rbx + TIMER_INITIAL), 1000).unwrap();
        wait_for(a, 0x40, 5);
        tsc_since_r8(a);
        out(a);
    });
    m.start(0, CODE);
    let elapsed = m.run_to_out(0);
    assert_eq!(m.count(0x40), 5);
    // 1,000 ticks of the 25 MHz crystal: 40 us, 40,000 TSC ticks at 1 GHz.
    assert!(
        (200_000..200_400).contains(&elapsed),
        "five periods took {elapsed} TSC ticks"
    );
}

#[test]
fn a_one_shot_timer_fires_once_and_a_halt_with_nothing_pending_is_idle() {
    let mut m = machine(1, ClockMode::Deterministic);
    m.handler(0x40, |_| {});
    m.handler(0x41, |_| {});
    m.code(CODE, |a| {
        enable_apic(a);
        a.mov(dword_ptr(rbx + TIMER_DIVIDE), 0xa).unwrap(); // divide by 128
        a.mov(dword_ptr(rbx + LVT_TIMER), 0x40).unwrap(); // one-shot
        a.mov(dword_ptr(rbx + TIMER_INITIAL), 10).unwrap();
        wait_for(a, 0x40, 1);
        wait_for(a, 0x41, 1);
        a.mov(eax, dword_ptr(COUNT + 4 * 0x40)).unwrap();
        out(a);
    });
    m.start(0, CODE);
    // Nothing can wake the second halt: the run says so rather than blocking.
    assert_eq!(m.run(0), Exit::Idle);
    assert_eq!(m.count(0x40), 1);
    m.request(0x41, 0, false).unwrap();
    assert_eq!(m.run_to_out(0), 1, "the one-shot timer fired once");
    assert_eq!(m.count(0x41), 1);
}

#[test]
fn the_tsc_deadline_timer_fires_at_its_deadline() {
    let mut m = machine(1, ClockMode::Deterministic);
    m.handler(0x40, |a| {
        // The TSC when the handler runs.
        a.rdtsc().unwrap();
        a.mov(dword_ptr(SLOT), eax).unwrap();
        a.mov(dword_ptr(SLOT + 4), edx).unwrap();
    });
    m.code(CODE, |a| {
        enable_apic(a);
        a.mov(dword_ptr(rbx + LVT_TIMER), (2 << 17) | 0x40).unwrap();
        a.rdtsc().unwrap();
        a.add(eax, 50_000).unwrap();
        a.adc(edx, 0).unwrap();
        a.mov(r9d, eax).unwrap();
        a.mov(ecx, TSC_DEADLINE_MSR).unwrap();
        a.wrmsr().unwrap();
        wait_for(a, 0x40, 1);
        // The MSR reads 0 once the deadline has fired (SDM vol 3 11.5.4.1).
        a.rdmsr().unwrap();
        a.or(eax, edx).unwrap();
        a.shl(rax, 32).unwrap();
        a.or(rax, r9).unwrap();
        out(a);
    });
    m.start(0, CODE);
    let v = m.run_to_out(0);
    assert_eq!(v >> 32, 0, "IA32_TSC_DEADLINE is 0 after it fires");
    let deadline = v & 0xffff_ffff;
    let fired = u64::from_le_bytes(m.read::<8>(SLOT)) & 0xffff_ffff;
    assert!(
        (deadline..deadline + 100).contains(&fired),
        "deadline {deadline}, handler ran at {fired}"
    );
}

/// `sti; hlt` with an interrupt already pending: the STI shadow holds it back over the
/// HLT, which it then wakes, so it is not lost and the return address is past the HLT.
/// With an instruction between them the interrupt comes before the HLT, which then has
/// nothing left to wake it.
#[test]
fn the_sti_hlt_window_loses_no_wake_up() {
    for gap in [false, true] {
        let mut m = machine(1, ClockMode::Deterministic);
        m.handler(0x41, |a| {
            a.mov(rax, qword_ptr(rsp + 24)).unwrap(); // the interrupted RIP
            a.mov(qword_ptr(SLOT), rax).unwrap();
        });
        m.code(CODE, |a| {
            enable_apic(a);
            let mut at = a.create_label();
            a.lea(rax, ptr(at)).unwrap();
            a.mov(qword_ptr(SLOT + 8), rax).unwrap();
            sync(a);
            a.sti().unwrap();
            if gap {
                a.nop().unwrap();
            }
            a.set_label(&mut at).unwrap();
            a.hlt().unwrap();
            a.mov(eax, dword_ptr(COUNT + 4 * 0x41)).unwrap();
            out(a);
        });
        m.start(0, CODE);
        m.pass_sync(0);
        m.request(0x41, 0, false).unwrap();
        let hlt_at = u64::from_le_bytes(m.read::<8>(SLOT + 8));
        if gap {
            assert_eq!(m.run(0), Exit::Idle, "the HLT after the interrupt waits");
            assert_eq!(u64::from_le_bytes(m.read::<8>(SLOT)), hlt_at);
        } else {
            assert_eq!(m.run_to_out(0), 1);
            assert_eq!(
                u64::from_le_bytes(m.read::<8>(SLOT)),
                hlt_at + 1,
                "the interrupt woke the HLT: it returns past it"
            );
        }
    }
}

/// A handler of vector 0x41 (class 4) enables interrupts and sends itself 0x42 (class
/// 4: held until its EOI, PPR = 0x40) and 0x91 (class 9: taken at once, nested).
#[test]
fn interrupts_nest_by_priority_class() {
    let mut m = machine(1, ClockMode::Deterministic);
    let self_ipi = |a: &mut CodeAssembler, v: u32| {
        a.mov(dword_ptr(rbx + ICR_LOW), (1 << 18) | v).unwrap();
    };
    m.handler(0x41, |a| {
        a.sti().unwrap();
        self_ipi(a, 0x42);
        self_ipi(a, 0x91);
        a.nop().unwrap();
        log(a, 0xee);
        a.cli().unwrap();
    });
    m.handler(0x42, |_| {});
    m.handler(0x91, |_| {});
    m.code(CODE, |a| {
        enable_apic(a);
        self_ipi(a, 0x41);
        wait_for(a, 0x42, 1);
        a.xor(eax, eax).unwrap();
        out(a);
    });
    m.start(0, CODE);
    m.run_to_out(0);
    assert_eq!(m.log(), [0x41, 0x91, 0xee, 0x42]);
}

/// The EOI of a level-triggered vector comes back to the VMM (`HVMSG_X64_APIC_EOI`,
/// what OpenVMM's virt_mshv passes to its I/O APIC's `handle_eoi`); an edge-triggered
/// vector's does not.
#[test]
fn a_level_triggered_eoi_reaches_the_vmm() {
    let mut m = machine(1, ClockMode::Deterministic);
    m.handler(0x50, |_| {});
    m.handler(0x51, |_| {});
    m.code(CODE, |a| {
        enable_apic(a);
        sync(a);
        wait_for(a, 0x50, 1);
        wait_for(a, 0x51, 1);
        a.mov(eax, 7).unwrap();
        out(a);
    });
    m.start(0, CODE);
    m.pass_sync(0);
    m.request(0x50, 0, true).unwrap();
    assert_eq!(m.run(0), Exit::Message);
    assert_eq!(m.msg.message_type(), HVMSG_X64_APIC_EOI);
    let eoi: hv_x64_apic_eoi_message = m.msg.payload();
    assert_eq!((eoi.vp_index, eoi.interrupt_vector), (0, 0x50));
    m.request(0x51, 0, false).unwrap();
    assert_eq!(m.run_to_out(0), 7, "no EOI message for an edge vector");
}

/// CR8 is TPR[7:4], one register with the APIC page's TPR (SDM vol 3 11.8.6): MOV to
/// CR8 sets TPR to the value << 4 with bits 3:0 zero; a TPR written on the page reads
/// back through MOV from CR8, the VMM's `HV_X64_REGISTER_CR8` and the intercept
/// header's CR8; the VMM's CR8 sets the TPR; and a TPR set through CR8 masks
/// interrupts until CR8 lowers it (kvm-unit-tests' apic.c "*0xfee00080" after
/// `write_cr8`).
#[test]
fn cr8_is_tpr_bits_7_4_sdm_11_8_6() {
    let mut m = machine(1, ClockMode::Deterministic);
    let cr8_reg = hv_register_name_HV_X64_REGISTER_CR8;
    m.handler(0x50, |_| {});
    m.code(CODE, |a| {
        enable_apic(a);
        a.mov(eax, 0xf).unwrap();
        a.mov(cr8, rax).unwrap();
        a.mov(eax, dword_ptr(rbx + TPR)).unwrap();
        a.out(0x80, eax).unwrap(); // 0xf0
        a.mov(dword_ptr(rbx + TPR), 0x5a).unwrap();
        a.mov(rax, cr8).unwrap();
        a.out(0x80, eax).unwrap(); // 5
        a.mov(eax, dword_ptr(rbx + TPR)).unwrap();
        a.out(0x80, eax).unwrap(); // the VMM's CR8 3: 0x30
                                   // Class 5 is masked by TPR class 0xf, then let through by CR8 = 4.
        a.mov(eax, 0xf).unwrap();
        a.mov(cr8, rax).unwrap();
        a.sti().unwrap();
        sync(a);
        a.nop().unwrap();
        a.mov(eax, dword_ptr(COUNT + 4 * 0x50)).unwrap();
        a.out(0x80, eax).unwrap(); // 0
        a.mov(eax, 4).unwrap();
        a.mov(cr8, rax).unwrap();
        a.nop().unwrap();
        a.mov(eax, dword_ptr(COUNT + 4 * 0x50)).unwrap();
        out(a); // 1
    });
    m.start(0, CODE);
    // Runs to the next `out 0x80` and completes it: its value and the header's CR8.
    let next = |m: &mut Machine| {
        let v = m.run_to_out(0);
        let io: hv_x64_io_port_intercept_message = m.msg.payload();
        let rip = io.header.rip + io.header.instruction_length() as u64;
        m.cpus[0]
            .set_registers(&[hv_register_name_HV_X64_REGISTER_RIP], &[[rip, 0]])
            .unwrap();
        (v, io.header.cr8())
    };
    let get_cr8 = |m: &mut Machine| {
        let mut v = [[0u64; 2]];
        m.cpus[0].get_registers(&[cr8_reg], &mut v).unwrap();
        v[0][0]
    };
    assert_eq!(next(&mut m), (0xf0, 0xf), "MOV to CR8 sets TPR[7:4]");
    assert_eq!(get_cr8(&mut m), 0xf);
    assert_eq!(next(&mut m), (5, 5), "CR8 reads TPR[7:4] the page wrote");
    assert_eq!(get_cr8(&mut m), 5);
    m.cpus[0].set_registers(&[cr8_reg], &[[3, 0]]).unwrap();
    assert_eq!(next(&mut m).0, 0x30, "the VMM's CR8 is the TPR");
    m.pass_sync(0);
    m.request(0x50, 0, false).unwrap();
    assert_eq!(
        next(&mut m).0,
        0,
        "TPR class 0xf from CR8 holds vector 0x50"
    );
    assert_eq!(m.run_to_out(0), 1, "CR8 = 4 lets it through");
}

/// vCPU 0 sends a fixed IPI to APIC id 1, whose handler answers with one back.
#[test]
fn ipis_go_between_vcpus() {
    let mut m = machine(2, ClockMode::Deterministic);
    m.handler(0x60, |a| {
        // Answer vCPU 0.
        a.mov(dword_ptr(rbx + ICR_HIGH), 0).unwrap();
        a.mov(dword_ptr(rbx + ICR_LOW), 0x61).unwrap();
    });
    m.handler(0x61, |_| {});
    m.code(CODE, |a| {
        enable_apic(a);
        a.mov(dword_ptr(rbx + ICR_HIGH), 1 << 24).unwrap();
        a.mov(dword_ptr(rbx + ICR_LOW), 0x60).unwrap();
        wait_for(a, 0x61, 1);
        a.mov(eax, 0x61).unwrap();
        out(a);
    });
    m.code(AP_CODE, |a| {
        enable_apic(a);
        wait_for(a, 0x60, 1);
        a.mov(eax, 0x60).unwrap();
        out(a);
    });
    m.start(0, CODE);
    m.start(1, AP_CODE);
    assert_eq!(m.run(1), Exit::Idle, "vCPU 1 waits for its IPI");
    assert_eq!(
        m.run(0),
        Exit::Idle,
        "vCPU 0 sent it and waits for the answer"
    );
    assert_eq!(m.run_to_out(1), 0x60);
    assert_eq!(m.run_to_out(0), 0x61);
}

/// vCPU 0 starts vCPU 1 as an OS starts an AP: INIT, then a start-up IPI whose vector
/// is the real-mode start page (SDM vol 3 10.4.4.1); the AP runs from 0x9000 in real
/// mode and reports.
#[test]
fn init_and_sipi_start_an_application_processor() {
    let mut m = machine(2, ClockMode::Deterministic);
    m.code(CODE, |a| {
        enable_apic(a);
        a.mov(dword_ptr(rbx + ICR_HIGH), 1 << 24).unwrap();
        a.mov(dword_ptr(rbx + ICR_LOW), 0x4500).unwrap(); // INIT, assert
        a.mov(dword_ptr(rbx + ICR_LOW), 0x4609).unwrap(); // SIPI, page 9
        a.mov(eax, 1).unwrap();
        out(a);
    });
    // 16-bit: mov ax, cs; mov ds, ax; mov [0x100], ax (at 0x9100); out 0x80, ax; hlt.
    let ap = assemble(16, 0, |a| {
        a.mov(ax, cs).unwrap();
        a.mov(ds, ax).unwrap();
        a.mov(word_ptr(0x100), ax).unwrap();
        a.out(0x80, ax).unwrap();
        a.hlt().unwrap();
    });
    m.ram.write(0x9000, &ap).unwrap();
    m.start(0, CODE);
    // vCPU 1 spins until the INIT puts it in wait-for-SIPI.
    m.code(AP_CODE, |a| {
        let mut spin = a.create_label();
        a.set_label(&mut spin).unwrap();
        a.pause().unwrap();
        a.jmp(spin).unwrap();
    });
    m.start(1, AP_CODE);
    assert_eq!(m.run_to_out(0), 1);
    assert_eq!(
        m.run_to_out(1) & 0xffff,
        0x900,
        "the AP's CS is the SIPI page"
    );
    let rip = {
        let mut out = [[0u64; 2]];
        m.cpus[1]
            .get_registers(&[hv_register_name_HV_X64_REGISTER_RIP], &mut out)
            .unwrap();
        out[0][0]
    };
    assert_eq!(rip, 7, "it ran its start page from offset 0 to its OUT");
    assert_eq!(u16::from_le_bytes(m.read::<2>(0x9100)), 0x900);
}

#[test]
fn bad_requests_are_einval_naming_the_value() {
    let m = machine(1, ClockMode::Deterministic);
    let e = m.request(5, 0, false).unwrap_err();
    assert_eq!(e.code(), "EINVAL");
    assert!(e.to_string().contains('5'), "{e}");
    let e = m.request(0x40, 7, false).unwrap_err();
    assert_eq!(e.code(), "EINVAL");
    assert!(e.to_string().contains("0x7"), "{e}");
    let e = InterruptRequest::from_msi(0x1234_0000, 0x40).unwrap_err();
    assert_eq!(e.code(), "EINVAL");
}

/// An interrupt-heavy guest run twice with the same inputs makes the same exits at the
/// same guest times, bit for bit (the deterministic clock, as QEMU's icount).
#[test]
fn deterministic_time_replays_a_run_exactly() {
    let trace = || {
        let mut m = machine(1, ClockMode::Deterministic);
        m.handler(0x40, |a| {
            a.rdtsc().unwrap();
            a.out(0x81, eax).unwrap();
        });
        m.code(CODE, |a| {
            enable_apic(a);
            a.mov(dword_ptr(rbx + TIMER_DIVIDE), 0xb).unwrap();
            a.mov(dword_ptr(rbx + LVT_TIMER), (1 << 17) | 0x40).unwrap();
            a.mov(dword_ptr(rbx + TIMER_INITIAL), 777).unwrap();
            // Busy work the timer interrupts at arbitrary points.
            let mut work = a.create_label();
            a.set_label(&mut work).unwrap();
            a.sti().unwrap();
            a.imul_3(ecx, ecx, 3).unwrap();
            a.add(ecx, 1).unwrap();
            a.cmp(dword_ptr(COUNT + 4 * 0x40), 50).unwrap();
            a.jb(work).unwrap();
            a.mov(eax, ecx).unwrap();
            out(a);
        });
        m.start(0, CODE);
        let mut seen = Vec::new();
        loop {
            let v = m.run_to_out(0);
            let io: hv_x64_io_port_intercept_message = m.msg.payload();
            let rip = io.header.rip;
            seen.push((io.port_number, v, rip));
            if io.port_number == 0x80 {
                break;
            }
            // Complete the OUT: RIP past it.
            let len = io.header.instruction_length() as u64;
            m.cpus[0]
                .set_registers(&[hv_register_name_HV_X64_REGISTER_RIP], &[[rip + len, 0]])
                .unwrap();
        }
        seen
    };
    let first = trace();
    assert_eq!(first.len(), 51, "50 timer exits and the end");
    assert_eq!(first, trace());
}

#[test]
fn a_halted_vcpu_blocks_in_real_time_until_an_interrupt_from_another_thread() {
    let mut m = machine(1, ClockMode::Realtime);
    m.handler(0x41, |_| {});
    m.code(CODE, |a| {
        enable_apic(a);
        wait_for(a, 0x41, 1);
        a.mov(eax, 2).unwrap();
        out(a);
    });
    m.start(0, CODE);
    let interrupts = Arc::clone(&m.interrupts);
    let sender = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        interrupts
            .request(&InterruptRequest {
                kind: InterruptKind::Fixed,
                destination: 0,
                logical: false,
                vector: 0x41,
                level: false,
            })
            .unwrap();
    });
    let start = std::time::Instant::now();
    let exit = m.cpus[0]
        .run(
            &mut m.msg,
            &RunLimits {
                block_on_halt: true,
                ..RunLimits::with_timeout(None, Some(std::time::Duration::from_secs(10)))
            },
        )
        .unwrap();
    sender.join().unwrap();
    assert_eq!(
        exit,
        Exit::Message,
        "woken by the interrupt, not the timeout"
    );
    assert_eq!(m.msg.message_type(), HVMSG_X64_IO_PORT_INTERCEPT);
    assert!(start.elapsed() >= std::time::Duration::from_millis(40));
}

/// A VMM holds an AP in startup suspend through `HV_REGISTER_INTERNAL_ACTIVITY_STATE`
/// (as OpenHCL's `set_vtl0_startup_suspend` does) until the guest's start-up IPI; the
/// register shows halt suspend too, and refuses bits that do not exist.
#[test]
fn the_internal_activity_state_holds_an_ap_until_its_sipi() {
    const ACTIVITY: u32 = hv_register_name_HV_REGISTER_INTERNAL_ACTIVITY_STATE;
    let mut m = machine(2, ClockMode::Deterministic);
    m.code(CODE, |a| {
        enable_apic(a);
        sync(a);
        a.mov(dword_ptr(rbx + ICR_HIGH), 1 << 24).unwrap();
        a.mov(dword_ptr(rbx + ICR_LOW), 0x4608).unwrap(); // SIPI, page 8
        a.sti().unwrap();
        a.hlt().unwrap();
    });
    // The AP's start page: out 0x80, al (AL = 0x5a).
    m.ram
        .write(0x8000, &[0xb0, 0x5a, 0xe6, 0x80, 0xf4])
        .unwrap();
    m.start(0, CODE);
    m.start(1, AP_CODE);
    m.cpus[1].set_registers(&[ACTIVITY], &[[1, 0]]).unwrap();
    assert_eq!(m.run(1), Exit::Idle, "held in startup suspend");
    m.pass_sync(0);
    let mut state = [[0u64; 2]];
    m.cpus[1].get_registers(&[ACTIVITY], &mut state).unwrap();
    assert_eq!(state[0][0], 1, "still waiting for SIPI");
    assert_eq!(m.run(0), Exit::Idle, "vCPU 0 sent the SIPI and halted");
    m.cpus[0].get_registers(&[ACTIVITY], &mut state).unwrap();
    assert_eq!(state[0][0], 2, "vCPU 0 is in halt suspend");
    assert_eq!(m.run_to_out(1) as u8, 0x5a, "the AP ran its start page");
    let e = m.cpus[1].set_registers(&[ACTIVITY], &[[8, 0]]).unwrap_err();
    assert_eq!(e.code(), "EINVAL");
    assert!(e.to_string().contains("0x8"), "{e}");
}

/// Deterministic time leaps over halts only when every vCPU waits, and an interrupt
/// sent to a halted vCPU counts as work for it: vCPU 1 halts with its timer 50 ms
/// away, vCPU 0 sends it an IPI and halts; vCPU 1 takes the IPI at the time it was
/// sent, not at its timer (a Linux SMP boot waited for timers at every wake-up before).
#[test]
fn an_ipi_to_a_halted_vcpu_is_taken_when_sent_not_at_the_next_timer() {
    let mut m = machine(2, ClockMode::Deterministic);
    m.handler(0x60, |a| {
        a.rdtsc().unwrap();
        a.mov(dword_ptr(SLOT), eax).unwrap();
    });
    m.handler(0x40, |_| {});
    m.code(AP_CODE, |a| {
        enable_apic(a);
        a.mov(dword_ptr(rbx + LVT_TIMER), (2 << 17) | 0x40).unwrap();
        a.rdtsc().unwrap();
        a.add(eax, 50_000_000).unwrap();
        a.adc(edx, 0).unwrap();
        a.mov(ecx, TSC_DEADLINE_MSR).unwrap();
        a.wrmsr().unwrap();
        wait_for(a, 0x60, 1);
        a.xor(eax, eax).unwrap();
        out(a);
    });
    m.code(CODE, |a| {
        enable_apic(a);
        let mut spin = a.create_label();
        a.mov(ecx, 10_000).unwrap();
        a.set_label(&mut spin).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(spin).unwrap();
        a.rdtsc().unwrap();
        a.mov(dword_ptr(SLOT + 8), eax).unwrap();
        a.mov(dword_ptr(rbx + ICR_HIGH), 1 << 24).unwrap();
        a.mov(dword_ptr(rbx + ICR_LOW), 0x60).unwrap();
        a.sti().unwrap();
        let mut idle = a.create_label();
        a.set_label(&mut idle).unwrap();
        a.hlt().unwrap();
        a.jmp(idle).unwrap();
    });
    m.start(0, CODE);
    m.start(1, AP_CODE);
    // vCPU 0 starts (a budget stops it mid-loop): it is executing from then on.
    let limits = RunLimits {
        max_instructions: Some(100),
        ..RunLimits::default()
    };
    assert_eq!(
        m.cpus[0].run(&mut m.msg, &limits).unwrap(),
        Exit::InstructionLimit
    );
    assert_eq!(
        m.run(1),
        Exit::Idle,
        "vCPU 1 halts, its timer far away: no leap while vCPU 0 runs"
    );
    assert_eq!(m.run(0), Exit::Idle, "vCPU 0 sent the IPI and halted");
    m.run_to_out(1);
    let sent = u32::from_le_bytes(m.read::<4>(SLOT + 8)) as u64;
    let taken = u32::from_le_bytes(m.read::<4>(SLOT)) as u64;
    assert!(
        taken >= sent && taken - sent < 100_000,
        "sent at {sent}, taken at {taken}: the clock leapt toward vCPU 1's timer"
    );
}

/// A periodic LAPIC timer of one tick (40 ns: every 40 instructions on the deterministic
/// clock) with a guest spinning with interrupts on: every slice ends at the tick, before
/// the processor's poll. The run's deadline and a cancel still end it (issue #32 item 1).
#[test]
fn a_timer_storm_does_not_outlive_the_runs_deadline_or_a_cancel() {
    let mut m = machine(1, ClockMode::Deterministic);
    // A handler that only counts and EOIs (the shared one also logs each vector, and a
    // storm's log would run over the code).
    m.code(HANDLERS + 0x40 * 0x100, |a| {
        a.push(rbx).unwrap();
        a.mov(ebx, APIC).unwrap();
        a.lock().inc(dword_ptr(COUNT + 4 * 0x40)).unwrap();
        a.mov(dword_ptr(rbx + EOI), 0).unwrap();
        a.pop(rbx).unwrap();
        a.iretq().unwrap();
    });
    m.code(CODE, |a| {
        enable_apic(a);
        a.mov(dword_ptr(rbx + TIMER_DIVIDE), 0xb).unwrap(); // divide by 1
        a.mov(dword_ptr(rbx + LVT_TIMER), (1 << 17) | 0x40).unwrap(); // periodic
        a.mov(dword_ptr(rbx + TIMER_INITIAL), 1).unwrap();
        a.sti().unwrap();
        let mut spin = a.create_label();
        a.set_label(&mut spin).unwrap();
        a.jmp(spin).unwrap();
    });
    m.start(0, CODE);
    let start = std::time::Instant::now();
    let exit = m.cpus[0]
        .run(
            &mut m.msg,
            &RunLimits::with_timeout(None, Some(std::time::Duration::from_millis(50))),
        )
        .unwrap();
    assert_eq!(exit, Exit::Timeout);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        m.count(0x40) > 100,
        "the storm ran: {} ticks taken",
        m.count(0x40)
    );
    let canceller = m.cpus[0].canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        canceller.cancel();
    });
    let start = std::time::Instant::now();
    let exit = m.cpus[0].run(&mut m.msg, &RunLimits::default()).unwrap();
    t.join().unwrap();
    assert_eq!(exit, Exit::Cancelled);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

/// The guest of the state tests: a periodic LAPIC timer whose handler sums the spin
/// loop's ECX where each tick lands (so the sum moves if one tick lands one instruction
/// off), while the loop reports TSC + that sum at each `out 0x80, eax`, interrupts on.
fn ticking_guest(m: &Machine) {
    m.handler(0x40, |a| {
        a.add(dword_ptr(SLOT), ecx).unwrap();
    });
    m.code(CODE, |a| {
        let mut top = a.create_label();
        let mut spin = a.create_label();
        enable_apic(a);
        a.mov(dword_ptr(rbx + TIMER_DIVIDE), 0xb).unwrap(); // divide by 1
        a.mov(dword_ptr(rbx + LVT_TIMER), (1 << 17) | 0x40).unwrap(); // periodic
        a.mov(dword_ptr(rbx + TIMER_INITIAL), 73).unwrap();
        a.sti().unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(ecx, 3001).unwrap();
        a.set_label(&mut spin).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(spin).unwrap();
        a.rdtsc().unwrap();
        a.add(eax, dword_ptr(SLOT)).unwrap();
        a.out(0x80, eax).unwrap();
        a.jmp(top).unwrap();
    });
}

/// `n` OUTs from vCPU 0, each completed: (value, instructions retired before it).
fn outs(m: &mut Machine, n: usize) -> Vec<(u64, u64)> {
    (0..n)
        .map(|_| {
            let v = m.run_to_out(0);
            let io: hv_x64_io_port_intercept_message = m.msg.payload();
            let next = io.header.rip + io.header.instruction_length() as u64;
            m.cpus[0]
                .set_registers(&[hv_register_name_HV_X64_REGISTER_RIP], &[[next, 0]])
                .unwrap();
            (v, m.cpus[0].instructions())
        })
        .collect()
}

#[test]
fn a_state_restored_into_a_new_partition_replays_the_run_exactly() {
    let mut m = machine(1, ClockMode::Deterministic);
    ticking_guest(&m);
    m.start(0, CODE);
    outs(&mut m, 3);
    // The vCPU's state and a copy of RAM, taken between exits: a snapshot.
    let state = m.cpus[0].state().unwrap();
    let mut ram = vec![0u8; RAM];
    m.ram.read(0, &mut ram).unwrap();
    let base = m.cpus[0].instructions();
    let original: Vec<(u64, u64)> = outs(&mut m, 40)
        .into_iter()
        .map(|(v, n)| (v, n - base))
        .collect();
    assert!(m.count(0x40) > 40, "the timer ticked during the run");

    let mut copy = machine(1, ClockMode::Deterministic);
    copy.ram.write(0, &ram).unwrap();
    copy.cpus[0].set_state(&state).unwrap();
    assert_eq!(
        copy.cpus[0].state().unwrap(),
        state,
        "the state reads back as written"
    );
    let replayed: Vec<(u64, u64)> = outs(&mut copy, 40);
    assert_eq!(
        replayed, original,
        "TSC + where the ticks landed, and instructions, at every OUT"
    );
}

#[test]
fn a_state_from_another_backend_or_with_bad_values_changes_nothing() {
    let mut m = machine(1, ClockMode::Deterministic);
    ticking_guest(&m);
    m.start(0, CODE);
    outs(&mut m, 1);
    let state = m.cpus[0].state().unwrap();
    let mut foreign = state.clone();
    foreign.internal = vec![("mshv.something".into(), 1)];
    let e = m.cpus[0].set_state(&foreign).unwrap_err();
    assert!(e.to_string().contains("mshv.something"), "{e}");
    let mut xsave = state.clone();
    xsave.xsave = vec![0; 4096];
    assert!(m.cpus[0].set_state(&xsave).is_err());
    let mut short = state.clone();
    short.lapic.truncate(100);
    assert!(m.cpus[0].set_state(&short).is_err());
    let mut msr = state.clone();
    msr.msrs.push((0xc000_0080, 0));
    assert!(m.cpus[0].set_state(&msr).is_err());
    assert_eq!(m.cpus[0].state().unwrap(), state, "nothing changed");
}

#[test]
fn a_breakpoint_in_a_hot_loop_stops_every_time_round_and_costs_nothing_elsewhere() {
    use hv_core::message::HVMSG_X64_EXCEPTION_INTERCEPT;
    let mut m = machine(1, ClockMode::Deterministic);
    ticking_guest(&m);
    m.start(0, CODE);
    outs(&mut m, 1);
    // `dec ecx` of the spin loop: a linked block that runs thousands of times.
    let code = assemble(64, CODE, |a| {
        enable_apic(a);
        a.mov(dword_ptr(rbx + TIMER_DIVIDE), 0xb).unwrap();
        a.mov(dword_ptr(rbx + LVT_TIMER), (1 << 17) | 0x40).unwrap();
        a.mov(dword_ptr(rbx + TIMER_INITIAL), 73).unwrap();
        a.sti().unwrap();
        a.mov(ecx, 3001).unwrap();
    });
    let dec = CODE + code.len() as u64;
    m.cpus[0]
        .set_debug_state(&hv_core::DebugState {
            breakpoints: vec![dec],
            ..hv_core::DebugState::default()
        })
        .unwrap();
    let mut counts = Vec::new();
    for _ in 0..5 {
        assert_eq!(m.run(0), Exit::Message);
        assert_eq!(m.msg.message_type(), HVMSG_X64_EXCEPTION_INTERCEPT);
        let e: hv_x64_exception_intercept_message = m.msg.payload();
        assert_eq!(({ e.exception_vector }, { e.header.rip }), (1, dec));
        assert_eq!({ e.exception_parameter }, 1, "DR6.B0");
        counts.push(e.rcx);
    }
    assert_eq!(
        counts,
        [3001, 3000, 2999, 2998, 2997],
        "one stop per time round"
    );
    m.cpus[0]
        .set_debug_state(&hv_core::DebugState::default())
        .unwrap();
    let before = m.cpus[0].instructions();
    outs(&mut m, 1);
    assert!(
        m.cpus[0].instructions() - before > 5000,
        "ran freely to the next OUT"
    );
}

#[test]
fn a_watchpoint_set_on_a_page_the_tlb_holds_stops_after_the_write_in_an_interrupt_handler() {
    use hv_core::message::HVMSG_X64_EXCEPTION_INTERCEPT;
    use hv_core::state::{WatchKind, Watchpoint};
    let mut m = machine(1, ClockMode::Deterministic);
    ticking_guest(&m);
    m.start(0, CODE);
    // The handler's writes to SLOT have run: its page is in the TLB now.
    outs(&mut m, 2);
    let before = u32::from_le_bytes(m.read::<4>(SLOT));
    m.cpus[0]
        .set_debug_state(&hv_core::DebugState {
            watchpoints: vec![Watchpoint {
                address: SLOT,
                len: 4,
                kind: WatchKind::Write,
            }],
            ..hv_core::DebugState::default()
        })
        .unwrap();
    assert_eq!(m.run(0), Exit::Message);
    assert_eq!(m.msg.message_type(), HVMSG_X64_EXCEPTION_INTERCEPT);
    let e: hv_x64_exception_intercept_message = m.msg.payload();
    assert_eq!({ e.exception_parameter } & 0xf, 1, "DR6.B0");
    let after = u32::from_le_bytes(m.read::<4>(SLOT));
    assert_eq!(
        after,
        before.wrapping_add(e.rcx as u32),
        "stopped after the ADD to SLOT"
    );
    let h = HANDLERS + 0x40 * 0x100;
    assert!(
        (h..h + 0x100).contains(&{ e.header.rip }),
        "in the timer's handler"
    );
    m.cpus[0]
        .set_debug_state(&hv_core::DebugState::default())
        .unwrap();
    outs(&mut m, 1);
}

/// Enters x2APIC mode (IA32_APIC_BASE EN and EXTD) and software-enables the APIC
/// through its SVR, MSR 0x80F (SDM vol 3 11.12.1).
fn enable_x2apic(a: &mut CodeAssembler) {
    a.mov(ecx, 0x1b).unwrap();
    a.rdmsr().unwrap();
    a.or(eax, 0xc00).unwrap();
    a.wrmsr().unwrap();
    x2apic_write(a, 0x80f, 0x1ff);
}

/// WRMSR of x2APIC register `msr` (RAX, RCX, RDX clobbered).
fn x2apic_write(a: &mut CodeAssembler, msr: u32, value: u64) {
    a.mov(ecx, msr).unwrap();
    a.mov(eax, value as u32).unwrap();
    a.mov(edx, (value >> 32) as u32).unwrap();
    a.wrmsr().unwrap();
}

impl Machine {
    /// Vector `v`'s handler in x2APIC mode: counts and logs it, EOIs through MSR 0x80B.
    fn x2apic_handler(&self, v: u8) {
        self.code(HANDLERS + v as u64 * 0x100, |a| {
            a.push(rax).unwrap();
            a.push(rcx).unwrap();
            a.push(rdx).unwrap();
            a.lock().inc(dword_ptr(COUNT + 4 * v as u64)).unwrap();
            log(a, v);
            x2apic_write(a, 0x80b, 0);
            a.pop(rdx).unwrap();
            a.pop(rcx).unwrap();
            a.pop(rax).unwrap();
            a.iretq().unwrap();
        });
    }
}

/// x2APIC mode's interrupts (SDM vol 3 11.12): a SELF IPI (11.12.11), an IPI in
/// logical mode to cluster 0's bit 1, the logical ID x2APIC ID 1 derives (11.12.10.2),
/// the broadcast 0xFFFFFFFF (11.12.9), all through the 64-bit ICR (MSR 0x830); and an
/// interrupt the VMM requests (an I/O APIC's 8-bit logical destination 0x3) reaching
/// both x2APIC IDs of cluster 0 (kvm-unit-tests ioapic
/// test_ioapic_logical_destination_mode).
#[test]
fn sdm_11_12_x2apic_self_ipi_logical_cluster_and_broadcast() {
    let mut m = machine(2, ClockMode::Deterministic);
    for v in 0x60..=0x63 {
        m.x2apic_handler(v);
    }
    m.code(CODE, |a| {
        enable_x2apic(a);
        sync(a);
        x2apic_write(a, 0x83f, 0x60);
        wait_for(a, 0x60, 1);
        x2apic_write(a, 0x830, 2 << 32 | 0x800 | 0x61);
        x2apic_write(a, 0x830, 0xffff_ffff << 32 | 0x62);
        wait_for(a, 0x62, 2);
        wait_for(a, 0x63, 2);
        a.mov(eax, 1).unwrap();
        out(a);
    });
    m.code(AP_CODE, |a| {
        enable_x2apic(a);
        sync(a);
        wait_for(a, 0x61, 1);
        wait_for(a, 0x62, 2);
        // Taken before vCPU 0 runs again.
        wait_for(a, 0x63, 1);
        a.mov(eax, 2).unwrap();
        out(a);
    });
    m.start(0, CODE);
    m.start(1, AP_CODE);
    m.pass_sync(1);
    assert_eq!(m.run(1), Exit::Idle, "vCPU 1 waits for its IPI");
    m.pass_sync(0);
    assert_eq!(m.run(0), Exit::Idle, "vCPU 0 waits for vCPU 1's broadcast");
    assert_eq!(m.run(1), Exit::Idle, "vCPU 1 took 0x61 and 0x62");
    assert_eq!(m.run(0), Exit::Idle);
    m.interrupts
        .request(&InterruptRequest {
            kind: InterruptKind::Fixed,
            destination: 0x3,
            logical: true,
            vector: 0x63,
            level: false,
        })
        .unwrap();
    assert_eq!(m.run_to_out(1), 2);
    assert_eq!(m.run_to_out(0), 1);
    let counts: Vec<u32> = (0x60..=0x63).map(|v| m.count(v)).collect();
    assert_eq!(counts, [1, 1, 2, 2]);
}

/// An NMI waits for the end of an interrupt shadow: "NMIs ... may be inhibited on the
/// instruction boundary following an execution of STI that begins with IF = 0" (SDM
/// vol 2 STI), as KVM's `vmx_nmi_blocked` inhibits them; and MOV SS's shadow is there
/// so that no event comes between the stack's two halves (SDM vol 3 6.8.3).
/// kvm-unit-tests apic "nmi-after-sti" counts NMIs taken at the instruction after an
/// STI. The vCPU starts in a shadow (the interrupt-state register, MSHV's
/// `HV_REGISTER_INTERRUPT_STATE`) with an NMI pending: the NMI comes after the first
/// instruction, not before it.
#[test]
fn sdm_vol2_sti_an_nmi_waits_for_the_end_of_an_interrupt_shadow() {
    let mut m = machine(1, ClockMode::Deterministic);
    m.handler(2, |a| {
        // The interrupted RIP, above the three registers the handler pushed.
        a.mov(rax, qword_ptr(rsp + 24)).unwrap();
        a.mov(qword_ptr(SLOT), rax).unwrap();
    });
    m.code(CODE, |a| {
        a.nop().unwrap();
        a.nop().unwrap();
        a.mov(rax, qword_ptr(SLOT)).unwrap();
        out(a);
    });
    m.start(0, CODE);
    m.cpus[0]
        .set_registers(&[hv_register_name_HV_REGISTER_INTERRUPT_STATE], &[[1, 0]])
        .unwrap();
    m.interrupts
        .request(&InterruptRequest {
            kind: InterruptKind::Nmi,
            destination: 0,
            logical: false,
            vector: 0,
            level: false,
        })
        .unwrap();
    assert_eq!(m.run_to_out(0), CODE + 1, "taken after the first NOP");
}

/// The 8259's ExtINT on a vCPU as the hypervisor resets it, without the VMM's
/// `set_lint`: LINT0 masked (SDM vol 3 11.4.7.1), so the interrupt is held (an 8259's
/// INTR stays high) while the guest runs with interrupts on; clearing
/// IA32_APIC_BASE.EN makes LINT0 the processor's INTR pin (11.4.3; KVM
/// `kvm_apic_accept_pic_intr`, QEMU `apic_accept_pic_intr`), and it is taken then.
/// The handler writes no EOI: with the APIC disabled its page is plain memory.
#[test]
fn sdm_11_4_3_a_held_extint_is_taken_once_the_guest_globally_disables_its_apic() {
    let mut m = machine(1, ClockMode::Deterministic);
    m.code(HANDLERS + 0x30 * 0x100, |a| {
        a.lock().inc(dword_ptr(COUNT + 4 * 0x30)).unwrap();
        a.iretq().unwrap();
    });
    m.code(CODE, |a| {
        sync(a);
        a.sti().unwrap();
        a.mov(ecx, 1000).unwrap();
        let mut spin = a.create_label();
        a.set_label(&mut spin).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(spin).unwrap();
        a.cli().unwrap();
        a.mov(esi, dword_ptr(COUNT + 4 * 0x30)).unwrap();
        a.mov(ecx, 0x1b).unwrap(); // IA32_APIC_BASE
        a.rdmsr().unwrap();
        a.and(eax, !(1u32 << 11) as i32).unwrap();
        a.wrmsr().unwrap();
        a.sti().unwrap();
        a.nop().unwrap();
        a.cli().unwrap();
        a.mov(eax, dword_ptr(COUNT + 4 * 0x30)).unwrap();
        a.shl(esi, 4).unwrap();
        a.or(eax, esi).unwrap();
        out(a);
    });
    m.start(0, CODE);
    m.pass_sync(0);
    m.interrupts
        .request(&InterruptRequest {
            kind: InterruptKind::ExtInt,
            destination: 0,
            logical: false,
            vector: 0x30,
            level: false,
        })
        .unwrap();
    assert_eq!(
        m.run_to_out(0),
        0x01,
        "none taken with LINT0 masked, one once the APIC is off"
    );
}

/// The VMM's `set_lint` (hv_core::lapic; CH `arch/src/x86_64/interrupts.rs`, QEMU
/// `target/i386/mshv/mshv-cpu.c`) on the sim's LAPIC seam: only LVT LINT0 and LINT1
/// change, the rest of the vCPU's state (its pending ExtINT among the internal values)
/// stays, and the BSP then takes the 8259's interrupt with its APIC software-disabled
/// (KVM's LINT0_REENABLED reset).
#[test]
fn ch_set_lint_changes_lint0_and_lint1_only_and_the_bsp_takes_an_extint() {
    let mut m = machine(2, ClockMode::Deterministic);
    m.code(HANDLERS + 0x30 * 0x100, |a| {
        a.lock().inc(dword_ptr(COUNT + 4 * 0x30)).unwrap();
        a.iretq().unwrap();
    });
    m.code(CODE, |a| {
        a.sti().unwrap();
        a.nop().unwrap();
        a.cli().unwrap();
        a.mov(eax, dword_ptr(COUNT + 4 * 0x30)).unwrap();
        out(a);
    });
    m.start(0, CODE);
    m.interrupts
        .request(&InterruptRequest {
            kind: InterruptKind::ExtInt,
            destination: 0,
            logical: false,
            vector: 0x30,
            level: false,
        })
        .unwrap();
    for (i, cpu) in m.cpus.iter_mut().enumerate() {
        let before = cpu.state().unwrap();
        hv_core::lapic::set_lint(cpu.as_mut(), i == 0).unwrap();
        let after = cpu.state().unwrap();
        assert_eq!(after.registers, before.registers, "vCPU {i}");
        assert_eq!(after.internal, before.internal, "vCPU {i}");
        let changed: Vec<usize> = (0..after.lapic.len())
            .filter(|&b| after.lapic[b] != before.lapic[b])
            .collect();
        let lvt = |o: usize| hv_core::lapic::register(&after.lapic, o).unwrap();
        assert!(
            changed
                .iter()
                .all(|&b| (0x350..0x354).contains(&b) || (0x360..0x364).contains(&b)),
            "vCPU {i}: bytes {changed:x?}"
        );
        let lint0 = if i == 0 { 0x700 } else { 0x1_0700 };
        assert_eq!((lvt(0x350), lvt(0x360)), (lint0, 0x1_0400), "vCPU {i}");
    }
    assert_eq!(m.run_to_out(0), 1, "taken after the STI");
}
