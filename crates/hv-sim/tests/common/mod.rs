//! Helpers shared by the sim's integration tests: a VM with RAM and guest code
//! assembled with iced-x86's code assembler.
#![allow(dead_code)]

use hv_core::regs::{pack_segment, pack_table};
use hv_core::{
    ExitMessage, HostRegion, HvBackend, MemoryMapping, RegisterPageMode, RegisterValue, RunLimits,
    VcpuBackend, VmBackend, VmConfig,
};
use hv_sim::SimHypervisor;
use iced_x86::code_asm::CodeAssembler;
use mshv_bindings::*;
use std::sync::Arc;

pub const RAM: usize = 2 << 20;

/// Xorshift64: the differential and random-guest tests' repeatable source of cases.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub struct Guest {
    pub vm: Box<dyn VmBackend>,
    pub vcpu: Box<dyn VcpuBackend>,
    pub ram: Arc<HostRegion>,
    pub msg: ExitMessage,
}

pub fn guest_with(config: VmConfig) -> Guest {
    guest_sized(config, RAM)
}

/// A guest with `ram` bytes of RAM at GPA 0.
pub fn guest_with_ram(ram: usize) -> Guest {
    guest_sized(VmConfig::default(), ram)
}

/// A sim VM with `size` bytes of RAM at GPA 0 and no vCPU yet.
pub fn vm_with_ram(config: &VmConfig, size: usize) -> (Box<dyn VmBackend>, Arc<HostRegion>) {
    let mut vm = SimHypervisor.create_vm(config).unwrap();
    let ram = Arc::new(HostRegion::new(size).unwrap());
    vm.map_memory(MemoryMapping {
        gpa: 0,
        region: Arc::clone(&ram),
        writable: true,
        executable: true,
    })
    .unwrap();
    (vm, ram)
}

fn guest_sized(config: VmConfig, ram: usize) -> Guest {
    let (mut vm, ram) = vm_with_ram(&config, ram);
    let vcpu = vm.create_vcpu(0).unwrap();
    Guest {
        vm,
        vcpu,
        ram,
        msg: ExitMessage::default(),
    }
}

pub fn guest() -> Guest {
    guest_with(VmConfig::default())
}

pub fn assemble(bits: u32, ip: u64, f: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    f(&mut a);
    a.assemble(ip).unwrap()
}

impl Guest {
    pub fn load(&self, gpa: u64, code: &[u8]) {
        self.ram.write(gpa as usize, code).unwrap();
    }

    pub fn set(&mut self, id: u32, v: u64) {
        self.vcpu.set_registers(&[id], &[[v, 0]]).unwrap();
    }

    pub fn set_raw(&mut self, id: u32, v: RegisterValue) {
        self.vcpu.set_registers(&[id], &[v]).unwrap();
    }

    pub fn get(&mut self, id: u32) -> u64 {
        let mut out = [[0u64; 2]];
        self.vcpu.get_registers(&[id], &mut out).unwrap();
        out[0][0]
    }

    /// Real mode, CS=DS=ES=SS=0, code at `ip`.
    pub fn real_mode(&mut self, ip: u64) {
        for id in [
            hv_register_name_HV_X64_REGISTER_CS,
            hv_register_name_HV_X64_REGISTER_DS,
            hv_register_name_HV_X64_REGISTER_ES,
            hv_register_name_HV_X64_REGISTER_SS,
        ] {
            let attr = if id == hv_register_name_HV_X64_REGISTER_CS {
                0x9b
            } else {
                0x93
            };
            self.set_raw(id, pack_segment(0, 0xffff, 0, attr));
        }
        self.set(hv_register_name_HV_X64_REGISTER_RIP, ip);
        self.set(hv_register_name_HV_X64_REGISTER_RSP, 0x7000);
    }

    /// Flat 64-bit long mode with identity paging of the first 4 GiB (the local APIC
    /// at 0xFEE00000 included), code at `ip`.
    pub fn long_mode(&mut self, ip: u64) {
        enter_long_mode(self.vcpu.as_mut(), &self.ram, ip, 0x8_0000);
    }

    pub fn run(&mut self) -> hv_core::Exit {
        self.vcpu
            .run(
                &mut self.msg,
                &RunLimits {
                    max_instructions: Some(10_000_000),
                    ..RunLimits::default()
                },
            )
            .unwrap()
    }

    pub fn page(&self) -> hv_core::RegisterPagePtr {
        self.vcpu.register_page().unwrap()
    }
}

