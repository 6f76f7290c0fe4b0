//! The translator's judges (issue #31): the interpreter is the oracle. Each program
//! runs under both tiers in lock-step, slice by slice with the same instruction
//! budgets, and after every slice the two processors must have ended the same way with
//! the same instruction count, the whole register state (`Cpu`, lazy flags included)
//! and all of guest RAM equal, bit for bit.

mod common;

use hv_core::{HostRegion, UnknownMsr};
use iced_x86::code_asm::*;
use sim_cpu::fault::Exit;
use sim_cpu::phys::PhysMap;
use sim_cpu::{Env, Processor, RunEnd, Segment, Tier};
use std::sync::Arc;

const RAM: usize = 4 << 20;
const CODE: u64 = 0x1000;
/// The exception handlers' code: HLT.
const HANDLER: u64 = 0x3000;
const IDT: u64 = 0x4000;
const GDT: u64 = 0x500;
/// Page tables: PML4, PDPT, PD, and one PT mapping the first 2 MiB in 4 KiB pages.
const PML4: u64 = 0x10_0000;
const PT: u64 = 0x10_3000;
/// The data the random programs address through r15, and its page left not present.
const DATA: u64 = 0x9000;
const ABSENT: u64 = 0xc000;
const STACK: u64 = 0x7_0000;

struct TestEnv;

