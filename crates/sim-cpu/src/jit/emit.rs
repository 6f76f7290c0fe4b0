//! Host code for a block's covered prefix, emitted with dynasmrt (x86-64, System V).
//!
//! The compiled function keeps no guest state in host registers across instructions:
//! each instruction loads its operands from [`Cpu`], computes, and stores its results
//! and its lazy flags ([`Flags`]: the same record the interpreter's handlers make), so
//! that whenever it returns, the processor's state is the interpreter's after the same
//! instructions. Registers: r12 the `Cpu`, r13 the TLB's entries, r14 the [`Frame`];
//! rax, rcx, rdx, r8-r11 scratch.
//!
//! Memory operands go through the interpreter's TLB ([`crate::tlb`]) with its lookup
//! written out: the canonical check (SDM vol 1 3.3.7.1), the access within one page,
//! the entry's tag and its grant for the access and privilege. Anything else (a miss, a
//! page crossing, a non-canonical address, a page holding code or a watched byte, MMIO:
//! none of those ever has a grant in the TLB) *bails*: the function returns the index
//! of the instruction before it has changed anything, and the interpreter executes it,
//! with its faults, exits and slow paths.

// dynasm's dynamic registers (`Rq(h)`) expand to `h.into()`, a conversion to the same
// type when `h` is already a `u8`.
#![allow(clippy::useless_conversion)]

use super::cover::{Alu, Kind, Loc, Src};
use super::{Frame, TranslateError};
use crate::decode::Op;
use crate::exec::NONE;
use crate::flags::{FlagOp, Flags};
use crate::state::Cpu;
use crate::tlb::layout;
use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};
use std::mem::offset_of;

/// Code is assembled into a vector, then copied into the code area (`super::area`):
/// it is position-independent (branches within it are relative, and the one call out,
/// to the flags routine, goes through a register), so it is assembled at 0.
type Assembler = VecAssembler<X64Relocation>;

fn assembler() -> Assembler {
    VecAssembler::new(0)
}

fn finish(a: Assembler) -> Result<Vec<u8>, TranslateError> {
    a.finalize()
        .map_err(|e| TranslateError::Assemble(e.to_string()))
}

/// The compiled function: returns how many of the block's instructions completed in
/// its last pass (`Frame::loops` counts the passes before it).
pub type Entry = unsafe extern "sysv64" fn(*mut Frame) -> u32;

const GPR: i32 = offset_of!(Cpu, gpr) as i32;
const RSP: i32 = GPR + 4 * 8;
const SEG: i32 = offset_of!(Cpu, seg) as i32;
const SEG_BASE: i32 = offset_of!(crate::state::Segment, base) as i32;
const SEG_SIZE: i32 = std::mem::size_of::<crate::state::Segment>() as i32;
const RIP: i32 = offset_of!(Cpu, rip) as i32;
const FLAGS: i32 = offset_of!(Cpu, flags) as i32;
const F_BITS: i32 = FLAGS + offset_of!(Flags, bits) as i32;
const F_OP: i32 = FLAGS + offset_of!(Flags, op) as i32;
const F_SIZE: i32 = FLAGS + offset_of!(Flags, size) as i32;
const F_RES: i32 = FLAGS + offset_of!(Flags, res) as i32;
const F_A: i32 = FLAGS + offset_of!(Flags, a) as i32;
const F_B: i32 = FLAGS + offset_of!(Flags, b) as i32;
const FR_CPU: i32 = offset_of!(Frame, cpu) as i32;
const FR_TLB: i32 = offset_of!(Frame, tlb) as i32;
const FR_EVENTS: i32 = offset_of!(Frame, events) as i32;
const FR_BUDGET: i32 = offset_of!(Frame, budget) as i32;
const FR_LOOPS: i32 = offset_of!(Frame, loops) as i32;
const FR_NEED_READ: i32 = offset_of!(Frame, need_read) as i32;
const FR_NEED_WRITE: i32 = offset_of!(Frame, need_write) as i32;

// Host register numbers (dynasm's dynamic registers).
const RAX: u8 = 0;
const R9: u8 = 9;
const R10: u8 = 10;
const R11: u8 = 11;

/// The arithmetic flags RFLAGS can be loaded with from an eager record: CF, PF, AF,
/// ZF, SF, OF (nothing that changes how host code runs: TF, IF, DF, AC stay clear).
const ARITH_MASK: i32 = crate::flags::ARITH as i32;

