//! Builds the `hv_message` an intercept produces, from the binding structs themselves.

use hv_core::message::*;
use hv_core::ExitMessage;
use mshv_bindings::*;
use sim_cpu::paging::Access;
use sim_cpu::state::{CR0_PE, CS, DS, ES};
use sim_cpu::{Cpu, Exit, ExitInstruction, Segment};

pub fn segment(s: &Segment) -> hv_x64_segment_register {
    let mut r = hv_x64_segment_register {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        ..Default::default()
    };
    r.__bindgen_anon_1.attributes = s.attributes;
    r
}

fn header(
    cpu: &Cpu,
    cr8: u64,
    index: u32,
    ins_len: u8,
    access: u32,
) -> hv_x64_intercept_message_header {
    let mut h = hv_x64_intercept_message_header {
        vp_index: index,
        intercept_access_type: access as u8,
        cs_segment: segment(&cpu.seg[CS]),
        rip: cpu.rip,
        rflags: cpu.rflags(),
        ..Default::default()
    };
    h.set_instruction_length(ins_len & 0xf);
    h.set_cr8((cr8 & 0xf) as u8);
    // SAFETY: writing bitfields of a plain u16 union view.
    unsafe {
        let es = &mut h.execution_state.__bindgen_anon_1;
        es.set_cpl(cpu.cpl() as u16);
        es.set_cr0_pe((cpu.cr0 & CR0_PE) as u16);
        es.set_cr0_am(((cpu.cr0 >> 18) & 1) as u16);
        es.set_efer_lma(cpu.long_mode_active() as u16);
    }
    h
}

fn access_code(a: Access) -> u32 {
    match a {
        Access::Read => HV_INTERCEPT_ACCESS_READ,
        Access::Write => HV_INTERCEPT_ACCESS_WRITE,
        Access::Execute => HV_INTERCEPT_ACCESS_EXECUTE,
    }
}

