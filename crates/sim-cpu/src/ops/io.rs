//! Port I/O: IN, OUT, INS, OUTS. The processor checks the I/O privilege (IOPL, then
//! the TSS I/O permission bitmap, SDM vol 1 19.5) and a refused access faults in the
//! guest; an allowed one exits to the hypervisor, which hands it to the VMM.

use crate::decode::{Handler, Io, Op, Rep};
use crate::exec::Exec;
use crate::fault::{Exit, Stop};
use iced_x86::{Instruction, Mnemonic, OpKind};

/// Whether the I/O permission bitmap allows `size` bytes at `port`: every bit for them
/// clear and inside the TSS limit; a 16-bit (or absent) TSS has no bitmap and refuses.
fn bitmap_allows(x: &mut Exec, port: u16, size: usize) -> Result<bool, Stop> {
    let tr = x.cpu.tr;
    // Types 9 and 11: an available or busy 32-bit (or, in long mode, 64-bit) TSS.
    if !tr.present() || !matches!(tr.kind(), 9 | 11) || tr.limit < 0x67 {
        return Ok(false);
    }
    let base = x.read_system(tr.base.wrapping_add(0x66), 2)?;
    let first = base + (port as u64 >> 3);
    let last_bit = port as u64 + size as u64 - 1;
    let last = base + (last_bit >> 3);
    if last > tr.limit as u64 {
        return Ok(false);
    }
    let bytes = x.read_system(
        tr.base.wrapping_add(first),
        if last > first { 2 } else { 1 },
    )?;
    let bits = ((1u64 << size) - 1) << (port & 7);
    Ok(bytes & bits == 0)
}

/// #GP(0) unless the current privilege may access the ports.
fn check(x: &mut Exec, port: u16, size: usize) -> Result<(), Stop> {
    let cpu = &*x.cpu;
    if cpu.protected() && (cpu.v86() || cpu.cpl() > cpu.iopl()) && !bitmap_allows(x, port, size)? {
        return Err(x.gp(0));
    }
    Ok(())
}

fn io(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let form = op.io();
    let port = if form.imm_port {
        op.imm as u16
    } else {
        x.cpu.gpr[2] as u16
    };
    let size = op.size as usize;
    check(x, port, size)?;
    Err(x.exit_with(Exit::Io {
        port,
        size: op.size,
        input: form.input,
        string: form.string,
        rep: op.rep != Rep::None,
    }))
}

pub fn compile(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    let input = matches!(m, M::In | M::Insb | M::Insw | M::Insd);
    let string = !matches!(m, M::In | M::Out);
    op.size = match m {
        M::Insb | M::Outsb => 1,
        M::Insw | M::Outsw => 2,
        M::Insd | M::Outsd => 4,
        // IN AL/AX/EAX, port and OUT port, AL/AX/EAX: the accumulator's width.
        M::In => ins.op_register(0).size() as u8,
        _ => ins.op_register(1).size() as u8,
    };
    let imm = !string && (ins.op_kind(if input { 1 } else { 0 }) == OpKind::Immediate8);
    if imm {
        op.imm = ins.immediate8() as u64;
    }
    op.set_io(Io {
        input,
        string,
        imm_port: imm,
    });
    Some(io)
}
