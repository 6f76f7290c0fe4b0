#![allow(non_upper_case_globals)]
//! The sim's get/set-register hypercalls: `hv_register_name` ids onto [`Cpu`] fields.
//! The internal activity state and CR8 are not the processor's: the vCPU answers them
//! from its local APIC (`SimVcpu::outside_register`; CR8 is the APIC's TPR[7:4]).

use hv_core::regs::{pack_segment, pack_table, unpack_segment, unpack_table};
use hv_core::{HvError, RegisterValue, Result};
use mshv_bindings::*;
use sim_cpu::msr::*;
use sim_cpu::{Cpu, Segment, Table};

fn seg_value(s: &Segment) -> RegisterValue {
    pack_segment(s.base, s.limit, s.selector, s.attributes)
}

fn value_seg(v: RegisterValue) -> Segment {
    let (base, limit, selector, attributes) = unpack_segment(v);
    Segment {
        base,
        limit,
        selector,
        attributes,
    }
}

fn msr_for(id: u32) -> Option<u32> {
    Some(match id {
        hv_register_name_HV_X64_REGISTER_KERNEL_GS_BASE => KERNEL_GS_BASE,
        hv_register_name_HV_X64_REGISTER_PAT => PAT,
        hv_register_name_HV_X64_REGISTER_SYSENTER_CS => SYSENTER_CS,
        hv_register_name_HV_X64_REGISTER_SYSENTER_EIP => SYSENTER_EIP,
        hv_register_name_HV_X64_REGISTER_SYSENTER_ESP => SYSENTER_ESP,
        hv_register_name_HV_X64_REGISTER_STAR => STAR,
        hv_register_name_HV_X64_REGISTER_LSTAR => LSTAR,
        hv_register_name_HV_X64_REGISTER_CSTAR => CSTAR,
        hv_register_name_HV_X64_REGISTER_SFMASK => SFMASK,
        hv_register_name_HV_X64_REGISTER_TSC_AUX => TSC_AUX,
        _ => return None,
    })
}

/// The storage of an MSR the register interface reaches.
fn msr_slot(cpu: &mut Cpu, msr: u32) -> &mut u64 {
    let m = &mut cpu.msr;
    match msr {
        KERNEL_GS_BASE => &mut m.kernel_gs_base,
        PAT => &mut m.pat,
        SYSENTER_CS => &mut m.sysenter_cs,
        SYSENTER_EIP => &mut m.sysenter_eip,
        SYSENTER_ESP => &mut m.sysenter_esp,
        STAR => &mut m.star,
        LSTAR => &mut m.lstar,
        CSTAR => &mut m.cstar,
        SFMASK => &mut m.sfmask,
        _ => &mut m.tsc_aux,
    }
}

const RAX: u32 = hv_register_name_HV_X64_REGISTER_RAX;
const XMM0: u32 = hv_register_name_HV_X64_REGISTER_XMM0;
const ES: u32 = hv_register_name_HV_X64_REGISTER_ES;
const DR0: u32 = hv_register_name_HV_X64_REGISTER_DR0;
const FP_MMX0: u32 = hv_register_name_HV_X64_REGISTER_FP_MMX0;

/// `HV_X64_REGISTER_FP_CONTROL_STATUS`: FCW, FSW, the abridged tag byte, FOP and the
/// last instruction pointer, laid out as FXSAVE bytes 0-15 (`hv_x64_fp_control_status_register`).
fn fp_control_status(cpu: &Cpu) -> RegisterValue {
    let f = &cpu.fpu;
    let lo = f.fcw as u64
        | (f.fsw as u64) << 16
        | (f.abridged_tags() as u64) << 32
        | (f.fop as u64) << 48;
    [lo, f.fip]
}

/// `HV_X64_REGISTER_XMM_CONTROL_STATUS`: the last data pointer, MXCSR and its mask
/// (`hv_x64_xmm_control_status_register`, FXSAVE bytes 16-31).
fn xmm_control_status(cpu: &Cpu) -> RegisterValue {
    let mask = sim_cpu::fpu::MXCSR_MASK as u64;
    [cpu.fpu.fdp, cpu.mxcsr as u64 | mask << 32]
}