/// The offset in `Cpu` of guest register `r` accessed at `s` bytes.
fn reg_at(r: u8, s: u8) -> i32 {
    if s == 1 && r >= crate::exec::AH {
        GPR + (r - crate::exec::AH) as i32 * 8 + 1
    } else {
        GPR + (r & 15) as i32 * 8
    }
}

/// Host register `h` = guest register `r`, `s` bytes zero-extended (as `Exec::reg`).
fn load_reg(a: &mut Assembler, h: u8, r: u8, s: u8) {
    let at = reg_at(r, s);
    match s {
        1 => dynasm!(a ; .arch x64 ; movzx Rd(h), BYTE [r12 + at]),
        2 => dynasm!(a ; .arch x64 ; movzx Rd(h), WORD [r12 + at]),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), DWORD [r12 + at]),
        _ => dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [r12 + at]),
    }
}

/// Guest register `r` = host register `h` at `s` bytes, as x86 writes registers (SDM vol
/// 1 3.4.1.1: 8- and 16-bit writes keep the rest, 32-bit writes clear bits 63:32).
fn store_reg(a: &mut Assembler, h: u8, r: u8, s: u8) {
    let at = reg_at(r, s);
    match s {
        1 => dynasm!(a ; .arch x64 ; mov BYTE [r12 + at], Rb(h)),
        2 => dynasm!(a ; .arch x64 ; mov WORD [r12 + at], Rw(h)),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), Rd(h) ; mov QWORD [r12 + at], Rq(h)),
        _ => dynasm!(a ; .arch x64 ; mov QWORD [r12 + at], Rq(h)),
    }
}

/// Host register `h` = `s` bytes at host address rax, zero-extended.
fn load_mem(a: &mut Assembler, h: u8, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; movzx Rd(h), BYTE [rax]),
        2 => dynasm!(a ; .arch x64 ; movzx Rd(h), WORD [rax]),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), DWORD [rax]),
        _ => dynasm!(a ; .arch x64 ; mov Rq(h), QWORD [rax]),
    }
}

/// `s` bytes at host address rax = host register `h`.
fn store_mem(a: &mut Assembler, h: u8, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; mov BYTE [rax], Rb(h)),
        2 => dynasm!(a ; .arch x64 ; mov WORD [rax], Rw(h)),
        4 => dynasm!(a ; .arch x64 ; mov DWORD [rax], Rd(h)),
        _ => dynasm!(a ; .arch x64 ; mov QWORD [rax], Rq(h)),
    }
}

/// Host register `h` masked to `s` bytes.
fn mask(a: &mut Assembler, h: u8, s: u8) {
    match s {
        1 => dynasm!(a ; .arch x64 ; movzx Rd(h), Rb(h)),
        2 => dynasm!(a ; .arch x64 ; movzx Rd(h), Rw(h)),
        4 => dynasm!(a ; .arch x64 ; mov Rd(h), Rd(h)),
        _ => {}
    }
}

/// rax = the effective address of `op`'s memory operand (64-bit: `decode::ea` with
/// an address size of 8, which masks nothing).
fn effective_address(a: &mut Assembler, op: &Op) {
    let disp = op.disp as i64;
    dynasm!(a ; .arch x64 ; mov rax, QWORD disp);
    if op.base != NONE {
        let at = GPR + op.base as i32 * 8;
        dynasm!(a ; .arch x64 ; add rax, QWORD [r12 + at]);
    }
    if op.index != NONE {
        let at = GPR + op.index as i32 * 8;
        let scale = op.scale as i8;
        dynasm!(a ; .arch x64 ; mov rcx, QWORD [r12 + at] ; shl rcx, scale ; add rax, rcx);
    }
}

