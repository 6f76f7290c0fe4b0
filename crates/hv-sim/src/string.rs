//! String instructions (MOVS, STOS, LODS, CMPS, SCAS, with REP) and port I/O.

use crate::access::{string_addr_mask, Ctx};
use crate::alu::{self, mask, ARITH, DF};
use crate::cpu::ES;
use crate::stop::Stop;
use iced_x86::{Instruction, Mnemonic, OpKind};

/// Iterations of a REP string instruction done in one step; the instruction is then
/// re-executed, so a huge count neither blocks cancellation nor the budget (the
/// iterations also count as work between the run loop's checks).
const REP_CHUNK: u64 = 1024;

impl Ctx<'_> {
    pub(crate) fn string_op(
        &mut self,
        ins: &Instruction,
        m: Mnemonic,
        next: u64,
    ) -> Result<(), Stop> {
        use Mnemonic as M;
        let size = match m {
            M::Movsb | M::Stosb | M::Lodsb | M::Cmpsb | M::Scasb => 1,
            M::Movsw | M::Stosw | M::Lodsw | M::Cmpsw | M::Scasw => 2,
            M::Movsd | M::Stosd | M::Lodsd | M::Cmpsd | M::Scasd => 4,
            _ => 8,
        };
        let am = string_addr_mask(ins);
        let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
        let cond = matches!(
            m,
            M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq | M::Scasb | M::Scasw | M::Scasd | M::Scasq
        );
        let step = if self.cpu.rflags & DF != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let src_seg = Self::seg_index(ins.memory_segment());
        let acc = self.cpu.gpr[0] & mask(size);
        let mut done = 0;
        loop {
            if rep && self.cpu.gpr[1] & am == 0 {
                break;
            }
            if rep && done == REP_CHUNK {
                // Resume the same instruction next step.
                self.iterations += done;
                return Ok(());
            }
            let rsi = self.cpu.gpr[6] & am;
            let rdi = self.cpu.gpr[7] & am;
            let mut flags = None;
            match m {
                M::Movsb | M::Movsw | M::Movsd | M::Movsq => {
                    let v = self.read_mem(src_seg, rsi, size)?;
                    self.write_mem(ES, rdi, size, v)?;
                    self.advance(6, step, am);
                    self.advance(7, step, am);
                }
                M::Stosb | M::Stosw | M::Stosd | M::Stosq => {
                    self.write_mem(ES, rdi, size, acc)?;
                    self.advance(7, step, am);
                }
                M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => {
                    let v = self.read_mem(src_seg, rsi, size)?;
                    self.set_reg(acc_reg(size), v);
                    self.advance(6, step, am);
                }
                M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => {
                    let a = self.read_mem(src_seg, rsi, size)?;
                    let b = self.read_mem(ES, rdi, size)?;
                    flags = Some(alu::sub(size, a, b, false).1);
                    self.advance(6, step, am);
                    self.advance(7, step, am);
                }
                _ => {
                    let b = self.read_mem(ES, rdi, size)?;
                    flags = Some(alu::sub(size, acc, b, false).1);
                    self.advance(7, step, am);
                }
            }
            if let Some(f) = flags {
                self.cpu.rflags = alu::merge(self.cpu.rflags, f, ARITH);
            }
            if !rep {
                break;
            }
            let c = self.cpu.gpr[1].wrapping_sub(1) & am;
            self.cpu.gpr[1] = (self.cpu.gpr[1] & !am) | c;
            done += 1;
            if cond {
                let zf = self.cpu.rflags & alu::ZF != 0;
                if ins.has_repe_prefix() && !zf || ins.has_repne_prefix() && zf {
                    break;
                }
            }
        }
        self.iterations += done;
        self.cpu.rip = next;
        Ok(())
    }

    fn advance(&mut self, reg: usize, step: u64, am: u64) {
        let v = self.cpu.gpr[reg].wrapping_add(step) & am;
        self.cpu.gpr[reg] = (self.cpu.gpr[reg] & !am) | v;
    }

    /// IN/OUT/INS/OUTS always exit to the VMM, with RIP at the instruction.
    pub(crate) fn io(&mut self, ins: &Instruction, m: Mnemonic) -> Result<(), Stop> {
        use Mnemonic as M;
        let input = matches!(m, M::In | M::Insb | M::Insw | M::Insd);
        let string = !matches!(m, M::In | M::Out);
        let (port_op, data_op) = if input { (1, 0) } else { (0, 1) };
        let size = match m {
            M::Insb | M::Outsb => 1,
            M::Insw | M::Outsw => 2,
            M::Insd | M::Outsd => 4,
            _ => self.op_size(ins, data_op),
        };
        let port = match ins.op_kind(port_op) {
            OpKind::Register => self.cpu.gpr[2] as u16,
            _ if string => self.cpu.gpr[2] as u16,
            _ => ins.immediate(port_op) as u16,
        };
        Err(Stop::Io {
            port,
            size: size as u8,
            input,
            string,
            rep: string && (ins.has_rep_prefix() || ins.has_repne_prefix()),
        })
    }
}

fn acc_reg(size: usize) -> iced_x86::Register {
    use iced_x86::Register as R;
    match size {
        1 => R::AL,
        2 => R::AX,
        4 => R::EAX,
        _ => R::RAX,
    }
}
