//! A port I/O exit loop written in Rust: the baseline `npm run bench` measures the
//! TypeScript exit handlers against. It completes IN and OUT as the TypeScript PIO
//! handler does with no device claiming the port (OUT dropped, IN reads all ones, RIP
//! past the instruction), through the register page when it is valid and by one
//! set-register hypercall otherwise.

use crate::backend::{Exit, RunLimits, VcpuBackend};
use crate::error::{HvError, Result};
use crate::message::{ExitMessage, HVMSG_X64_IO_PORT_INTERCEPT};
use crate::page::{DIRTY, DIRTY_GENERAL, DIRTY_IP, GP_REGISTERS, RIP};
use mshv_bindings::*;

/// How a [`run_pio_loop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PioLoopEnd {
    /// Port exits completed, the stopping one included.
    pub exits: u64,
    /// The message type of the last exit (an OUT to the stop port is a port exit).
    pub message_type: u32,
}

/// RAX after an IN of `size` bytes that read all ones: a 1- or 2-byte IN merges into AL
/// or AX, a 4-byte IN writes EAX, which zero-extends into RAX (Intel SDM vol. 1,
/// 3.4.1.1: 32-bit operands write the whole 64-bit register).
pub fn in_all_ones(rax: u64, size: u8) -> u64 {
    match size {
        4 => 0xffff_ffff,
        _ => {
            let mask = (1u64 << (size as u32 * 8)) - 1;
            (rax & !mask) | mask
        }
    }
}

/// Runs `vcpu`, completing port exits in Rust, until an OUT to `stop_port`, any other
/// exit, a cancel or `max_exits` exits. String I/O is refused: the baseline is IN/OUT.
pub fn run_pio_loop(
    vcpu: &mut dyn VcpuBackend,
    msg: &mut ExitMessage,
    stop_port: u16,
    max_exits: u64,
) -> Result<PioLoopEnd> {
    let limits = RunLimits::default();
    let mut exits = 0;
    while exits < max_exits {
        if vcpu.run(msg, &limits)? != Exit::Message {
            break;
        }
        let message_type = msg.message_type();
        if message_type != HVMSG_X64_IO_PORT_INTERCEPT {
            return Ok(PioLoopEnd {
                exits,
                message_type,
            });
        }
        exits += 1;
        let m: hv_x64_io_port_intercept_message = msg.payload();
        // SAFETY: reading bitfields of a plain u8 union view.
        let (size, string) = unsafe {
            let a = m.access_info.__bindgen_anon_1;
            (a.access_size(), a.string_op() != 0)
        };
        if string {
            return Err(HvError::Unsupported(format!(
                "the Rust PIO loop does not do string I/O (port {:#x})",
                { m.port_number }
            )));
        }
        let write = m.header.intercept_access_type == HV_INTERCEPT_ACCESS_WRITE as u8;
        if write && m.port_number == stop_port {
            return Ok(PioLoopEnd {
                exits,
                message_type,
            });
        }
        let rip = m.header.rip + m.header.instruction_length() as u64;
        let rax = if write {
            m.rax
        } else {
            in_all_ones(m.rax, size)
        };
        match vcpu.register_page().filter(|p| p.is_valid()) {
            Some(p) => {
                p.write_u64(RIP, rip);
                let mut dirty = DIRTY_IP;
                if !write {
                    p.write_u64(GP_REGISTERS, rax);
                    dirty |= DIRTY_GENERAL;
                }
                p.write_u32(DIRTY, p.dirty() | dirty);
            }
            None => vcpu.set_registers(
                &[
                    hv_register_name_HV_X64_REGISTER_RIP,
                    hv_register_name_HV_X64_REGISTER_RAX,
                ],
                &[[rip, 0], [rax, 0]],
            )?,
        }
    }
    Ok(PioLoopEnd {
        exits,
        message_type: msg.message_type(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_4_byte_in_zero_extends_and_narrower_ones_merge() {
        let rax = 0x1122_3344_5566_7788;
        assert_eq!(super::in_all_ones(rax, 4), 0xffff_ffff);
        assert_eq!(super::in_all_ones(rax, 2), 0x1122_3344_5566_ffff);
        assert_eq!(super::in_all_ones(rax, 1), 0x1122_3344_5566_77ff);
    }
}