/// rax (a linear address) = its host address for an `s`-byte access needing the grant
/// at `need` in the frame, through the TLB as `Tlb::lookup` does; else to `bail`.
fn translate(a: &mut Assembler, s: u8, need: i32, bail: DynamicLabel) {
    let last = 0x1000 - s as i32;
    let slots = (layout::SLOTS - 1) as i32;
    let shift = layout::SHIFT as i8;
    let (tag, allow, host) = (layout::TAG, layout::ALLOW, layout::HOST);
    let bits = (64 - crate::paging::LINEAR_BITS) as i8;
    dynasm!(a ; .arch x64
        // Canonical (the whole access then is: it stays in one page).
        ; mov rcx, rax ; shl rcx, bits ; sar rcx, bits ; cmp rcx, rax ; jne =>bail
        // Within one page.
        ; mov ecx, eax ; and ecx, 0xfff ; cmp ecx, last ; ja =>bail
        // The slot: page ^ page >> 10 ^ page >> 20, masked (`tlb::slot`).
        ; mov rdx, rax ; shr rdx, 12
        ; mov rcx, rdx ; shr rcx, 10 ; xor rcx, rdx ; mov r8, rdx ; shr r8, 20 ; xor rcx, r8
        ; and ecx, slots ; shl rcx, shift ; add rcx, r13
        // The tag is the page + 1, and the entry must grant the access.
        ; add rdx, 1 ; cmp QWORD [rcx + tag], rdx ; jne =>bail
        ; mov dl, BYTE [r14 + need] ; test BYTE [rcx + allow], dl ; jz =>bail
        ; and eax, 0xfff ; add rax, QWORD [rcx + host]
    );
}

/// Records lazy flags as `Flags::record` does: op, size, result in host register
/// `res`, operands in host registers (`Ok`) or constants (`Err`).
fn record(a: &mut Assembler, f: FlagOp, s: u8, res: u8, x: Result<u8, i32>, y: Result<u8, i32>) {
    let f = f as u8 as i8;
    let s = s as i8;
    dynasm!(a ; .arch x64
        ; mov BYTE [r12 + F_OP], f ; mov BYTE [r12 + F_SIZE], s ; mov QWORD [r12 + F_RES], Rq(res)
    );
    match x {
        Ok(h) => dynasm!(a ; .arch x64 ; mov QWORD [r12 + F_A], Rq(h)),
        Err(v) => dynasm!(a ; .arch x64 ; mov QWORD [r12 + F_A], v),
    }
    match y {
        Ok(h) => dynasm!(a ; .arch x64 ; mov QWORD [r12 + F_B], Rq(h)),
        Err(v) => dynasm!(a ; .arch x64 ; mov QWORD [r12 + F_B], v),
    }
}

/// Host RFLAGS' CF, PF, ZF, SF and OF = the guest's, from a lazy record of kind `f` and
/// size `s`: the host redoes the recorded operation at its size, which sets its flags
/// exactly as the guest's instruction did (SDM vol 1 appendix A; the lazy definitions
/// in `crate::flags` are those). Clobbers rax, rcx.
fn native_flags(a: &mut Assembler, f: FlagOp, s: u8) {
    macro_rules! sized {
        ($($pre:tt)*) => {
            match s {
                1 => dynasm!(a ; .arch x64 ; $($pre)* al, cl),
                2 => dynasm!(a ; .arch x64 ; $($pre)* ax, cx),
                4 => dynasm!(a ; .arch x64 ; $($pre)* eax, ecx),
                _ => dynasm!(a ; .arch x64 ; $($pre)* rax, rcx),
            }
        };
    }
    match f {
        FlagOp::Eager => dynasm!(a ; .arch x64
            ; mov rax, QWORD [r12 + F_BITS] ; and eax, ARITH_MASK ; push rax ; popfq
        ),
        FlagOp::Logic => {
            dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + F_RES] ; mov rcx, rax);
            sized!(test);
        }
        FlagOp::Inc | FlagOp::Dec => {
            // CF from `bits`, the rest from redoing the increment or decrement.
            dynasm!(a ; .arch x64 ; mov rcx, QWORD [r12 + F_BITS] ; mov rax, QWORD [r12 + F_A] ; bt ecx, 0);
            match (f == FlagOp::Dec, s) {
                (false, 1) => dynasm!(a ; .arch x64 ; inc al),
                (false, 2) => dynasm!(a ; .arch x64 ; inc ax),
                (false, 4) => dynasm!(a ; .arch x64 ; inc eax),
                (false, _) => dynasm!(a ; .arch x64 ; inc rax),
                (true, 1) => dynasm!(a ; .arch x64 ; dec al),
                (true, 2) => dynasm!(a ; .arch x64 ; dec ax),
                (true, 4) => dynasm!(a ; .arch x64 ; dec eax),
                (true, _) => dynasm!(a ; .arch x64 ; dec rax),
            }
        }
        _ => {
            dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + F_A] ; mov rcx, QWORD [r12 + F_B]);
            match f {
                FlagOp::Add => sized!(add),
                FlagOp::Adc => sized!(stc ; adc),
                FlagOp::Sub => sized!(cmp),
                _ => sized!(stc ; sbb),
            }
        }
    }
}