impl Env for TestEnv {
    fn cpuid(&mut self, _leaf: u32, _subleaf: u32, native: [u32; 4]) -> [u32; 4] {
        native
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

struct Machine {
    cpu: Processor,
    ram: Arc<HostRegion>,
    mem: PhysMap,
}

fn put(ram: &HostRegion, at: u64, v: u64) {
    ram.write(at as usize, &v.to_le_bytes()).unwrap();
}

impl Machine {
    /// 64-bit mode, 4 KiB pages over the first 2 MiB (ABSENT not present), a 2 MiB
    /// page above; every exception vector's gate leads to a HLT.
    fn new(code: &[u8], tier: Tier) -> Machine {
        let ram = Arc::new(HostRegion::new(RAM).unwrap());
        let mem = common::ram_map(&ram);
        ram.write(CODE as usize, code).unwrap();
        put(&ram, PML4, (PML4 + 0x1000) | 7);
        put(&ram, PML4 + 0x1000, (PML4 + 0x2000) | 7);
        put(&ram, PML4 + 0x2000, PT | 7);
        put(&ram, PML4 + 0x2008, 0x20_0000 | 0x87);
        for i in 0..512u64 {
            let pte = if i * 0x1000 == ABSENT {
                0
            } else {
                (i * 0x1000) | 3
            };
            put(&ram, PT + 8 * i, pte);
        }
        put(&ram, GDT + 8, 0x00af_9b00_0000_ffff);
        put(&ram, GDT + 16, 0x00cf_9300_0000_ffff);
        for v in 0..32u64 {
            put(&ram, IDT + 16 * v, HANDLER | (8 << 16) | (0x8e00 << 32));
        }
        ram.write(HANDLER as usize, &[0xf4]).unwrap();
        let mut cpu = Processor::new(true);
        cpu.set_tier(tier);
        cpu.set_hot(1);
        let c = &mut cpu.cpu;
        c.seg[1] = Segment {
            selector: 8,
            base: 0,
            limit: 0xffff_ffff,
            attributes: 0xa09b,
        };
        for s in [0, 2, 3] {
            c.seg[s] = Segment {
                selector: 16,
                base: 0,
                limit: 0xffff_ffff,
                attributes: 0xc093,
            };
        }
        // FS and GS with bases (the random programs' FS/GS operands reach the data).
        c.seg[4].base = 0x10;
        c.seg[5].base = 0x800;
        c.gdtr = sim_cpu::Table {
            base: GDT,
            limit: 23,
        };
        c.idtr = sim_cpu::Table {
            base: IDT,
            limit: 0xfff,
        };
        c.cr3 = PML4;
        c.cr4 = 1 << 5;
        c.efer = (1 << 8) | (1 << 10);
        c.cr0 = 0x8001_0011;
        c.rip = CODE;
        c.gpr[4] = STACK;
        c.gpr[15] = DATA;
        let mut m = Machine { cpu, ram, mem };
        m.cpu.state_changed(&m.mem);
        m
    }

    fn run(&mut self, max: u64) -> RunEnd {
        self.cpu.run(&self.mem, &mut TestEnv, max, &mut || false)
    }

    /// Completes an IN or OUT that exited as a VMM does: RIP past the instruction and,
    /// for an IN, the accumulator's low `size` bytes set to a number made from the port
    /// and `slice`.
    fn complete_port_exit(&mut self, exit: Exit, slice: usize) {
        let Exit::Io {
            port, size, input, ..
        } = exit
        else {
            return;
        };
        let c = &mut self.cpu.cpu;
        if input {
            let mask = u64::MAX >> (64 - 8 * u32::from(size));
            let value = (u64::from(port) << 8 | slice as u64) & mask;
            // IN EAX zeroes RAX's upper half, as a 32-bit register write does.
            let kept = if size == 4 { 0 } else { c.gpr[0] & !mask };
            c.gpr[0] = kept | value;
        }
        c.rip += u64::from(self.cpu.exit_instruction.len);
    }

    fn ram(&self) -> Vec<u8> {
        let mut v = vec![0u8; RAM];
        self.ram.read(0, &mut v).unwrap();
        v
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Where the two tiers first differ after a slice, if they do.
/// The processor's state, bit for bit, but for the parts of the lazy-flags record no
/// reader of RFLAGS can see (`Flags::get`): arithmetic flags in `bits` under a record
/// of a kind other than an eager one or INC/DEC's (which reads CF there), and an eager
/// record's size, result and operands. Compiled code keeps a record in host registers
/// until it is replaced (`jit::emit`), and does not write one that is replaced unseen,
/// where the interpreter leaves, say, an INC's CF in `bits` under a later ADD, or the
/// ADD's operands under a shift's eager flags.
fn seen(cpu: &sim_cpu::Cpu) -> String {
    use sim_cpu::flags::{FlagOp, ARITH};
    let mut cpu = cpu.clone();
    let f = &mut cpu.flags;
    match f.op {
        FlagOp::Eager => (f.size, f.res, f.a, f.b) = (0, 0, 0, 0),
        FlagOp::Inc | FlagOp::Dec => {}
        _ => f.bits &= !ARITH,
    }
    format!("{cpu:?}")
}

fn differ(a: &Machine, b: &Machine) -> Option<String> {
    if a.cpu.instructions != b.cpu.instructions {
        return Some(format!(
            "instructions {} vs {}",
            a.cpu.instructions, b.cpu.instructions
        ));
    }
    let (sa, sb) = (seen(&a.cpu.cpu), seen(&b.cpu.cpu));
    if sa != sb {
        return Some(format!("state\ninterpreter {sa}\ntranslator  {sb}"));
    }
    let (ra, rb) = (a.ram(), b.ram());
    if let Some(i) = (0..RAM).find(|&i| ra[i] != rb[i]) {
        return Some(format!("RAM at {i:#x}: {:#x} vs {:#x}", ra[i], rb[i]));
    }
    None
}

/// Runs `code` under both tiers in slices of the budgets `budgets` draws until HLT (or
/// `limit` instructions), `between` applied to both machines before each slice;
/// panics at the first difference. Returns the translator's machine.
fn lockstep(
    code: &[u8],
    budgets: &mut Rng,
    limit: u64,
    between: impl FnMut(&mut Machine, usize),
) -> Machine {
    lockstep_with(code, budgets, limit, 0, between)
}

/// [`lockstep`] with the translator's code area `area` bytes (0: the default).
fn lockstep_with(
    code: &[u8],
    budgets: &mut Rng,
    limit: u64,
    area: usize,
    mut between: impl FnMut(&mut Machine, usize),
) -> Machine {
    let mut a = Machine::new(code, Tier::Interpreter);
    let mut b = Machine::new(code, Tier::Translator);
    b.cpu.set_code_area_size(area);
    let mut slice = 0;
    while a.cpu.instructions < limit {
        between(&mut a, slice);
        between(&mut b, slice);
        let max = match budgets.below(4) {
            0 => 1 + budgets.below(8),
            1 => 1 + budgets.below(100),
            _ => 1 + budgets.below(5000),
        };
        let (ea, eb) = (a.run(max), b.run(max));
        assert_eq!(ea, eb, "slice {slice}: the runs ended differently");
        if let Some(d) = differ(&a, &b) {
            panic!("slice {slice} (budget {max}, ended {ea:?}): {d}");
        }
        if let RunEnd::Exit(exit @ Exit::Io { string: false, .. }) = ea {
            a.complete_port_exit(exit, slice);
            b.complete_port_exit(exit, slice);
        }
        slice += 1;
        if ea == RunEnd::Exit(Exit::Halt) {
            break;
        }
    }
    b
}

const R64: [AsmRegister64; 11] = [rax, rbx, rdx, rsi, rdi, r8, r9, r10, r11, r12, r13];
const R32: [AsmRegister32; 11] = [eax, ebx, edx, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d];
const R16: [AsmRegister16; 11] = [ax, bx, dx, si, di, r8w, r9w, r10w, r11w, r12w, r13w];
const R8: [AsmRegister8; 11] = [al, bl, dl, sil, dil, r8b, r9b, r10b, r11b, r12b, r13b];

/// A displacement from r15 into the data: mostly inside its first three pages, some
/// across a page boundary, a few into the page that is not present.
fn disp(g: &mut Rng) -> i32 {
    match g.below(20) {
        0 => (ABSENT - DATA) as i32 + g.below(0x1000) as i32,
        1..=3 => 0xff8 + g.below(16) as i32 + 0x1000 * g.below(3) as i32,
        _ => g.below(0x3000 - 8) as i32,
    }
}

/// One random instruction of the families the translator covers (and some it does not:
/// ADC, SBB, shifts, IMUL, PUSH/POP, SETcc, CMOVcc, which run in the interpreter in the
/// middle of compiled blocks). rcx (the loop counter), r14, r15 and rsp stay.
fn instruction(a: &mut CodeAssembler, g: &mut Rng) -> Result<(), IcedError> {
    let (i, j) = (g.below(11) as usize, g.below(11) as usize);
    let d = disp(g);
    let imm = g.next() as i32 >> g.below(32);
    let byte = imm as i8 as i32;
    let k = g.below(10);
    macro_rules! alu {
        ($x:expr, $y:expr) => {
            match k {
                0 => a.add($x, $y),
                1 => a.or($x, $y),
                2 => a.and($x, $y),
                3 => a.sub($x, $y),
                4 => a.xor($x, $y),
                5 => a.cmp($x, $y),
                6 => a.adc($x, $y),
                7 => a.sbb($x, $y),
                _ => a.mov($x, $y),
            }
        };
    }
    macro_rules! alu7 {
        ($x:expr, $y:expr) => {
            match k {
                0 => a.add($x, $y),
                1 => a.or($x, $y),
                2 => a.and($x, $y),
                3 => a.sub($x, $y),
                4 => a.xor($x, $y),
                5 => a.cmp($x, $y),
                6 => a.adc($x, $y),
                _ => a.sbb($x, $y),
            }
        };
    }
    match g.below(28) {
        0 => alu!(R64[i], R64[j]),
        1 => alu!(R32[i], R32[j]),
        2 => alu!(R16[i], R16[j]),
        3 => alu!(R8[i], R8[j]),
        4 if k >= 8 => a.mov(R64[i], imm as i64),
        4 => alu7!(R64[i], imm),
        5 => alu!(R32[i], imm),
        6 => alu!(R8[i], byte),
        7 => alu!(R64[i], qword_ptr(r15 + d)),
        8 => alu!(R32[i], dword_ptr(r15 + d)),
        9 => alu!(qword_ptr(r15 + d), R64[j]),
        10 => alu!(word_ptr(r15 + d), R16[j]),
        11 => alu!(byte_ptr(r15 + r14 * 4 + d), R8[j]),
        12 => alu!(dword_ptr(r15 + d), imm),
        13 => match k % 4 {
            0 => a.test(R64[i], R64[j]),
            1 => a.test(R32[i], imm),
            2 => a.test(dword_ptr(r15 + d), R32[j]),
            _ => a.test(byte_ptr(r15 + d), byte),
        },
        14 => match k % 6 {
            0 => a.inc(R64[i]),
            1 => a.dec(R32[i]),
            2 => a.inc(R8[i]),
            3 => a.dec(word_ptr(r15 + d)),
            4 => a.inc(qword_ptr(r15 + d)),
            _ => a.dec(R16[i]),
        },
        15 => a.lea(R64[i], qword_ptr(r15 + r14 * 8 + d)),
        16 => a.lea(R32[i], dword_ptr(R64[j] + d)),
        17 => match k % 5 {
            0 => a.movzx(R32[i], byte_ptr(r15 + d)),
            1 => a.movsx(R64[i], word_ptr(r15 + d)),
            2 => a.movsxd(R64[i], dword_ptr(r15 + d)),
            3 => a.movzx(R64[i], R16[j]),
            _ => a.movsx(R32[i], R8[j]),
        },
        18 => match k % 3 {
            0 => a.xor(ah, bl),
            1 => a.mov(bh, ah),
            _ => a.add(ah, byte),
        },
        19 => match k % 3 {
            0 => a.shl(R32[i], (imm & 31) as u32),
            1 => a.sar(R64[i], 1u32),
            _ => a.imul_2(R64[i], R64[j]),
        },
        20 => {
            a.push(R64[i])?;
            a.pop(R64[j])
        }
        21 => match k % 10 {
            0 => a.sete(R8[i]),
            1 => a.setl(R8[i]),
            2 => a.setbe(ah),
            3 => a.setp(R8[i]),
            4 => a.seto(R8[i]),
            5 => a.setg(R8[i]),
            6 => a.not(R64[i]),
            7 => a.not(R32[i]),
            8 => a.not(word_ptr(r15 + d)),
            _ => a.not(byte_ptr(r15 + d)),
        },
        22 => a.cmovl(R64[i], R64[j]),
        23 => more(a, g, i, j, d, imm, k),
        24 => more(a, g, i, j, d, imm, k),
        25 => more(a, g, i, j, d, imm, k),
        26 => more(a, g, i, j, d, imm, k),
        _ => a.nop(),
    }
}

/// The families compiled code calls the interpreter's handlers for (LOCKed forms and
/// string instructions among them), FS/GS and 32-bit addresses, PUSH and POP forms, and
/// CALL/RET to a subroutine of one instruction.
fn more(
    a: &mut CodeAssembler,
    g: &mut Rng,
    i: usize,
    j: usize,
    d: i32,
    imm: i32,
    k: u64,
) -> Result<(), IcedError> {
    let n = (imm & 63) as u32;
    match g.below(18) {
        0 => match k % 4 {
            0 => a.add(R64[i], qword_ptr(r15 + d).gs()),
            1 => a.mov(dword_ptr(r15 + d).fs(), R32[j]),
            2 => a.inc(word_ptr(r15 + d).gs()),
            _ => a.cmp(byte_ptr(r15 + d).fs(), imm as i8 as i32),
        },
        1 => match k % 7 {
            0 => a.shl(R64[i], n),
            1 => a.shr(R32[i], n),
            2 => a.sar(R16[i], n),
            3 => a.rol(R8[i], n),
            4 => a.ror(R64[i], cl),
            5 => a.rcl(R32[i], 1u32),
            _ => a.rcr(dword_ptr(r15 + d), n),
        },
        2 => match k % 5 {
            0 => a.shl(dword_ptr(r15 + d), cl),
            1 => a.shr(R64[i], cl),
            2 => a.sar(qword_ptr(r15 + d), 1u32),
            3 => a.shld(R64[i], R64[j], n),
            _ => a.shrd(R32[i], R32[j], cl),
        },
        3 => match k % 6 {
            0 => a.setb(R8[i]),
            1 => a.setle(byte_ptr(r15 + d)),
            2 => a.cmovne(R32[i], R32[j]),
            3 => a.cmovbe(R64[i], qword_ptr(r15 + d)),
            4 => a.cmovs(R16[i], R16[j]),
            _ => a.setp(R8[i]),
        },
        4 => match k % 5 {
            0 => a.not(R64[i]),
            1 => a.neg(R32[i]),
            2 => a.not(byte_ptr(r15 + d)),
            3 => a.bswap(R64[i]),
            _ => a.neg(qword_ptr(r15 + d)),
        },
        5 => match k % 5 {
            0 => a.imul_3(R64[i], R64[j], imm),
            1 => a.imul_2(R32[i], dword_ptr(r15 + d)),
            2 => a.mul(R64[j]),
            3 => a.imul(R32[j]),
            // #DE now and then (a zero divisor, a quotient too large): a handler called
            // from compiled code stops with a fault.
            _ => a.div(R32[j]),
        },
        6 => match k % 6 {
            0 => a.bt(R64[i], n),
            1 => a.bts(R32[i], R32[j]),
            2 => a.bsf(R64[i], R64[j]),
            3 => a.xchg(R64[i], R64[j]),
            4 => a.xadd(R32[i], R32[j]),
            _ => a.cmpxchg(R64[i], R64[j]),
        },
        7 => match k % 7 {
            0 => a.cdqe(),
            1 => a.cqo(),
            2 => a.cwde(),
            3 => a.stc(),
            4 => a.cmc(),
            5 => a.clc(),
            _ => a.lahf(),
        },
        8 => match k % 3 {
            0 => {
                a.push(imm)?;
                a.pop(qword_ptr(r15 + d))
            }
            1 => {
                a.push(qword_ptr(r15 + d))?;
                a.pop(R64[i])
            }
            _ => {
                a.push(R16[i])?;
                a.pop(R16[j])
            }
        },
        9 => {
            // A subroutine of one instruction: blocks that end in CALL and in RET.
            let mut sub = a.create_label();
            let mut over = a.create_label();
            if !k.is_multiple_of(2) {
                a.push(imm)?;
            }
            a.call(sub)?;
            a.jmp(over)?;
            a.set_label(&mut sub)?;
            instruction(a, g)?;
            if k.is_multiple_of(2) {
                a.ret()?;
            } else {
                // RET imm16 releases what the caller pushed before the call.
                a.ret_1(8)?;
            }
            a.set_label(&mut over)?;
            a.nop()
        }
        10 => match k % 4 {
            // 32-bit addresses (67h): the handler forms them.
            0 => a.add(R32[i], dword_ptr(r15d + d)),
            1 => a.mov(qword_ptr(r15d + d), R64[j]),
            2 => a.lea(R32[i], dword_ptr(R32[j] + d)),
            _ => a.movzx(R32[i], byte_ptr(r15d + d)),
        },
        11 => match k % 3 {
            0 => a.adc(R64[i], qword_ptr(r15 + d)),
            1 => a.sbb(dword_ptr(r15 + d), imm),
            _ => a.adc(R8[i], R8[j]),
        },
        12 => {
            a.push(R64[i])?;
            a.add(R64[j], qword_ptr(rsp))?;
            a.pop(R64[i])
        }
        13 => {
            // CALL and JMP through a register and through memory, to a subroutine.
            let mut sub = a.create_label();
            let mut over = a.create_label();
            let mut back = a.create_label();
            a.lea(R64[i], qword_ptr(sub))?;
            match k % 3 {
                0 => a.call(R64[i])?,
                1 => {
                    a.mov(qword_ptr(r15 + 8 * (d & 0xff)), R64[i])?;
                    a.call(qword_ptr(r15 + 8 * (d & 0xff)))?;
                }
                _ => {
                    a.lea(R64[j], qword_ptr(back))?;
                    a.push(R64[j])?;
                    a.jmp(R64[i])?;
                }
            }
            a.set_label(&mut back)?;
            a.jmp(over)?;
            a.set_label(&mut sub)?;
            instruction(a, g)?;
            a.ret()?;
            a.set_label(&mut over)?;
            a.nop()
        }
        14 => match k % 6 {
            0 => {
                a.pushfq()?;
                a.pop(R64[i])
            }
            1 => a.rdtsc(),
            2 => a.popcnt(R64[i], R64[j]),
            3 => a.tzcnt(R32[i], dword_ptr(r15 + d)),
            4 => a.prefetcht0(byte_ptr(r15 + d)),
            // #GP when the operand is not 16-byte aligned.
            _ => a.cmpxchg16b(xmmword_ptr(r15 + d)),
        },
        15 => match k % 7 {
            // LOCKed read-modify-writes, and one LOCK the instruction does not allow
            // (#UD: SDM vol 2 LOCK).
            0 => a.lock().add(qword_ptr(r15 + d), R64[j]),
            1 => a.lock().xadd(dword_ptr(r15 + d), R32[j]),
            2 => a.lock().cmpxchg(qword_ptr(r15 + d), R64[j]),
            3 => a.lock().inc(word_ptr(r15 + d)),
            4 => a.lock().bts(dword_ptr(r15 + d), R32[j]),
            5 => a.lock().or(byte_ptr(r15 + d), imm as i8 as i32),
            _ => a.lock().cmp(qword_ptr(r15 + d), R64[j]),
        },
        16 => {
            // String instructions, REP or not, over the data (a #PF part way where it
            // reaches the absent page); rcx is the loop's.
            a.push(rcx)?;
            // Now and then more elements than a poll interval (1024): the handler's
            // work ends the budget of the blocks compiled code goes on into.
            let count = if k % 6 == 1 { 1500 } else { (imm & 15) as u32 };
            a.mov(ecx, count)?;
            a.lea(rsi, qword_ptr(r15 + d))?;
            a.lea(rdi, qword_ptr(r15 + (d ^ 0x48)))?;
            match k % 6 {
                0 => a.rep().movsb()?,
                1 => a.rep().stosb()?,
                2 => a.lodsw()?,
                3 => a.repe().cmpsb()?,
                4 => a.repne().scasd()?,
                _ => a.movsq()?,
            }
            a.pop(rcx)
        }
        _ => a.nop(),
    }
}

/// A random program: loops of random instructions with forward branches in them,
/// counted down in rcx, then HLT.
fn program(g: &mut Rng) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    let loops = 1 + g.below(3);
    for _ in 0..loops {
        a.mov(ecx, 1 + g.below(40) as u32).unwrap();
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        for _ in 0..1 + g.below(4) {
            for _ in 0..1 + g.below(12) {
                instruction(&mut a, g).unwrap();
            }
            if g.below(2) == 0 {
                // A forward Jcc on whatever the flags are now.
                let mut skip = a.create_label();
                match g.below(6) {
                    0 => a.je(skip),
                    1 => a.jb(skip),
                    2 => a.jl(skip),
                    3 => a.jp(skip),
                    4 => a.jo(skip),
                    _ => a.jbe(skip),
                }
                .unwrap();
                instruction(&mut a, g).unwrap();
                a.set_label(&mut skip).unwrap();
                a.nop().unwrap();
            }
        }
        if g.below(2) == 0 {
            a.dec(ecx).unwrap();
        } else {
            a.sub(ecx, 1).unwrap();
        }
        a.jne(top).unwrap();
    }
    a.hlt().unwrap();
    a.assemble(CODE).unwrap()
}

/// 400 random programs in lock-step, the translator's code area `area` bytes (0: the
/// default): the translator's statistics of each, summed.
fn random_programs(area: usize) -> sim_cpu::TranslatorStats {
    let mut sum = sim_cpu::TranslatorStats::default();
    for seed in 1..=400u64 {
        let mut g = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let code = program(&mut g);
        let s = lockstep_with(&code, &mut g, 200_000, area, |_, _| {})
            .cpu
            .translator_stats();
        sum.blocks += s.blocks;
        sum.flushes += s.flushes;
    }
    sum
}

/// Random programs under both tiers: the same exits, counts, registers and RAM after
/// every slice.
#[test]
fn random_programs_run_the_same_under_both_tiers() {
    let compiled = random_programs(0).blocks;
    assert!(compiled > 400, "the translator compiled {compiled} blocks");
}

/// A code area of one page fills after a few blocks and is flushed, again and again:
/// blocks compile anew after each flush, and no stale code is entered.
#[test]
fn a_small_code_area_is_flushed_and_refilled_exactly() {
    let flushes = random_programs(4096).flushes;
    assert!(flushes > 20, "{flushes} flushes");
}

/// A loop whose first instruction stores into its own code page (never granted for
/// writing in the TLB, so compiled code bails there every pass, as at an MMIO access):
/// its code is passed over for a while after a few idle entries, then entered again;
/// both tiers stay the same throughout.
#[test]
fn a_block_that_always_bails_at_once_runs_the_same() {
    let code = asm(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 1000u32)?;
        a.set_label(&mut top)?;
        a.mov(dword_ptr(CODE + 0x800), eax)?;
        a.add(eax, 3)?;
        a.xor(ebx, eax)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let b = lockstep(&code, &mut Rng(5), 100_000, |_, _| {});
    assert_eq!(b.cpu.cpu.gpr[1], 0);
    assert!(b.cpu.translator_stats().blocks > 0);
}

/// Assembles `f`'s code at CODE.
fn asm(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// Self-modifying code (SDM vol 3 8.1.3): a compiled loop stores into its own page, the
/// immediate of an instruction it then runs; both tiers see the new code at the same
/// instruction.
#[test]
fn self_modifying_code_is_seen_by_both_tiers() {
    // The loop adds the immediate of its first instruction, `add eax, imm32`, to ebx, then
    // increments that immediate (a store into the code's page) and loops.
    let code = asm(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 50u32)?;
        a.set_label(&mut top)?;
        a.add(eax, 0x1000_0000)?;
        a.add(ebx, eax)?;
        a.mov(rdx, 0u64)?; // replaced below by the immediate's address
        a.inc(dword_ptr(rdx))?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    // `add eax, imm32` is 05 imm32: the immediate is at CODE + 5 + 1.
    let imm_at = CODE + 5 + 1;
    let mut code = code;
    let mov = code
        .windows(2)
        .position(|w| w == [0x48, 0xba])
        .expect("mov rdx, imm64");
    code[mov + 2..mov + 10].copy_from_slice(&imm_at.to_le_bytes());
    let b = lockstep(&code, &mut Rng(7), 10_000, |_, _| {});
    assert_eq!(b.cpu.cpu.rip, CODE + code.len() as u64);
    assert!(b.cpu.translator_stats().blocks > 0);
}

/// SETcc reads the flags of the compare before it though an LEA comes between (after
/// which compiled code does not count on the host's flags, so the compare's lazy record
/// must be kept for the SETcc though an ADD replaces it later), and NOT changes no flag:
/// the loop counts the iterations where the compare's values were equal.
#[test]
fn setcc_and_not_read_and_keep_the_flags_the_interpreter_does() {
    let code = asm(|a| {
        let mut top = a.create_label();
        a.xor(ebx, ebx)?;
        a.mov(ecx, 200u32)?;
        a.set_label(&mut top)?;
        a.mov(eax, ecx)?;
        a.and(eax, 3)?;
        a.cmp(eax, 2)?;
        a.lea(rdx, qword_ptr(rdx + 1))?;
        a.not(edx)?;
        a.sete(dl)?;
        a.movzx(edx, dl)?;
        a.add(ebx, edx)?;
        a.not(qword_ptr(r15 + 8))?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let b = lockstep(&code, &mut Rng(19), 10_000, |_, _| {});
    assert_eq!(b.cpu.cpu.gpr[3], 50, "ECX & 3 == 2 in 50 of 200 iterations");
    assert!(b.cpu.translator_stats().blocks > 0);
}

/// The stack of the judges' code at CPL 3, and the TSS's RSP0 (the TSS is at 0): the
/// stack an exception from CPL 3 switches to.
const USER_STACK: u64 = 0x6_8000;
const RSP0: u64 = 0x6_f000;

/// IRETQ to CPL 3 at `user` (selectors 0x1b and 0x23: the GDT entries [`user_mode`]
/// adds), IOPL 0.
fn iretq_to_user(a: &mut CodeAssembler, user: CodeLabel) -> Result<(), IcedError> {
    a.push(0x23)?;
    a.push(USER_STACK as i32)?;
    a.push(2)?;
    a.push(0x1b)?;
    a.lea(rax, ptr(user))?;
    a.push(rax)?;
    a.iretq()
}

/// Makes the code page and the user stack's page user pages, gives the GDT a 64-bit
/// user code and a user data segment, and the TSS (at 0) RSP0.
fn user_mode(m: &mut Machine) {
    put(&m.ram, PT + 8 * (CODE >> 12), CODE | 7);
    put(
        &m.ram,
        PT + 8 * ((USER_STACK - 8) >> 12),
        (USER_STACK - 0x1000) | 7,
    );
    put(&m.ram, GDT + 24, 0x00af_fb00_0000_ffff);
    put(&m.ram, GDT + 32, 0x00cf_f300_0000_ffff);
    m.cpu.cpu.gdtr.limit = 39;
    m.ram.write(4, &RSP0.to_le_bytes()).unwrap();
}

/// Port I/O inside a compiled loop (IN and OUT are handler calls that exit): both
/// tiers exit at the same instruction with the same count and state, the arithmetic
/// record made before an exit is the one the ADC after it reads, and the VMM's
/// completion (RIP past the instruction, the value of an IN) is where both go on.
#[test]
fn port_exits_from_compiled_code_are_the_interpreters() {
    let code = asm(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 300u32)?;
        a.mov(edx, 0x3f8u32)?;
        a.set_label(&mut top)?;
        a.out(0x80, al)?;
        a.add(eax, ecx)?;
        a.in_(al, 0x71)?;
        a.adc(ebx, eax)?;
        a.out(dx, eax)?;
        a.in_(ax, dx)?;
        a.add(dword_ptr(r15), eax)?;
        a.in_(eax, dx)?;
        a.xor(esi, eax)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()
    });
    let b = lockstep(&code, &mut Rng(23), 20_000, |_, _| {});
    assert_eq!(b.cpu.cpu.gpr[1], 0, "every iteration ran");
    assert_eq!(b.cpu.cpu.rip, CODE + code.len() as u64, "at the HLT's end");
    assert!(b.cpu.translator_stats().blocks > 0);
}

/// Port I/O at CPL 3 with IOPL 0 goes by the TSS's I/O permission bitmap (SDM vol 1
/// 19.5.2) under both tiers: an IN of a port it allows exits, an OUT to one it denies
/// is a #GP(0) with the instructions before it in its compiled block retired.
#[test]
fn a_port_access_the_io_permissions_deny_is_the_interpreters_gp() {
    let code = asm(|a| {
        let (mut top, mut user) = (a.create_label(), a.create_label());
        iretq_to_user(a, user)?;
        a.set_label(&mut user)?;
        a.mov(ecx, 5u32)?;
        a.set_label(&mut top)?;
        a.add(ebx, 7)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.in_(al, 0x71)?;
        a.add(ebx, 1)?;
        a.out(0x80, al)?;
        a.hlt()
    });
    let b = lockstep(&code, &mut Rng(29), 10_000, |m, slice| {
        if slice == 0 {
            user_mode(m);
            // The I/O map base (at 0x66) puts the bitmap at 0x68: port 0x80's bit set.
            m.ram.write(0x66, &0x68u16.to_le_bytes()).unwrap();
            m.ram.write(0x68 + 0x80 / 8, &[1]).unwrap();
        }
    });
    let c = &b.cpu.cpu;
    assert_eq!(c.rip, HANDLER + 1, "in the handler");
    assert_eq!(c.gpr[3], 36, "the ADD before the OUT retired");
    assert_eq!(c.seg[1].selector, 8, "the handler at CPL 0");
    let mut frame = [0u8; 16];
    b.ram.read(RSP0 as usize - 48, &mut frame).unwrap();
    let [error, rip] = [0, 8].map(|i| u64::from_le_bytes(frame[i..i + 8].try_into().unwrap()));
    assert_eq!(error, 0, "#GP(0)");
    assert_eq!(
        rip,
        CODE + code.len() as u64 - 3,
        "the frame's RIP is the OUT's"
    );
}

/// Code written by the VMM between runs (through its view of guest RAM): the next run
/// of either tier executes the new bytes.
#[test]
fn code_written_by_the_vmm_between_runs_is_seen_by_both_tiers() {
    let code = asm(|a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.add(eax, 1)?;
        a.add(ebx, eax)?;
        a.jmp(top)
    });
    lockstep(&code, &mut Rng(11), 20_000, |m, slice| {
        // Every few slices the VMM changes `add eax, 1` (83 c0 01) to add another
        // number.
        if slice % 3 == 2 {
            m.ram.write(CODE as usize + 2, &[slice as u8 | 1]).unwrap();
        }
    });
}

/// A #PF at each memory-operand position of a compiled block: the fault leaves the
/// state the interpreter leaves (RIP on the faulting instruction in the frame, CR2,
/// the instructions before it retired, none after).
#[test]
fn a_page_fault_at_each_memory_operand_leaves_the_interpreters_state() {
    let positions: usize = 6;
    for at in 0..positions {
        let code = asm(|a| {
            a.mov(ecx, 3u32)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            for p in 0..positions {
                // The operand at position `at` reaches the absent page on the third
                // pass (r15 moves up by 0x1000 each pass).
                let d = if p == at {
                    (ABSENT - DATA - 0x2000) as i32 + 8 * p as i32
                } else {
                    8 * p as i32
                };
                match p % 3 {
                    0 => a.add(rax, qword_ptr(r15 + d))?,
                    1 => a.mov(dword_ptr(r15 + d), ebx)?,
                    _ => a.inc(word_ptr(r15 + d))?,
                }
                a.add(rbx, rax)?;
            }
            a.add(r15, 0x1000)?;
            a.dec(ecx)?;
            a.jne(top)?;
            a.hlt()
        });
        let b = lockstep(&code, &mut Rng(at as u64 + 1), 1_000, |_, _| {});
        assert_eq!(b.cpu.cpu.cr2, ABSENT + 8 * at as u64, "position {at}");
        assert_eq!(
            b.cpu.cpu.rip,
            HANDLER + 1,
            "position {at}: in the #PF handler"
        );
    }
}

/// A memory operand that becomes non-canonical in a compiled loop (SDM vol 1 3.3.7.1):
/// compiled code checks no canonical form itself (a non-canonical page is never in the
/// TLB: `tlb::Tlb::fill`), so it must miss there and leave the instruction to the
/// interpreter, whose #GP(0) both tiers take at the same instruction.
#[test]
fn a_non_canonical_memory_operand_is_the_interpreters_gp() {
    for write in [false, true] {
        let code = asm(|a| {
            a.mov(ecx, 4u32)?;
            a.mov(r8, 0x8000_0000_0000u64)?;
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            if write {
                a.mov(dword_ptr(r15 + rbx + 8), eax)?;
            } else {
                a.mov(rax, qword_ptr(r15 + rbx))?;
            }
            a.add(rsi, rax)?;
            // rbx: 0, 0, then 2^47 (the first non-canonical address above the lower half).
            a.mov(rbx, rdi)?;
            a.mov(rdi, r8)?;
            a.dec(ecx)?;
            a.jne(top)?;
            a.hlt()
        });
        let b = lockstep(&code, &mut Rng(5), 1_000, |_, _| {});
        assert_eq!(
            b.cpu.cpu.rip,
            HANDLER + 1,
            "write {write}: in the #GP handler"
        );
        assert_eq!(b.cpu.cpu.gpr[1], 2, "write {write}: two passes done");
        assert!(b.cpu.translator_stats().blocks > 0);
    }
}

/// A RET to a non-canonical address in compiled code (SDM vol 2 RET: #GP(0)): compiled
/// code checks the address only where no chain takes it (`jit::emit`'s `leave`), and
/// must leave RSP as it was and the RET to the interpreter, whose #GP both tiers take.
#[test]
fn a_ret_to_a_non_canonical_address_is_the_interpreters_gp() {
    let code = asm(|a| {
        let (mut top, mut f) = (a.create_label(), a.create_label());
        a.mov(ecx, 4u32)?;
        a.xor(edi, edi)?;
        a.xor(r8d, r8d)?;
        a.mov(r10, 0x8000_0000_0000u64)?;
        a.set_label(&mut top)?;
        a.call(f)?;
        // r8: 0, 0, then 2^47, which makes the third return address non-canonical.
        a.mov(r8, rdi)?;
        a.mov(rdi, r10)?;
        a.dec(ecx)?;
        a.jne(top)?;
        a.hlt()?;
        a.set_label(&mut f)?;
        a.pop(rax)?;
        a.xor(rax, r8)?;
        a.push(rax)?;
        a.ret()
    });
    let b = lockstep(&code, &mut Rng(7), 1_000, |_, _| {});
    assert_eq!(b.cpu.cpu.rip, HANDLER + 1, "in the #GP handler");
    assert_eq!(b.cpu.cpu.gpr[1], 2, "two passes done");
    assert!(b.cpu.translator_stats().blocks > 0);
}

/// Code compiled at CPL 0 run again at CPL 3 (SDM vol 3 4.6: a user-mode read of a
/// supervisor page is a #PF): compiled code tests the TLB grants of the privilege it
/// was compiled for, so at the other it is not entered (nor gone on into by a chain or
/// the jump cache) and the interpreter's #PF is taken by both tiers.
#[test]
fn code_compiled_for_the_supervisor_is_not_run_at_cpl3() {
    let code = asm(|a| {
        let (mut top, mut user, mut f) = (a.create_label(), a.create_label(), a.create_label());
        a.mov(ecx, 3u32)?;
        a.set_label(&mut top)?;
        a.call(f)?;
        a.dec(ecx)?;
        a.jne(top)?;
        iretq_to_user(a, user)?;
        a.set_label(&mut user)?;
        a.call(f)?;
        a.hlt()?;
        // DATA is a supervisor page.
        a.set_label(&mut f)?;
        a.mov(rax, qword_ptr(r15))?;
        a.add(rax, 1)?;
        a.ret()
    });
    let b = lockstep(&code, &mut Rng(9), 10_000, |m, slice| {
        if slice == 0 {
            user_mode(m);
        }
    });
    assert_eq!(b.cpu.cpu.rip, HANDLER + 1, "in the #PF handler");
    assert_eq!(b.cpu.cpu.cr2, DATA, "the supervisor page's address");
    assert_eq!(b.cpu.cpu.gpr[1], 0, "three calls at CPL 0");
    assert_eq!(b.cpu.cpu.seg[1].selector, 8, "the handler at CPL 0");
    assert!(b.cpu.translator_stats().blocks > 0);
}

/// The page both remapping judges call into, and the page it is mapped to anew.
const CALLED: u64 = 0x5000;
const REMAPPED: u64 = 0x6000;

/// Calls CALLED 40 times from one call site (its link and chain lead to the old block
/// after the remapping), adding what it returns to EDX, and runs `remap` after the
/// 20th call; checks under both tiers that the first page's code (EAX = 1) ran 21
/// times and the new page's (EAX = 2) 19 times. `setup` writes more memory before the
/// first slice.
fn remapped_code_runs_anew(
    seed: u64,
    remap: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    mut setup: impl FnMut(&HostRegion),
) {
    let code = asm(|a| {
        // EDX holds the processor's signature after reset (SDM vol 3 10.1.2).
        a.xor(edx, edx)?;
        a.mov(ecx, 40u32)?;
        let mut top = a.create_label();
        let mut skip = a.create_label();
        a.set_label(&mut top)?;
        a.call(CALLED)?;
        a.add(edx, eax)?;
        a.cmp(ecx, 20)?;
        a.jne(skip)?;
        remap(a)?;
        a.set_label(&mut skip)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    let b = lockstep(&code, &mut Rng(seed), 10_000, |m, slice| {
        if slice == 0 {
            // mov eax, 1; ret and mov eax, 2; ret.
            m.ram
                .write(CALLED as usize, &[0xb8, 1, 0, 0, 0, 0xc3])
                .unwrap();
            m.ram
                .write(REMAPPED as usize, &[0xb8, 2, 0, 0, 0, 0xc3])
                .unwrap();
            setup(&m.ram);
        }
    });
    assert_eq!(
        b.cpu.cpu.gpr[2],
        21 + 2 * 19,
        "the first page's code 21 times, then the new page's 19 times"
    );
}

/// Code whose page is mapped anew, then invalidated with INVLPG (SDM vol 3 4.10.4.1):
/// both tiers run the new page's code at once, though links and chains lead to the old
/// block; an INVLPG of a page in a region without code keeps them (`CodeCache::
/// may_hold_code`), and changes nothing either tier runs.
#[test]
fn code_remapped_and_invalidated_runs_anew_under_both_tiers() {
    let remap = |a: &mut CodeAssembler| {
        // A page far from any code: its INVLPG leaves the links.
        a.invlpg(byte_ptr(0x4000_0000u64))?;
        a.mov(rax, PT + 8 * (CALLED >> 12))?;
        a.mov(qword_ptr(rax), (REMAPPED | 3) as i32)?;
        a.invlpg(byte_ptr(CALLED))
    };
    remapped_code_runs_anew(13, remap, |_| {});
}

/// Code whose page a MOV CR3 maps anew: the new tables map it to another page with a
/// translation that is not global, which the write invalidates (SDM vol 3 4.10.4.1), so
/// both tiers run the new page's code at once, though links and chains lead to the
/// old block (`Tlb::flush_nonglobal` moves the links' epoch when such code was found).
#[test]
fn code_remapped_by_a_cr3_write_runs_anew_under_both_tiers() {
    // A second hierarchy, as the first but for CALLED, which maps REMAPPED.
    const PML4B: u64 = 0x11_0000;
    let remap = |a: &mut CodeAssembler| {
        a.mov(rax, PML4B)?;
        a.mov(cr3, rax)
    };
    remapped_code_runs_anew(17, remap, |ram| {
        let mut tables = vec![0u8; 0x4000];
        ram.read(PML4 as usize, &mut tables).unwrap();
        ram.write(PML4B as usize, &tables).unwrap();
        put(ram, PML4B, (PML4B + 0x1000) | 7);
        put(ram, PML4B + 0x1000, (PML4B + 0x2000) | 7);
        put(ram, PML4B + 0x2000, (PML4B + 0x3000) | 7);
        put(ram, PML4B + 0x3000 + 8 * (CALLED >> 12), REMAPPED | 3);
    });
}

/// The interpreter benchmark's loops (bench/interpreter.ts) under both tiers.
#[test]
fn the_benchmark_loops_run_the_same_under_both_tiers() {
    for (name, code) in workloads() {
        let b = lockstep(&code, &mut Rng(3), 300_000, |_, _| {});
        assert!(b.cpu.translator_stats().blocks > 0, "{name}");
    }
}

/// bench/interpreter.ts's workloads, assembled at CODE (data at 0x20_0000, in the 2 MiB
/// page).
fn workloads() -> Vec<(&'static str, Vec<u8>)> {
    const BUF: u64 = 0x20_0000;
    vec![
        (
            "ALU loop",
            asm(|a| {
                let mut again = a.create_label();
                let mut l = a.create_label();
                a.set_label(&mut again)?;
                a.mov(ecx, 1_000_000u32)?;
                a.set_label(&mut l)?;
                a.add(eax, 1)?;
                a.xor(ebx, eax)?;
                a.sub(edx, 3)?;
                a.dec(ecx)?;
                a.jnz(l)?;
                a.jmp(again)
            }),
        ),
        (
            "byte checksum",
            asm(|a| {
                let mut again = a.create_label();
                let mut l = a.create_label();
                a.set_label(&mut again)?;
                a.mov(rsi, BUF)?;
                a.mov(ecx, 65536u32)?;
                a.set_label(&mut l)?;
                a.movzx(eax, byte_ptr(rsi))?;
                a.add(edx, eax)?;
                a.mov(byte_ptr(rsi), dl)?;
                a.inc(rsi)?;
                a.dec(ecx)?;
                a.jnz(l)?;
                a.jmp(again)
            }),
        ),
        (
            "qword copy",
            asm(|a| {
                let mut again = a.create_label();
                let mut l = a.create_label();
                a.set_label(&mut again)?;
                a.mov(rsi, BUF)?;
                a.mov(rdi, BUF + 0x10_0000)?;
                a.mov(ecx, 8192u32)?;
                a.set_label(&mut l)?;
                a.mov(rax, qword_ptr(rsi))?;
                a.mov(qword_ptr(rdi), rax)?;
                a.add(rsi, 8)?;
                a.add(rdi, 8)?;
                a.dec(ecx)?;
                a.jnz(l)?;
                a.jmp(again)
            }),
        ),
        (
            "recursive fib",
            asm(|a| {
                let mut again = a.create_label();
                let mut fib = a.create_label();
                let mut small = a.create_label();
                a.set_label(&mut again)?;
                a.mov(edi, 20u32)?;
                a.call(fib)?;
                a.jmp(again)?;
                a.set_label(&mut fib)?;
                a.cmp(edi, 2)?;
                a.jb(small)?;
                a.push(rdi)?;
                a.dec(edi)?;
                a.call(fib)?;
                a.pop(rdi)?;
                a.push(rax)?;
                a.sub(edi, 2)?;
                a.call(fib)?;
                a.pop(rdx)?;
                a.add(eax, edx)?;
                a.ret()?;
                a.set_label(&mut small)?;
                a.mov(eax, edi)?;
                a.ret()
            }),
        ),
    ]
}

/// Speed, interpreter and translator side by side (release build):
/// `cargo test --release -p sim-cpu --test translator -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_interpreter_vs_translator() {
    const SLICE: u64 = 2_000_000;
    for (name, code) in workloads() {
        let mut line = format!("{name:16}");
        for tier in [Tier::Interpreter, Tier::Translator] {
            let mut m = Machine::new(&code, tier);
            m.cpu.set_hot(sim_cpu::HOT);
            m.run(1_000_000);
            let start = std::time::Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_millis() < 1000 {
                assert_eq!(m.run(SLICE), RunEnd::InstructionLimit);
                n += SLICE;
            }
            let mips = n as f64 / start.elapsed().as_secs_f64() / 1e6;
            line += &format!("  {tier:?} {mips:7.0} M/s");
            if tier == Tier::Translator {
                let s = m.cpu.translator_stats();
                line += &format!(
                    "  ({} blocks, {} bytes, {:.1} us compiling)",
                    s.blocks,
                    s.bytes,
                    s.nanos as f64 / 1e3
                );
            }
        }
        println!("{line}");
    }
}
