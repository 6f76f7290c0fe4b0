//! Executes one decoded instruction: dispatch and the integer instruction families.

use crate::access::Ctx;
use crate::alu::{self, mask, sext, ARITH, CF, DF, IF};
use crate::stop::{Stop, DE};
use iced_x86::{Code, Instruction, Mnemonic, OpKind};

/// RFLAGS bits the guest may change with POPF at CPL 0 (IOPL, NT, AC, ID included).
const POPF_MASK: u64 = 0x0025_7fd5;

impl Ctx<'_> {
    /// Executes `ins`. On success RIP points at the next instruction; on a stop the
    /// state is as before `ins` (RIP at `ins`), except after HLT.
    pub fn step(&mut self, ins: &Instruction) -> Result<(), Stop> {
        let next = ins.next_ip() & mask((self.cpu.bitness() / 8) as usize);
        use Mnemonic as M;
        let m = ins.mnemonic();
        match m {
            M::Mov => return self.mov(ins, next),
            M::Add | M::Adc | M::Sub | M::Sbb | M::And | M::Or | M::Xor | M::Cmp | M::Test => {
                self.binary(ins, m)?
            }
            M::Inc | M::Dec | M::Neg | M::Not => self.unary(ins, m)?,
            M::Movzx | M::Movsx | M::Movsxd => {
                let ss = self.op_size(ins, 1);
                let ds = self.op_size(ins, 0);
                let v = self.read_op(ins, 1, ss)?;
                let v = if m == M::Movzx { v } else { sext(v, ss) };
                self.write_op(ins, 0, ds, v & mask(ds))?;
            }
            M::Lea => {
                let ds = self.op_size(ins, 0);
                let ea = self.effective_address(ins);
                self.write_op(ins, 0, ds, ea & mask(ds))?;
            }
            M::Xchg => {
                let s = self.op_size(ins, 0);
                let a = self.read_op(ins, 0, s)?;
                let b = self.read_op(ins, 1, s)?;
                // Memory first: a stop there leaves the register untouched.
                if ins.op_kind(0) == OpKind::Memory {
                    self.write_op(ins, 0, s, b)?;
                    self.write_op(ins, 1, s, a)?;
                } else {
                    self.write_op(ins, 1, s, a)?;
                    self.write_op(ins, 0, s, b)?;
                }
            }
            M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => {
                self.shift(ins, m)?
            }
            M::Mul | M::Imul | M::Div | M::Idiv => self.muldiv(ins, m)?,
            M::Push => {
                let s = self.stack_op_size(ins);
                let v = self.read_op(ins, 0, s)?;
                self.push(v & mask(s), s)?;
            }
            M::Pop => {
                let s = self.stack_op_size(ins);
                if ins.op_kind(0) == OpKind::Register && ins.op_register(0).is_segment_register() {
                    let v = self.peek(s, 0)?;
                    self.load_segment(ins.op_register(0), v as u16)?;
                    self.pop(s)?;
                } else {
                    let v = self.peek(s, 0)?;
                    let saved = self.cpu.gpr[4];
                    self.pop(s)?;
                    // POP [rsp+x] uses the incremented RSP; restore it if the store stops.
                    if let Err(e) = self.write_op(ins, 0, s, v) {
                        self.cpu.gpr[4] = saved;
                        return Err(e);
                    }
                }
            }
            M::Pushf | M::Pushfd | M::Pushfq => {
                let s = self.stack_op_size(ins);
                self.push(self.cpu.rflags & 0x00fc_ffff, s)?;
            }
            M::Popf | M::Popfd | M::Popfq => {
                let s = self.stack_op_size(ins);
                let v = self.pop(s)?;
                let keep = if s == 2 { !0xffffu64 } else { !POPF_MASK };
                self.cpu.rflags = ((self.cpu.rflags & keep) | (v & POPF_MASK & mask(s))) | 2;
            }
            M::Call => return self.call(ins, next),
            M::Ret => {
                let s = self
                    .stack_op_size(ins)
                    .min((self.cpu.bitness() / 8) as usize)
                    .max(2);
                let s = match ins.code() {
                    Code::Retnw | Code::Retnw_imm16 => 2,
                    Code::Retnd | Code::Retnd_imm16 => 4,
                    Code::Retnq | Code::Retnq_imm16 => 8,
                    _ => s,
                };
                let target = self.pop(s)?;
                let extra = if ins.op_count() > 0 {
                    ins.immediate16() as u64
                } else {
                    0
                };
                let sp = self.cpu.gpr[4].wrapping_add(extra);
                let m = self.stack_mask();
                self.cpu.gpr[4] = (self.cpu.gpr[4] & !m) | (sp & m);
                self.jump(target, s);
                return Ok(());
            }
            M::Jmp => return self.jmp(ins),
            M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz | M::Jrcxz => {
                let cnt_mask = count_mask(ins);
                let rcx = self.cpu.gpr[1];
                let taken = if ins.is_jcx_short() {
                    rcx & cnt_mask == 0
                } else {
                    let c = rcx.wrapping_sub(1) & cnt_mask;
                    self.cpu.gpr[1] = (rcx & !cnt_mask) | c;
                    let zf = self.cpu.rflags & alu::ZF != 0;
                    c != 0
                        && match m {
                            M::Loope => zf,
                            M::Loopne => !zf,
                            _ => true,
                        }
                };
                self.cpu.rip = if taken {
                    ins.near_branch_target()
                } else {
                    next
                };
                return Ok(());
            }
            _ if ins.is_jcc_short_or_near() => {
                let cc = ins.condition_code() as u8 - 1;
                self.cpu.rip = if alu::condition(cc, self.cpu.rflags) {
                    ins.near_branch_target()
                } else {
                    next
                };
                return Ok(());
            }
            M::Seta
            | M::Setae
            | M::Setb
            | M::Setbe
            | M::Sete
            | M::Setg
            | M::Setge
            | M::Setl
            | M::Setle
            | M::Setne
            | M::Setno
            | M::Setnp
            | M::Setns
            | M::Seto
            | M::Setp
            | M::Sets => {
                let cc = ins.condition_code() as u8 - 1;
                self.write_op(ins, 0, 1, alu::condition(cc, self.cpu.rflags) as u64)?;
            }
            M::Cmova
            | M::Cmovae
            | M::Cmovb
            | M::Cmovbe
            | M::Cmove
            | M::Cmovg
            | M::Cmovge
            | M::Cmovl
            | M::Cmovle
            | M::Cmovne
            | M::Cmovno
            | M::Cmovnp
            | M::Cmovns
            | M::Cmovo
            | M::Cmovp
            | M::Cmovs => {
                let s = self.op_size(ins, 0);
                let v = self.read_op(ins, 1, s)?;
                let cc = ins.condition_code() as u8 - 1;
                if alu::condition(cc, self.cpu.rflags) {
                    self.write_op(ins, 0, s, v)?;
                } else if s == 4 {
                    // A 32-bit CMOV zero-extends its destination even when not taken.
                    let r = self.reg(ins.op_register(0));
                    self.write_op(ins, 0, s, r)?;
                }
            }
            M::Bt | M::Bts | M::Btr | M::Btc => self.bit_test(ins, m)?,
            M::Bswap => {
                let s = self.op_size(ins, 0);
                let v = self.read_op(ins, 0, s)?;
                let r = if s == 8 {
                    v.swap_bytes()
                } else {
                    (v as u32).swap_bytes() as u64
                };
                self.write_op(ins, 0, s, r)?;
            }
            M::Xadd => {
                let s = self.op_size(ins, 0);
                let a = self.read_op(ins, 0, s)?;
                let b = self.read_op(ins, 1, s)?;
                let (r, f) = alu::add(s, a, b, false);
                self.write_op(ins, 0, s, r)?;
                self.write_op(ins, 1, s, a)?;
                self.cpu.rflags = alu::merge(self.cpu.rflags, f, ARITH);
            }
            M::Cmpxchg => {
                let s = self.op_size(ins, 0);
                let dst = self.read_op(ins, 0, s)?;
                let acc = self.cpu.gpr[0] & mask(s);
                let (_, f) = alu::sub(s, acc, dst, false);
                if acc == dst {
                    let src = self.read_op(ins, 1, s)?;
                    self.write_op(ins, 0, s, src)?;
                } else {
                    self.write_op(ins, 0, s, dst)?;
                    let r = match s {
                        1 => iced_x86::Register::AL,
                        2 => iced_x86::Register::AX,
                        4 => iced_x86::Register::EAX,
                        _ => iced_x86::Register::RAX,
                    };
                    self.set_reg(r, dst);
                }
                self.cpu.rflags = alu::merge(self.cpu.rflags, f, ARITH);
            }
            M::Cbw | M::Cwde | M::Cdqe => {
                let s = match m {
                    M::Cbw => 1,
                    M::Cwde => 2,
                    _ => 4,
                };
                let v = sext(self.cpu.gpr[0] & mask(s), s) & mask(s * 2);
                let r = match s {
                    1 => iced_x86::Register::AX,
                    2 => iced_x86::Register::EAX,
                    _ => iced_x86::Register::RAX,
                };
                self.set_reg(r, v);
            }
            M::Cwd | M::Cdq | M::Cqo => {
                let s = match m {
                    M::Cwd => 2,
                    M::Cdq => 4,
                    _ => 8,
                };
                let neg = self.cpu.gpr[0] & alu::sign_bit(s) != 0;
                let r = match s {
                    2 => iced_x86::Register::DX,
                    4 => iced_x86::Register::EDX,
                    _ => iced_x86::Register::RDX,
                };
                self.set_reg(r, if neg { u64::MAX } else { 0 });
            }
            M::Lahf => {
                let ah = (self.cpu.rflags & 0xd5) | 2;
                self.set_reg(iced_x86::Register::AH, ah);
            }
            M::Sahf => {
                let ah = (self.cpu.gpr[0] >> 8) & 0xd5;
                self.cpu.rflags = (self.cpu.rflags & !0xd5) | ah | 2;
            }
            M::Leave => {
                let s = self.stack_op_size(ins);
                let m = self.stack_mask();
                let saved = self.cpu.gpr[4];
                self.cpu.gpr[4] = (saved & !m) | (self.cpu.gpr[5] & m);
                match self.pop(s) {
                    Ok(v) => {
                        let r = match s {
                            2 => iced_x86::Register::BP,
                            4 => iced_x86::Register::EBP,
                            _ => iced_x86::Register::RBP,
                        };
                        self.set_reg(r, v);
                    }
                    Err(e) => {
                        self.cpu.gpr[4] = saved;
                        return Err(e);
                    }
                }
            }
            M::Clc => self.cpu.rflags &= !CF,
            M::Stc => self.cpu.rflags |= CF,
            M::Cmc => self.cpu.rflags ^= CF,
            M::Cld => self.cpu.rflags &= !DF,
            M::Std => self.cpu.rflags |= DF,
            M::Cli => self.cpu.rflags &= !IF,
            M::Sti => self.cpu.rflags |= IF,
            M::Nop
            | M::Pause
            | M::Lfence
            | M::Mfence
            | M::Sfence
            | M::Wbinvd
            | M::Invd
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Endbr64
            | M::Endbr32 => {}
            M::Ud2 | M::INVALID => return Err(Stop::ud()),
            M::Movsb
            | M::Movsw
            | M::Movsd
            | M::Movsq
            | M::Stosb
            | M::Stosw
            | M::Stosd
            | M::Stosq
            | M::Lodsb
            | M::Lodsw
            | M::Lodsd
            | M::Lodsq
            | M::Cmpsb
            | M::Cmpsw
            | M::Cmpsd
            | M::Cmpsq
            | M::Scasb
            | M::Scasw
            | M::Scasd
            | M::Scasq
                if ins.is_string_instruction() =>
            {
                return self.string_op(ins, m, next)
            }
            M::In | M::Out | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
                return self.io(ins, m)
            }
            M::Hlt => {
                self.cpu.rip = next;
                self.cpu.halted = true;
                return Err(Stop::Halt);
            }
            _ => return self.system(ins, m, next),
        }
        self.cpu.rip = next;
        Ok(())
    }

    fn binary(&mut self, ins: &Instruction, m: Mnemonic) -> Result<(), Stop> {
        let s = self.op_size(ins, 0);
        let a = self.read_op(ins, 0, s)?;
        let b = self.read_op(ins, 1, s)?;
        let cf = self.cpu.rflags & CF != 0;
        let (r, f) = match m {
            Mnemonic::Add => alu::add(s, a, b, false),
            Mnemonic::Adc => alu::add(s, a, b, cf),
            Mnemonic::Sub | Mnemonic::Cmp => alu::sub(s, a, b, false),
            Mnemonic::Sbb => alu::sub(s, a, b, cf),
            Mnemonic::And | Mnemonic::Test => alu::logic(s, a & b),
            Mnemonic::Or => alu::logic(s, a | b),
            _ => alu::logic(s, a ^ b),
        };
        if m != Mnemonic::Cmp && m != Mnemonic::Test {
            self.write_op(ins, 0, s, r)?;
        }
        self.cpu.rflags = alu::merge(self.cpu.rflags, f, ARITH);
        Ok(())
    }

    fn unary(&mut self, ins: &Instruction, m: Mnemonic) -> Result<(), Stop> {
        let s = self.op_size(ins, 0);
        let a = self.read_op(ins, 0, s)?;
        let (r, f, which) = match m {
            Mnemonic::Inc => {
                let (r, f) = alu::inc(s, a);
                (r, f, ARITH & !CF)
            }
            Mnemonic::Dec => {
                let (r, f) = alu::dec(s, a);
                (r, f, ARITH & !CF)
            }
            Mnemonic::Neg => {
                let (r, f) = alu::neg(s, a);
                (r, f, ARITH)
            }
            _ => (!a & mask(s), 0, 0),
        };
        self.write_op(ins, 0, s, r)?;
        self.cpu.rflags = alu::merge(self.cpu.rflags, f, which);
        Ok(())
    }

    fn shift(&mut self, ins: &Instruction, m: Mnemonic) -> Result<(), Stop> {
        let s = self.op_size(ins, 0);
        let a = self.read_op(ins, 0, s)?;
        let count = if ins.op_count() > 1 {
            self.read_op(ins, 1, 1)?
        } else {
            1
        };
        let kind = match m {
            Mnemonic::Rol => 0,
            Mnemonic::Ror => 1,
            Mnemonic::Rcl => 2,
            Mnemonic::Rcr => 3,
            Mnemonic::Shl | Mnemonic::Sal => 4,
            Mnemonic::Shr => 5,
            _ => 7,
        };
        if let Some((r, f, which)) = alu::shift(s, kind, a, count, self.cpu.rflags) {
            self.write_op(ins, 0, s, r)?;
            self.cpu.rflags = alu::merge(self.cpu.rflags, f, which);
        } else if s == 4 && ins.op_kind(0) == OpKind::Register {
            // A zero count still writes a 32-bit register, clearing its upper half.
            self.write_op(ins, 0, s, a)?;
        }
        Ok(())
    }

    fn muldiv(&mut self, ins: &Instruction, m: Mnemonic) -> Result<(), Stop> {
        use iced_x86::Register as R;
        if m == Mnemonic::Imul && ins.op_count() > 1 {
            let s = self.op_size(ins, 0);
            let (a, b) = if ins.op_count() == 3 {
                (self.read_op(ins, 1, s)?, ins.immediate(2))
            } else {
                (self.read_op(ins, 0, s)?, self.read_op(ins, 1, s)?)
            };
            let (lo, _, f) = alu::imul(s, a, b);
            self.write_op(ins, 0, s, lo)?;
            self.cpu.rflags = alu::merge(self.cpu.rflags, f, ARITH);
            return Ok(());
        }
        let s = self.op_size(ins, 0);
        let src = self.read_op(ins, 0, s)?;
        let (acc_lo, acc_hi) = match s {
            1 => (R::AL, R::AH),
            2 => (R::AX, R::DX),
            4 => (R::EAX, R::EDX),
            _ => (R::RAX, R::RDX),
        };
        let lo = self.reg(acc_lo);
        match m {
            Mnemonic::Mul | Mnemonic::Imul => {
                let (l, h, f) = if m == Mnemonic::Mul {
                    alu::mul(s, lo, src)
                } else {
                    alu::imul(s, lo, src)
                };
                if s == 1 {
                    self.set_reg(R::AX, l | (h << 8));
                } else {
                    self.set_reg(acc_lo, l);
                    self.set_reg(acc_hi, h);
                }
                self.cpu.rflags = alu::merge(self.cpu.rflags, f, ARITH);
            }
            _ => {
                let hi = if s == 1 {
                    self.reg(R::AH)
                } else {
                    self.reg(acc_hi)
                };
                let lo = if s == 1 { self.reg(R::AL) } else { lo };
                let res = if m == Mnemonic::Div {
                    alu::div(s, hi, lo, src)
                } else {
                    alu::idiv(s, hi, lo, src)
                };
                let (q, r) = res.ok_or(Stop::Exception {
                    vector: DE,
                    error_code: None,
                })?;
                if s == 1 {
                    self.set_reg(R::AX, q | (r << 8));
                } else {
                    self.set_reg(acc_lo, q);
                    self.set_reg(acc_hi, r);
                }
            }
        }
        Ok(())
    }

    fn bit_test(&mut self, ins: &Instruction, m: Mnemonic) -> Result<(), Stop> {
        let s = self.op_size(ins, 0);
        let bits = (s * 8) as u64;
        let offset = self.read_op(ins, 1, self.op_size(ins, 1))?;
        let (v, bit, mem_off) =
            if ins.op_kind(0) == OpKind::Memory && ins.op_kind(1) == OpKind::Register {
                // A register bit offset addresses memory beyond the operand (signed).
                let off = sext(offset, s) as i64;
                let delta = off.div_euclid(bits as i64) * s as i64;
                let ea = self.effective_address(ins).wrapping_add(delta as u64);
                let seg = Self::seg_index(ins.memory_segment());
                (
                    self.read_mem(seg, ea, s)?,
                    off.rem_euclid(bits as i64) as u64,
                    Some((seg, ea)),
                )
            } else {
                (self.read_op(ins, 0, s)?, offset % bits, None)
            };
        let old = (v >> bit) & 1;
        let nv = match m {
            Mnemonic::Bts => v | (1 << bit),
            Mnemonic::Btr => v & !(1 << bit),
            Mnemonic::Btc => v ^ (1 << bit),
            _ => v,
        };
        if m != Mnemonic::Bt {
            match mem_off {
                Some((seg, ea)) => self.write_mem(seg, ea, s, nv)?,
                None => self.write_op(ins, 0, s, nv)?,
            }
        }
        self.cpu.rflags = alu::merge(self.cpu.rflags, old, CF);
        Ok(())
    }

    fn call(&mut self, ins: &Instruction, next: u64) -> Result<(), Stop> {
        match ins.op_kind(0) {
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let (sel, off) = if ins.op_kind(0) == OpKind::FarBranch16 {
                    (ins.far_branch_selector(), ins.far_branch16() as u64)
                } else {
                    (ins.far_branch_selector(), ins.far_branch32() as u64)
                };
                let s = if ins.op_kind(0) == OpKind::FarBranch16 {
                    2
                } else {
                    4
                };
                self.far_call(sel, off, s, next)
            }
            OpKind::Memory if ins.memory_size().size() >= 4 && is_far(ins) => {
                let (sel, off, s) = self.read_far_pointer(ins)?;
                self.far_call(sel, off, s, next)
            }
            _ => {
                let s = self.stack_op_size(ins);
                let target = match ins.op_kind(0) {
                    OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                        ins.near_branch_target()
                    }
                    _ => self.read_op(ins, 0, s)?,
                };
                self.push(next, s)?;
                self.jump(target, s);
                Ok(())
            }
        }
    }

    fn jmp(&mut self, ins: &Instruction) -> Result<(), Stop> {
        match ins.op_kind(0) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                self.cpu.rip = ins.near_branch_target();
                Ok(())
            }
            OpKind::FarBranch16 => {
                self.far_jump(ins.far_branch_selector(), ins.far_branch16() as u64)
            }
            OpKind::FarBranch32 => {
                self.far_jump(ins.far_branch_selector(), ins.far_branch32() as u64)
            }
            OpKind::Memory if is_far(ins) => {
                let (sel, off, _) = self.read_far_pointer(ins)?;
                self.far_jump(sel, off)
            }
            _ => {
                let s = self.op_size(ins, 0);
                let target = self.read_op(ins, 0, s)?;
                self.jump(target, s);
                Ok(())
            }
        }
    }

    /// Reads an m16:16 / m16:32 / m16:64 far pointer operand: (selector, offset, offset size).
    fn read_far_pointer(&mut self, ins: &Instruction) -> Result<(u16, u64, usize), Stop> {
        let total = ins.memory_size().size();
        let off_size = total - 2;
        let ea = self.effective_address(ins);
        let seg = Self::seg_index(ins.memory_segment());
        let off = self.read_mem(seg, ea, off_size)?;
        let sel = self.read_mem(seg, ea.wrapping_add(off_size as u64), 2)? as u16;
        Ok((sel, off, off_size))
    }
}

fn is_far(ins: &Instruction) -> bool {
    matches!(
        ins.code(),
        Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664
    )
}

/// The counter register width of LOOPcc/JrCXZ (CX, ECX or RCX), from the address size.
fn count_mask(ins: &Instruction) -> u64 {
    use Code::*;
    match ins.code() {
        Loopne_rel8_16_CX | Loopne_rel8_32_CX | Loope_rel8_16_CX | Loope_rel8_32_CX
        | Loop_rel8_16_CX | Loop_rel8_32_CX | Jcxz_rel8_16 | Jcxz_rel8_32 => 0xffff,
        Loopne_rel8_16_ECX | Loopne_rel8_32_ECX | Loopne_rel8_64_ECX | Loope_rel8_16_ECX
        | Loope_rel8_32_ECX | Loope_rel8_64_ECX | Loop_rel8_16_ECX | Loop_rel8_32_ECX
        | Loop_rel8_64_ECX | Jecxz_rel8_16 | Jecxz_rel8_32 | Jecxz_rel8_64 => 0xffff_ffff,
        _ => u64::MAX,
    }
}