const KINDS: [FlagOp; 8] = [
    FlagOp::Eager,
    FlagOp::Add,
    FlagOp::Adc,
    FlagOp::Sub,
    FlagOp::Sbb,
    FlagOp::Logic,
    FlagOp::Inc,
    FlagOp::Dec,
];

/// The routine compiled code calls for [`native_flags`] when the record's kind is not
/// known when compiling (made by an earlier block): dispatches on the record's kind and
/// size. Clobbers rax, rcx, rdx. Its entry is its first byte.
pub fn flags_routine() -> Result<Vec<u8>, TranslateError> {
    let mut a = assembler();
    dynasm!(a ; .arch x64 ; movzx edx, BYTE [r12 + F_OP] ; shl edx, 8 ; mov dl, BYTE [r12 + F_SIZE]);
    for f in KINDS {
        for s in [1u8, 2, 4, 8] {
            let next = a.new_dynamic_label();
            let key = ((f as i32) << 8) | s as i32;
            dynasm!(a ; .arch x64 ; cmp edx, key ; jne =>next);
            native_flags(&mut a, f, s);
            dynasm!(a ; .arch x64 ; ret ; =>next);
        }
    }
    // Not reached: every record has one of the kinds and sizes above.
    dynasm!(a ; .arch x64 ; ud2);
    finish(a)
}

/// Host flags = guest flags, `known` the record's kind and size when an earlier
/// instruction of this block made it, else through the routine at `routine`.
fn guest_flags(a: &mut Assembler, known: Option<(FlagOp, u8)>, routine: usize) {
    match known {
        Some((f, s)) => native_flags(a, f, s),
        None => {
            let at = routine as i64;
            dynasm!(a ; .arch x64 ; mov rax, QWORD at ; call rax);
        }
    }
}

/// A jump to `l` when host condition `cc` (the Jcc encoding's low nibble, which the
/// guest's shares: SDM vol 2 appendix B) holds.
fn jump_if(a: &mut Assembler, cc: u8, l: DynamicLabel) {
    match cc & 15 {
        0 => dynasm!(a ; .arch x64 ; jo =>l),
        1 => dynasm!(a ; .arch x64 ; jno =>l),
        2 => dynasm!(a ; .arch x64 ; jb =>l),
        3 => dynasm!(a ; .arch x64 ; jae =>l),
        4 => dynasm!(a ; .arch x64 ; je =>l),
        5 => dynasm!(a ; .arch x64 ; jne =>l),
        6 => dynasm!(a ; .arch x64 ; jbe =>l),
        7 => dynasm!(a ; .arch x64 ; ja =>l),
        8 => dynasm!(a ; .arch x64 ; js =>l),
        9 => dynasm!(a ; .arch x64 ; jns =>l),
        10 => dynasm!(a ; .arch x64 ; jp =>l),
        11 => dynasm!(a ; .arch x64 ; jnp =>l),
        12 => dynasm!(a ; .arch x64 ; jl =>l),
        13 => dynasm!(a ; .arch x64 ; jge =>l),
        14 => dynasm!(a ; .arch x64 ; jle =>l),
        _ => dynasm!(a ; .arch x64 ; jg =>l),
    }
}

/// State the emitter carries from one instruction to the next.
struct Emitter<'a> {
    a: Assembler,
    /// Per instruction: where its bail returns its index.
    bails: Vec<DynamicLabel>,
    exit: DynamicLabel,
    top: DynamicLabel,
    /// The lazy record's kind and size, once an instruction of the block made it.
    known: Option<(FlagOp, u8)>,
    routine: usize,
    /// The address of `super::call_handler`.
    handler: usize,
    ops: &'a [Op],
    block_ip: u64,
}