/// Puts `vcpu` in flat 64-bit long mode with identity paging of the first 4 GiB (the
/// local APIC at 0xFEE00000 included; the tables at 0x10_0000 in `ram`), at `ip` with
/// the stack at `rsp`.
pub fn enter_long_mode(vcpu: &mut dyn VcpuBackend, ram: &HostRegion, ip: u64, rsp: u64) {
    // PML4 at 0x10_0000, PDPT at 0x10_1000 with four 1 GiB pages.
    ram.write(0x10_0000, &(0x10_1000u64 | 3).to_le_bytes())
        .unwrap();
    for i in 0..4u64 {
        let entry = (i << 30) | 0x83;
        ram.write(0x10_1000 + 8 * i as usize, &entry.to_le_bytes())
            .unwrap();
    }
    let code = pack_segment(0, 0xffff_ffff, 8, 0xa09b);
    let data = pack_segment(0, 0xffff_ffff, 16, 0xc093);
    let mut set = |id: u32, v: RegisterValue| vcpu.set_registers(&[id], &[v]).unwrap();
    set(hv_register_name_HV_X64_REGISTER_CS, code);
    for id in [
        hv_register_name_HV_X64_REGISTER_DS,
        hv_register_name_HV_X64_REGISTER_ES,
        hv_register_name_HV_X64_REGISTER_SS,
    ] {
        set(id, data);
    }
    set(hv_register_name_HV_X64_REGISTER_GDTR, pack_table(0, 0));
    set(hv_register_name_HV_X64_REGISTER_CR3, [0x10_0000, 0]);
    set(hv_register_name_HV_X64_REGISTER_CR4, [1 << 5, 0]);
    set(
        hv_register_name_HV_X64_REGISTER_EFER,
        [(1 << 8) | (1 << 10), 0],
    );
    set(hv_register_name_HV_X64_REGISTER_CR0, [0x8000_0011, 0]);
    set(hv_register_name_HV_X64_REGISTER_RIP, [ip, 0]);
    set(hv_register_name_HV_X64_REGISTER_RSP, [rsp, 0]);
}

pub fn config(page: RegisterPageMode) -> VmConfig {
    VmConfig {
        register_page: page,
        ..VmConfig::default()
    }
}

/// Where snippet tests place their data buffer in guest memory.
pub const DATA_GPA: u64 = 0x4_0000;

const GPR_IDS: [u32; 16] = [
    hv_register_name_HV_X64_REGISTER_RAX,
    hv_register_name_HV_X64_REGISTER_RCX,
    hv_register_name_HV_X64_REGISTER_RDX,
    hv_register_name_HV_X64_REGISTER_RBX,
    hv_register_name_HV_X64_REGISTER_RSP,
    hv_register_name_HV_X64_REGISTER_RBP,
    hv_register_name_HV_X64_REGISTER_RSI,
    hv_register_name_HV_X64_REGISTER_RDI,
    hv_register_name_HV_X64_REGISTER_R8,
    hv_register_name_HV_X64_REGISTER_R9,
    hv_register_name_HV_X64_REGISTER_R10,
    hv_register_name_HV_X64_REGISTER_R11,
    hv_register_name_HV_X64_REGISTER_R12,
    hv_register_name_HV_X64_REGISTER_R13,
    hv_register_name_HV_X64_REGISTER_R14,
    hv_register_name_HV_X64_REGISTER_R15,
];

/// A 64-bit register state, as host-exec has it: GPRs in encoding order and RFLAGS.
pub type State = host_exec::HostState;

/// Runs a 64-bit snippet in the sim from `state` with `mem` at [`DATA_GPA`]; the
/// registers in `bases` are offsets into `mem`, as for host-exec. Returns the state
/// at the HLT appended to the snippet, and updates `mem`.
pub fn sim_snippet(code: &[u8], state: &State, mem: &mut [u8], bases: &[usize]) -> State {
    let mut g = guest();
    let mut text = code.to_vec();
    text.push(0xf4);
    g.load(0x2000, &text);
    g.ram.write(DATA_GPA as usize, mem).unwrap();
    g.long_mode(0x2000);
    for (i, id) in GPR_IDS.iter().enumerate() {
        if i != 4 {
            let offset = if bases.contains(&i) { DATA_GPA } else { 0 };
            g.set(*id, state.gpr[i].wrapping_add(offset));
        }
    }
    g.set(
        hv_register_name_HV_X64_REGISTER_RFLAGS,
        (state.rflags & host_exec::FLAGS_IN) | 2,
    );
    // A HLT with interrupts off waits in the hypervisor (no intercept, as on MSHV with a
    // local APIC); a run that may not block reports it as Halted.
    assert_eq!(g.run(), hv_core::Exit::Halted, "the snippet ran to its HLT");
    let mut out = State::default();
    for (i, id) in GPR_IDS.iter().enumerate() {
        let offset = if bases.contains(&i) { DATA_GPA } else { 0 };
        out.gpr[i] = g.get(*id).wrapping_sub(offset);
    }
    out.gpr[4] = state.gpr[4];
    out.rflags = g.get(hv_register_name_HV_X64_REGISTER_RFLAGS);
    g.ram.read(DATA_GPA as usize, mem).unwrap();
    out
}