/// Reads one register.
pub fn get(cpu: &Cpu, id: u32) -> Result<RegisterValue> {
    let u = |v: u64| Ok([v, 0]);
    match id {
        _ if (RAX..RAX + 16).contains(&id) => u(cpu.gpr[(id - RAX) as usize]),
        hv_register_name_HV_X64_REGISTER_RIP => u(cpu.rip),
        hv_register_name_HV_X64_REGISTER_RFLAGS => u(cpu.rflags()),
        _ if (XMM0..XMM0 + 16).contains(&id) => {
            let x = cpu.xmm[(id - XMM0) as usize];
            Ok([x as u64, (x >> 64) as u64])
        }
        // FP_MMX0..7 are ST(0)..ST(7), as FXSAVE orders them (Cloud Hypervisor maps
        // them to kvm_fpu.fpr, which is in that order).
        _ if (FP_MMX0..FP_MMX0 + 8).contains(&id) => {
            let v = cpu.fpu.st((id - FP_MMX0) as usize);
            Ok([v as u64, (v >> 64) as u64 & 0xffff])
        }
        hv_register_name_HV_X64_REGISTER_FP_CONTROL_STATUS => Ok(fp_control_status(cpu)),
        hv_register_name_HV_X64_REGISTER_XMM_CONTROL_STATUS => Ok(xmm_control_status(cpu)),
        _ if (ES..ES + 6).contains(&id) => Ok(seg_value(&cpu.seg[(id - ES) as usize])),
        hv_register_name_HV_X64_REGISTER_LDTR => Ok(seg_value(&cpu.ldtr)),
        hv_register_name_HV_X64_REGISTER_TR => Ok(seg_value(&cpu.tr)),
        hv_register_name_HV_X64_REGISTER_GDTR => Ok(pack_table(cpu.gdtr.base, cpu.gdtr.limit)),
        hv_register_name_HV_X64_REGISTER_IDTR => Ok(pack_table(cpu.idtr.base, cpu.idtr.limit)),
        hv_register_name_HV_X64_REGISTER_CR0 => u(cpu.cr0),
        hv_register_name_HV_X64_REGISTER_CR2 => u(cpu.cr2),
        hv_register_name_HV_X64_REGISTER_CR3 => u(cpu.cr3),
        hv_register_name_HV_X64_REGISTER_CR4 => u(cpu.cr4),
        hv_register_name_HV_X64_REGISTER_EFER => u(cpu.efer),
        hv_register_name_HV_X64_REGISTER_APIC_BASE => u(cpu.apic_base),
        hv_register_name_HV_X64_REGISTER_TSC => u(cpu.tsc),
        hv_register_name_HV_REGISTER_PENDING_EVENT0 => Ok(cpu.pending_event),
        hv_register_name_HV_REGISTER_INTERRUPT_STATE => {
            u(cpu.shadow.interrupts as u64 | (cpu.nmi_blocked as u64) << 1)
        }
        hv_register_name_HV_X64_REGISTER_XFEM => u(cpu.xcr0),
        _ if (DR0..DR0 + 4).contains(&id) => u(cpu.dr[(id - DR0) as usize]),
        hv_register_name_HV_X64_REGISTER_DR6 => u(cpu.dr[6]),
        hv_register_name_HV_X64_REGISTER_DR7 => u(cpu.dr[7]),
        _ => match msr_for(id) {
            Some(msr) => u(sim_cpu::msr::read(cpu, msr).unwrap_or(0)),
            None => Err(HvError::UnknownRegister(id)),
        },
    }
}