impl Emitter<'_> {
    /// rax = the host address of `op`'s memory operand for an `s`-byte access.
    fn memory(&mut self, i: usize, s: u8, write: bool) {
        let op = &self.ops[i];
        effective_address(&mut self.a, op);
        let seg = op.seg as usize;
        if seg == crate::state::FS || seg == crate::state::GS {
            // The linear address is the base plus the offset (SDM vol 1 3.3.7.1);
            // `Exec::linear`'s canonical check is the one `translate` makes.
            let at = SEG + seg as i32 * SEG_SIZE + SEG_BASE;
            dynasm!(self.a ; .arch x64 ; add rax, QWORD [r12 + at]);
        }
        let need = if write { FR_NEED_WRITE } else { FR_NEED_READ };
        translate(&mut self.a, s, need, self.bails[i]);
    }

    /// Host register `h` = source `src` (memory already at rax).
    fn source(&mut self, h: u8, src: Src, s: u8) {
        match src {
            Src::Loc(Loc::Reg(r)) => load_reg(&mut self.a, h, r, s),
            Src::Loc(Loc::Mem) => load_mem(&mut self.a, h, s),
            Src::Imm(v) => {
                let v = v as i64;
                dynasm!(self.a ; .arch x64 ; mov Rq(h), QWORD v);
            }
        }
    }

    /// The block's end: RIP = `rip`, `n` instructions done.
    fn finish(&mut self, rip: u64) {
        let to = rip as i64;
        let n = self.ops.len() as i32;
        let exit = self.exit;
        dynasm!(self.a ; .arch x64 ; mov rax, QWORD to ; mov QWORD [r12 + RIP], rax ; mov eax, n ; jmp =>exit);
    }

    /// A branch taken to `target`: back to the top while it is this block and the
    /// frame's budget allows another pass with no event pending (the run loop's checks
    /// between linked blocks, `run::Processor::run`), else the block's end.
    fn taken(&mut self, target: u64) {
        if target == self.block_ip {
            let n = self.ops.len() as i32;
            let (out, top) = (self.a.new_dynamic_label(), self.top);
            dynasm!(self.a ; .arch x64
                ; mov rax, QWORD [r14 + FR_BUDGET] ; cmp rax, n ; jb =>out
                ; mov rcx, QWORD [r14 + FR_EVENTS] ; cmp DWORD [rcx], 0 ; jne =>out
                ; sub rax, n ; mov QWORD [r14 + FR_BUDGET], rax ; add QWORD [r14 + FR_LOOPS], 1
                ; jmp =>top
                ; =>out
            );
        }
        self.finish(target);
    }

    fn emit(&mut self, i: usize, kind: Kind) {
        let op = &self.ops[i];
        match kind {
            Kind::Nop => {}
            Kind::Mov { s, dst, src } => {
                if dst == Loc::Mem {
                    self.memory(i, s, true);
                } else if src == Src::Loc(Loc::Mem) {
                    self.memory(i, s, false);
                }
                self.source(R9, src, s);
                match dst {
                    Loc::Reg(r) => store_reg(&mut self.a, R9, r, s),
                    Loc::Mem => store_mem(&mut self.a, R9, s),
                }
            }
            Kind::Alu { k, s, dst, src } => {
                if dst == Loc::Mem {
                    // Read-modify-write: translated for writing before anything is read
                    // (`ops::rmw_begin`); CMP and TEST only read.
                    self.memory(i, s, k.writes());
                } else if src == Src::Loc(Loc::Mem) {
                    self.memory(i, s, false);
                }
                self.source(R10, Src::Loc(dst), s);
                self.source(R11, src, s);
                let a = &mut self.a;
                dynasm!(a ; .arch x64 ; mov r9, r10);
                let f = match k {
                    Alu::Add => {
                        dynasm!(a ; .arch x64 ; add r9, r11);
                        FlagOp::Add
                    }
                    Alu::Sub | Alu::Cmp => {
                        dynasm!(a ; .arch x64 ; sub r9, r11);
                        FlagOp::Sub
                    }
                    Alu::And | Alu::Test => {
                        dynasm!(a ; .arch x64 ; and r9, r11);
                        FlagOp::Logic
                    }
                    Alu::Or => {
                        dynasm!(a ; .arch x64 ; or r9, r11);
                        FlagOp::Logic
                    }
                    Alu::Xor => {
                        dynasm!(a ; .arch x64 ; xor r9, r11);
                        FlagOp::Logic
                    }
                };
                mask(a, R9, s);
                if k.writes() {
                    match dst {
                        Loc::Reg(r) => store_reg(a, R9, r, s),
                        Loc::Mem => store_mem(a, R9, s),
                    }
                }
                // Logic records no operands (`ops::arith::alu`).
                if f == FlagOp::Logic {
                    record(a, f, s, R9, Err(0), Err(0));
                } else {
                    record(a, f, s, R9, Ok(R10), Ok(R11));
                }
                self.known = Some((f, s));
            }
            Kind::IncDec { dec, s, dst } => {
                if dst == Loc::Mem {
                    self.memory(i, s, true);
                }
                // CF stays (SDM vol 2 INC, DEC): it moves into `bits` first, as
                // `Flags::record_keep_cf` does. The host flags are computed with the
                // memory operand's address kept in r11.
                dynasm!(self.a ; .arch x64 ; mov r11, rax);
                guest_flags(&mut self.a, self.known, self.routine);
                let a = &mut self.a;
                dynasm!(a ; .arch x64
                    ; setc r10b ; movzx r10d, r10b
                    ; mov rcx, QWORD [r12 + F_BITS] ; and rcx, -2 ; or rcx, r10 ; mov QWORD [r12 + F_BITS], rcx
                    ; mov rax, r11
                );
                self.source(R10, Src::Loc(dst), s);
                let a = &mut self.a;
                dynasm!(a ; .arch x64 ; mov r9, r10);
                if dec {
                    dynasm!(a ; .arch x64 ; sub r9, 1);
                } else {
                    dynasm!(a ; .arch x64 ; add r9, 1);
                }
                mask(a, R9, s);
                match dst {
                    Loc::Reg(r) => store_reg(a, R9, r, s),
                    Loc::Mem => store_mem(a, R9, s),
                }
                let f = if dec { FlagOp::Dec } else { FlagOp::Inc };
                record(a, f, s, R9, Ok(R10), Err(1));
                self.known = Some((f, s));
            }
            Kind::Lea { s, r } => {
                effective_address(&mut self.a, op);
                store_reg(&mut self.a, RAX, r, s);
            }
            Kind::Extend {
                from,
                signed,
                to,
                r,
                src,
            } => {
                if src == Loc::Mem {
                    self.memory(i, from, false);
                }
                self.source(R9, Src::Loc(src), from);
                let a = &mut self.a;
                if signed {
                    match from {
                        1 => dynasm!(a ; .arch x64 ; movsx r9, r9b),
                        2 => dynasm!(a ; .arch x64 ; movsx r9, r9w),
                        4 => dynasm!(a ; .arch x64 ; movsxd r9, r9d),
                        _ => {}
                    }
                }
                mask(a, R9, to);
                store_reg(a, R9, r, to);
            }
            Kind::Jcc { cc, target } => {
                guest_flags(&mut self.a, self.known, self.routine);
                let yes = self.a.new_dynamic_label();
                jump_if(&mut self.a, cc, yes);
                self.finish(op.next);
                dynasm!(self.a ; .arch x64 ; =>yes);
                self.taken(target);
            }
            Kind::Jmp { target } => self.taken(target),
            Kind::Push { r } => {
                // The value first: PUSH RSP pushes RSP as it was (SDM vol 2 PUSH).
                load_reg(&mut self.a, R9, r, 8);
                self.push(i);
            }
            Kind::Pop { r } => {
                let a = &mut self.a;
                dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + RSP] ; lea r10, [rax + 8]);
                translate(a, 8, FR_NEED_READ, self.bails[i]);
                // RSP moves first, then the register is written: POP RSP loads the value
                // popped (SDM vol 2 POP), as `pop64` and the handler do.
                dynasm!(a ; .arch x64 ; mov r9, QWORD [rax] ; mov QWORD [r12 + RSP], r10);
                store_reg(a, R9, r, 8);
            }
            Kind::Near { target } => {
                let next = op.next as i64;
                dynasm!(self.a ; .arch x64 ; mov r9, QWORD next);
                self.push(i);
                self.taken(target);
            }
            Kind::Ret { release } => {
                let release = release as i32;
                let bits = (64 - crate::paging::LINEAR_BITS) as i8;
                let a = &mut self.a;
                dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + RSP] ; lea r10, [rax + 8]);
                translate(a, 8, FR_NEED_READ, self.bails[i]);
                // A non-canonical return address is #GP(0) with the stack as it was
                // (`ret64`): the interpreter raises it.
                let n = self.ops.len() as i32;
                let exit = self.exit;
                dynasm!(a ; .arch x64
                    ; mov r9, QWORD [rax]
                    ; mov rcx, r9 ; shl rcx, bits ; sar rcx, bits ; cmp rcx, r9 ; jne =>self.bails[i]
                    ; add r10, release
                    ; mov QWORD [r12 + RSP], r10 ; mov QWORD [r12 + RIP], r9
                    ; mov eax, n ; jmp =>exit
                );
            }
            Kind::Call => self.call(i),
            Kind::Branch => {
                // The handler set RIP: the block ends here.
                self.call(i);
                let (n, exit) = (self.ops.len() as i32, self.exit);
                dynasm!(self.a ; .arch x64 ; mov eax, n ; jmp =>exit);
            }
        }
    }

    /// Calls the interpreter's handler for instruction `i` (`super::call_handler`);
    /// back to the run loop if it faulted, exited or ended the block.
    fn call(&mut self, i: usize) {
        let (handler, ii) = (self.handler as i64, i as i32);
        dynasm!(self.a ; .arch x64
            ; mov rdi, r14 ; mov esi, ii ; mov rax, QWORD handler ; call rax
            ; test eax, eax ; jnz =>self.bails[i]
        );
        // The handler may have made any lazy record.
        self.known = None;
    }

    /// Pushes host register r9 (8 bytes): memory is written before RSP changes, as
    /// `push64` does.
    fn push(&mut self, i: usize) {
        let a = &mut self.a;
        dynasm!(a ; .arch x64 ; mov rax, QWORD [r12 + RSP] ; sub rax, 8 ; mov r10, rax);
        translate(a, 8, FR_NEED_WRITE, self.bails[i]);
        dynasm!(a ; .arch x64 ; mov QWORD [rax], r9 ; mov QWORD [r12 + RSP], r10);
    }
}