/// CPUID `leaf` (subleaf 0) on the host: `[eax, ebx, ecx, edx]`; zeros for an extended
/// leaf beyond the host's highest.
pub fn host_cpuid(leaf: u32) -> [u32; 4] {
    use std::arch::x86_64::__cpuid_count;
    // CPUID exists on every x86-64 processor (safe to call since Rust 1.87).
    if leaf >= 0x8000_0000 && __cpuid_count(0x8000_0000, 0).eax < leaf {
        return [0; 4];
    }
    let r = __cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// A deterministic xorshift stream that starts with the edge values of every width.
pub fn values(seed: u64) -> impl Iterator<Item = u64> {
    let mut s = seed | 1;
    let edge = [
        0,
        1,
        2,
        0x7f,
        0x80,
        0xff,
        0x7fff,
        0x8000,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        u64::MAX,
        1 << 63,
        (1 << 63) - 1,
    ];
    edge.into_iter().chain(std::iter::from_fn(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        Some(s)
    }))
}

// ---- floating point: the FXSAVE image in and out, and the exceptions it raises ----

/// Where the FP harness keeps its images and tables in guest memory.
const FX_IN: u64 = 0x3_0000;
const FX_OUT: u64 = 0x3_0400;
const FAULT: u64 = 0x3_0800;
const FP_IDT: u64 = 0x3_1000;
const FP_STUBS: u64 = 0x3_2000;
const FP_GDT: u64 = 0x500;

/// Runs a snippet in the sim as `host_exec::run` runs it on the host: `state.fx` loaded
/// by FXRSTOR before it and saved by FXSAVE after it (or at a #DE, #MF or #XM, which
/// end it with `fault` set), with CR0.NE, CR4.OSFXSR and CR4.OSXMMEXCPT on, as Linux
/// runs user code.
pub fn sim_fx_snippet(code: &[u8], state: &State, mem: &mut [u8], bases: &[usize]) -> State {
    use iced_x86::code_asm::*;
    let mut g = guest();
    // GDT: null, 64-bit code; an IDT of 32 gates whose stubs record the vector, save
    // the FPU state and halt.
    let gdt: [u64; 2] = [0, 0x00af_9b00_0000_ffff];
    g.load(
        FP_GDT,
        &gdt.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<_>>(),
    );
    for v in 0..32u64 {
        let stub = FP_STUBS + v * 32;
        let bytes = assemble(64, stub, |a| {
            a.mov(byte_ptr(FAULT), v as u32).unwrap();
            a.fxsave(ptr(FX_OUT)).unwrap();
            a.hlt().unwrap();
        });
        g.load(stub, &bytes);
        let low = (stub & 0xffff) | (8 << 16) | (0x8e00 << 32) | ((stub >> 16) & 0xffff) << 48;
        g.load(FP_IDT + v * 16, &low.to_le_bytes());
        g.load(FP_IDT + v * 16 + 8, &(stub >> 32).to_le_bytes());
    }
    g.load(FAULT, &[0xff]);
    g.load(FX_IN, &state.fx.0);
    g.load(FX_OUT, &state.fx.0);
    let mut text = assemble(64, 0x2000, |a| a.fxrstor(ptr(FX_IN)).unwrap());
    text.extend_from_slice(code);
    text.extend(assemble(64, 0, |a| {
        a.fxsave(ptr(FX_OUT)).unwrap();
        a.hlt().unwrap();
    }));
    g.load(0x2000, &text);
    g.ram.write(DATA_GPA as usize, mem).unwrap();
    g.long_mode(0x2000);
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_GDTR,
        pack_table(FP_GDT, 15),
    );
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_IDTR,
        pack_table(FP_IDT, 32 * 16 - 1),
    );
    g.set(hv_register_name_HV_X64_REGISTER_CR0, 0x8000_0033);
    g.set(
        hv_register_name_HV_X64_REGISTER_CR4,
        (1 << 5) | (1 << 9) | (1 << 10),
    );
    for (i, id) in GPR_IDS.iter().enumerate() {
        if i != 4 {
            let offset = if bases.contains(&i) { DATA_GPA } else { 0 };
            g.set(*id, state.gpr[i].wrapping_add(offset));
        }
    }
    g.set(
        hv_register_name_HV_X64_REGISTER_RFLAGS,
        (state.rflags & host_exec::FLAGS_IN) | 2,
    );
    // A HLT with interrupts off waits in the hypervisor (no intercept, as on MSHV with a
    // local APIC); a run that may not block reports it as Halted.
    assert_eq!(g.run(), hv_core::Exit::Halted, "the snippet ran to its HLT");
    let mut out = *state;
    for (i, id) in GPR_IDS.iter().enumerate() {
        let offset = if bases.contains(&i) { DATA_GPA } else { 0 };
        out.gpr[i] = g.get(*id).wrapping_sub(offset);
    }
    out.gpr[4] = state.gpr[4];
    let mut fault = [0u8];
    g.ram.read(FAULT as usize, &mut fault).unwrap();
    out.fault = (fault[0] != 0xff).then_some(fault[0]);
    // At a fault the handler's RFLAGS are not the snippet's: report them unchanged.
    out.rflags = if out.fault.is_some() {
        state.rflags
    } else {
        g.get(hv_register_name_HV_X64_REGISTER_RFLAGS)
    };
    g.ram.read(FX_OUT as usize, &mut out.fx.0).unwrap();
    g.ram.read(DATA_GPA as usize, mem).unwrap();
    out
}