/// Fills `msg` for `exit`, raised by the instruction `ins` describes; `cr8` is the
/// local APIC's TPR[7:4], which the header's CR8 field shows.
pub fn build(
    msg: &mut ExitMessage,
    cpu: &Cpu,
    cr8: u64,
    index: u32,
    exit: &Exit,
    ins: &ExitInstruction,
) -> u32 {
    let len = ins.len;
    match *exit {
        Exit::Io {
            port,
            size,
            input,
            string,
            rep,
        } => {
            let mut m = hv_x64_io_port_intercept_message {
                header: header(
                    cpu,
                    cr8,
                    index,
                    len,
                    if input {
                        HV_INTERCEPT_ACCESS_READ
                    } else {
                        HV_INTERCEPT_ACCESS_WRITE
                    },
                ),
                port_number: port,
                instruction_byte_count: len,
                rax: cpu.gpr[0],
                ds_segment: segment(&cpu.seg[DS]),
                es_segment: segment(&cpu.seg[ES]),
                rcx: cpu.gpr[1],
                rsi: cpu.gpr[6],
                rdi: cpu.gpr[7],
                ..Default::default()
            };
            m.instruction_bytes.copy_from_slice(&ins.bytes);
            // SAFETY: writing bitfields of a plain u8 union view.
            unsafe {
                let a = &mut m.access_info.__bindgen_anon_1;
                a.set_access_size(size);
                a.set_string_op(string as u8);
                a.set_rep_prefix(rep as u8);
            }
            msg.write(HVMSG_X64_IO_PORT_INTERCEPT, &m);
            HVMSG_X64_IO_PORT_INTERCEPT
        }
        Exit::Mmio {
            gpa,
            gva,
            access,
            intercepted,
        } => {
            let count = if access == Access::Execute {
                0
            } else {
                ins.available
            };
            let mut header = header(cpu, cr8, index, len, access_code(access));
            if ins.in_event_delivery {
                // SAFETY: writing a bitfield of a plain u16 union view.
                unsafe {
                    header
                        .execution_state
                        .__bindgen_anon_1
                        .set_interruption_pending(1);
                }
            }
            let mut m = hv_x64_memory_intercept_message {
                header,
                instruction_byte_count: count,
                guest_virtual_address: gva,
                guest_physical_address: gpa,
                ..Default::default()
            };
            m.instruction_bytes[..count as usize].copy_from_slice(&ins.bytes[..count as usize]);
            // SAFETY: writing bitfields of a plain u8 union view.
            unsafe {
                m.memory_access_info.__bindgen_anon_1.set_gva_valid(1);
                m.memory_access_info.__bindgen_anon_1.set_gva_gpa_valid(1);
            }
            let t = if intercepted {
                HVMSG_GPA_INTERCEPT
            } else {
                HVMSG_UNMAPPED_GPA
            };
            msg.write(t, &m);
            t
        }
        Exit::Halt => {
            let m = hv_x64_halt_message {
                header: header(cpu, cr8, index, 0, HV_INTERCEPT_ACCESS_EXECUTE),
            };
            msg.write(HVMSG_X64_HALT, &m);
            HVMSG_X64_HALT
        }
        Exit::Msr { msr, write } => {
            let m = hv_x64_msr_intercept_message {
                header: header(
                    cpu,
                    cr8,
                    index,
                    len,
                    if write {
                        HV_INTERCEPT_ACCESS_WRITE
                    } else {
                        HV_INTERCEPT_ACCESS_READ
                    },
                ),
                msr_number: msr,
                reserved: 0,
                rdx: cpu.gpr[2],
                rax: cpu.gpr[0],
            };
            msg.write(HVMSG_X64_MSR_INTERCEPT, &m);
            HVMSG_X64_MSR_INTERCEPT
        }
        Exit::ApicEoi(vector) => {
            let m = hv_x64_apic_eoi_message {
                vp_index: index,
                interrupt_vector: vector as u32,
            };
            msg.write(HVMSG_X64_APIC_EOI, &m);
            HVMSG_X64_APIC_EOI
        }
        // The debugger's stop: an intercepted #DB, as MSHV reports one under an
        // exception intercept for vector 1 (DR6 in the exception parameter).
        Exit::Debug { dr6 } => {
            let g = &cpu.gpr;
            let m = hv_x64_exception_intercept_message {
                header: header(cpu, cr8, index, len, HV_INTERCEPT_ACCESS_EXECUTE),
                exception_vector: sim_cpu::fault::DB as u16,
                exception_info: hv_x64_exception_info { as_uint8: 0 },
                instruction_byte_count: ins.available,
                error_code: 0,
                exception_parameter: dr6,
                reserved: 0,
                instruction_bytes: ins.bytes,
                ds_segment: segment(&cpu.seg[DS]),
                ss_segment: segment(&cpu.seg[sim_cpu::state::SS]),
                rax: g[0],
                rcx: g[1],
                rdx: g[2],
                rbx: g[3],
                rsp: g[4],
                rbp: g[5],
                rsi: g[6],
                rdi: g[7],
                r8: g[8],
                r9: g[9],
                r10: g[10],
                r11: g[11],
                r12: g[12],
                r13: g[13],
                r14: g[14],
                r15: g[15],
            };
            msg.write(HVMSG_X64_EXCEPTION_INTERCEPT, &m);
            HVMSG_X64_EXCEPTION_INTERCEPT
        }
        // INIT and SIPI are the hypervisor's own business and never reach the VMM.
        Exit::Shutdown(_) | Exit::Unsupported | Exit::None | Exit::Init | Exit::Sipi(_) => {
            let m = hv_x64_unrecoverable_exception_message {
                header: header(cpu, cr8, index, len, HV_INTERCEPT_ACCESS_EXECUTE),
            };
            msg.write(HVMSG_UNRECOVERABLE_EXCEPTION, &m);
            HVMSG_UNRECOVERABLE_EXCEPTION
        }
    }
}