/// Compiles `kinds` (the covered prefix of `ops`, a block starting at `block_ip`): its
/// code, entered at its first byte. `routine` is the address of [`flags_routine`]'s
/// code.
pub fn compile(
    ops: &[Op],
    kinds: &[Kind],
    block_ip: u64,
    routine: usize,
    handler: usize,
) -> Result<Vec<u8>, TranslateError> {
    let mut a = assembler();
    let exit = a.new_dynamic_label();
    let top = a.new_dynamic_label();
    let bails = (0..kinds.len()).map(|_| a.new_dynamic_label()).collect();
    dynasm!(a ; .arch x64
        ; push r12 ; push r13 ; push r14
        ; mov r14, rdi ; mov r12, QWORD [rdi + FR_CPU] ; mov r13, QWORD [rdi + FR_TLB]
        ; =>top
    );
    let mut e = Emitter {
        a,
        bails,
        exit,
        top,
        known: None,
        routine,
        handler,
        ops,
        block_ip,
    };
    for (i, &k) in kinds.iter().enumerate() {
        e.emit(i, k);
    }
    let covered = kinds.len();
    let ends = matches!(
        kinds.last(),
        Some(
            Kind::Jcc { .. }
                | Kind::Jmp { .. }
                | Kind::Near { .. }
                | Kind::Ret { .. }
                | Kind::Branch
        )
    );
    if !ends {
        // The prefix stops before an instruction the interpreter runs (or at the end of a
        // block without a branch): RIP is set by the interpreter for the next one.
        if covered == ops.len() {
            let to = ops[covered - 1].next as i64;
            let n = covered as i32;
            dynasm!(e.a ; .arch x64 ; mov rax, QWORD to ; mov QWORD [r12 + RIP], rax ; mov eax, n ; jmp =>exit);
        } else {
            let n = covered as i32;
            dynasm!(e.a ; .arch x64 ; mov eax, n ; jmp =>exit);
        }
    }
    for (i, l) in e.bails.clone().into_iter().enumerate() {
        let i = i as i32;
        dynasm!(e.a ; .arch x64 ; =>l ; mov eax, i ; jmp =>exit);
    }
    dynasm!(e.a ; .arch x64 ; =>exit ; pop r14 ; pop r13 ; pop r12 ; ret);
    finish(e.a)
}