/// The bytes of an FXSAVE image a comparison looks at: all but FOP, FIP, FCS, FDP and
/// FDS (bytes 6-23), which hold the addresses of the instruction and operand, and
/// differ between the host process and the guest (and whether they are saved at all is
/// the model's: CPUID.(EAX=07H,ECX=0):EBX bits 6 and 13, and on AMD processors without
/// CPUID.80000008H:EBX[2] only while an exception is pending); and MXCSR_MASK (bytes 28-31), which
/// says which MXCSR bits this model supports (SDM vol 1 11.6.6): 0xFFFF on most, 0x2FFFF
/// on AMD's Zen 4 and 5 with misaligned SSE, so a comparison with it fails on some hosts.
/// The sim's own value is held to its CPUID instead (tests/fp_model_fields.rs).
pub fn fx_comparable(fx: &host_exec::FxImage) -> Vec<u8> {
    let mut b = fx.0.to_vec();
    b[6..24].fill(0);
    b[28..32].fill(0);
    b
}

// ---- one case in 64-bit ring 0, ending at a port or at an exception --------------

/// Where [`guest_case`] puts its code and its scratch data.
pub const CASE_CODE: u64 = 0x2000;
pub const CASE_DATA: u64 = 0x6000;
const CASE_GDT: u64 = 0x500;
const CASE_IDT: u64 = 0x3000;
const CASE_STUBS: u64 = 0x4000;

/// What a case did: its result on port 0x80, or the vector it raised.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Result(u64),
    Vector(u8),
}

/// Runs `body` in 64-bit ring 0 with an IDT whose handlers report their vector on port
/// 0x81; the case ends by writing RAX to port 0x80. `setup` adjusts the guest (control
/// registers, say) before it runs.
pub fn guest_case(
    setup: impl FnOnce(&mut Guest),
    body: impl FnOnce(&mut CodeAssembler),
) -> Outcome {
    use iced_x86::code_asm::*;
    let mut g = guest();
    // GDT: null, 64-bit code (0x08), data (0x10).
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    g.load(
        CASE_GDT,
        &gdt.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<_>>(),
    );
    // 32 interrupt gates, each to a stub: mov al, vector; out 0x81, al; hlt.
    for v in 0..32u64 {
        let stub = CASE_STUBS + v * 8;
        g.load(stub, &[0xb0, v as u8, 0xe6, 0x81, 0xf4]);
        let low = (stub & 0xffff) | (8 << 16) | (0x8e00 << 32) | ((stub >> 16) & 0xffff) << 48;
        g.load(CASE_IDT + v * 16, &low.to_le_bytes());
        g.load(CASE_IDT + v * 16 + 8, &(stub >> 32).to_le_bytes());
    }
    let code = assemble(64, CASE_CODE, |a| {
        body(a);
        a.out(0x80, al).unwrap();
        a.hlt().unwrap();
    });
    g.load(CASE_CODE, &code);
    g.long_mode(CASE_CODE);
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_GDTR,
        pack_table(CASE_GDT, 23),
    );
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_IDTR,
        pack_table(CASE_IDT, 32 * 16 - 1),
    );
    setup(&mut g);
    assert_eq!(g.run(), hv_core::Exit::Message);
    assert_eq!(
        g.msg.message_type(),
        hv_core::message::HVMSG_X64_IO_PORT_INTERCEPT,
        "the case ended at a port"
    );
    let io: hv_x64_io_port_intercept_message = g.msg.payload();
    let port = io.port_number;
    match port {
        0x80 => Outcome::Result(io.rax),
        0x81 => Outcome::Vector(io.rax as u8),
        p => panic!("port {p:#x}"),
    }
}