/// Writes one register. Returns whether cached translations must be flushed.
pub fn set(cpu: &mut Cpu, id: u32, v: RegisterValue) -> Result<bool> {
    let x = v[0];
    match id {
        _ if (RAX..RAX + 16).contains(&id) => cpu.gpr[(id - RAX) as usize] = x,
        hv_register_name_HV_X64_REGISTER_RIP => cpu.rip = x,
        hv_register_name_HV_X64_REGISTER_RFLAGS => cpu.set_rflags(x),
        _ if (XMM0..XMM0 + 16).contains(&id) => {
            cpu.xmm[(id - XMM0) as usize] = x as u128 | (v[1] as u128) << 64
        }
        _ if (FP_MMX0..FP_MMX0 + 8).contains(&id) => {
            let p = cpu.fpu.phys((id - FP_MMX0) as usize);
            cpu.fpu.regs[p] = x as u128 | ((v[1] & 0xffff) as u128) << 64;
        }
        hv_register_name_HV_X64_REGISTER_FP_CONTROL_STATUS => {
            let f = &mut cpu.fpu;
            f.fcw = (x as u16 & 0x1f3f) | 0x40;
            f.fsw = (x >> 16) as u16;
            f.empty = !((x >> 32) as u8);
            f.fop = (x >> 48) as u16 & 0x7ff;
            f.fip = v[1];
            f.update_summary();
        }
        hv_register_name_HV_X64_REGISTER_XMM_CONTROL_STATUS => {
            let mxcsr = v[1] as u32;
            if mxcsr & !sim_cpu::fpu::MXCSR_MASK != 0 {
                return Err(HvError::InvalidArgument(format!(
                    "MXCSR {mxcsr:#x} sets reserved bits (the mask is {:#x})",
                    sim_cpu::fpu::MXCSR_MASK
                )));
            }
            cpu.fpu.fdp = x;
            cpu.mxcsr = mxcsr;
        }
        _ if (ES..ES + 6).contains(&id) => {
            cpu.seg[(id - ES) as usize] = value_seg(v);
            return Ok(true);
        }
        hv_register_name_HV_X64_REGISTER_LDTR => cpu.ldtr = value_seg(v),
        hv_register_name_HV_X64_REGISTER_TR => cpu.tr = value_seg(v),
        hv_register_name_HV_X64_REGISTER_GDTR | hv_register_name_HV_X64_REGISTER_IDTR => {
            let (base, limit) = unpack_table(v);
            let t = Table { base, limit };
            if id == hv_register_name_HV_X64_REGISTER_GDTR {
                cpu.gdtr = t;
            } else {
                cpu.idtr = t;
            }
        }
        hv_register_name_HV_X64_REGISTER_CR0
        | hv_register_name_HV_X64_REGISTER_CR3
        | hv_register_name_HV_X64_REGISTER_CR4
        | hv_register_name_HV_X64_REGISTER_EFER => {
            match id {
                hv_register_name_HV_X64_REGISTER_CR0 => cpu.cr0 = x,
                hv_register_name_HV_X64_REGISTER_CR3 => cpu.cr3 = x,
                hv_register_name_HV_X64_REGISTER_CR4 => cpu.cr4 = x,
                // Unlike WRMSR, the register interface sets EFER as given, LMA included.
                _ => cpu.efer = x,
            }
            if id != hv_register_name_HV_X64_REGISTER_EFER {
                cpu.update_lma();
            }
            return Ok(true);
        }
        hv_register_name_HV_X64_REGISTER_CR2 => cpu.cr2 = x,
        hv_register_name_HV_X64_REGISTER_APIC_BASE => cpu.apic_base = x,
        hv_register_name_HV_X64_REGISTER_TSC => cpu.tsc = x,
        hv_register_name_HV_REGISTER_PENDING_EVENT0 => {
            // The hypervisor refuses an event it cannot deliver in the set call itself.
            hv_core::PendingEvent::decode(v)?;
            cpu.pending_event = v;
        }
        hv_register_name_HV_REGISTER_INTERRUPT_STATE => {
            if x & !3 != 0 {
                return Err(HvError::InvalidArgument(format!(
                    "interruptState {x:#x}: only bits 0 (interrupt shadow) and 1 (NMI masked) exist"
                )));
            }
            cpu.shadow.interrupts = x & 1 != 0;
            cpu.nmi_blocked = x & 2 != 0;
        }
        hv_register_name_HV_X64_REGISTER_XFEM => {
            // This processor has the x87 and SSE components only; XCR0 bit 0 is always
            // set (SDM vol 1 13.3).
            if x & 1 == 0 || x & !3 != 0 {
                return Err(HvError::InvalidArgument(format!(
                    "xfem {x:#x}: XCR0 here takes bit 0 (x87, always set) and bit 1 (SSE)"
                )));
            }
            cpu.xcr0 = x;
        }
        _ if (DR0..DR0 + 4).contains(&id) => cpu.dr[(id - DR0) as usize] = x,
        hv_register_name_HV_X64_REGISTER_DR6 => cpu.dr[6] = x,
        hv_register_name_HV_X64_REGISTER_DR7 => cpu.dr[7] = x,
        _ => match msr_for(id) {
            Some(msr) => *msr_slot(cpu, msr) = x,
            None => return Err(HvError::UnknownRegister(id)),
        },
    }
    Ok(false)
}
