//! System instructions (SDM vol 2 for each, vol 3 chapters 2, 4, 5): flag control with
//! IOPL rules, control and debug registers, descriptor tables, LDTR and TR, CPUID,
//! MSRs, the time-stamp counter, HLT, SYSCALL/SYSRET, SYSENTER/SYSEXIT, SWAPGS, the
//! FS/GS base instructions, LAR/LSL/VERR/VERW/ARPL, SMAP's STAC/CLAC.

use super::{read_rm, write_rm};
use crate::decode::{ea, gpr, FlagChange, FsGsBase, Handler, Op};
use crate::exec::{Exec, NONE};
use crate::fault::{selector_error, Exit, Stop, DB, NP};
use crate::flags::*;
use crate::msr::{self, Written};
use crate::paging::{self, canonical, MAXPHYADDR};
use crate::segment::{
    read_descriptor, Descriptor, TYPE_LDT, TYPE_TSS16_AVAILABLE, TYPE_TSS32_AVAILABLE,
};
use crate::state::*;
use crate::vendor::{self, Vendor};
use crate::X2apicWrite;
use hv_core::UnknownMsr;
use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

/// #GP(0) unless CPL is 0 (and not V86 mode, whose CPL is 3).
#[inline]
fn privileged(x: &mut Exec) -> Result<(), Stop> {
    if x.cpu.cpl() != 0 {
        return Err(x.gp(0));
    }
    Ok(())
}

// ---- flags ------------------------------------------------------------------------

fn flag_op(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let change = op.flag_change();
    match change {
        FlagChange::Clc => x.cpu.flags.set_arith(0, CF),
        FlagChange::Stc => x.cpu.flags.set_arith(CF, CF),
        FlagChange::Cmc => {
            let c = x.cpu.flags.cf();
            x.cpu.flags.set_arith(if c { 0 } else { CF }, CF);
        }
        FlagChange::Cld => x.cpu.flags.bits &= !DF,
        FlagChange::Std => x.cpu.flags.bits |= DF,
        FlagChange::Cli | FlagChange::Sti => {
            // CLI/STI: allowed at CPL <= IOPL (always in real mode), else #GP(0)
            // (no VME or PVI here).
            let cpu = &*x.cpu;
            if cpu.protected() && cpu.cpl() > cpu.iopl() {
                return Err(x.gp(0));
            }
            if change == FlagChange::Cli {
                x.cpu.flags.bits &= !IF;
            } else {
                if x.cpu.flags.bits & IF == 0 {
                    // Interrupts stay blocked until after the next instruction; debug
                    // exceptions do not (SDM vol 3 6.8.3).
                    x.cpu.shadow = crate::state::Shadow {
                        interrupts: true,
                        ..crate::state::Shadow::default()
                    };
                }
                x.cpu.flags.bits |= IF;
            }
        }
    }
    Ok(())
}

pub fn compile_flag_op(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    use Mnemonic as M;
    op.set_flag_change(match ins.mnemonic() {
        M::Clc => FlagChange::Clc,
        M::Stc => FlagChange::Stc,
        M::Cmc => FlagChange::Cmc,
        M::Cld => FlagChange::Cld,
        M::Std => FlagChange::Std,
        M::Cli => FlagChange::Cli,
        _ => FlagChange::Sti,
    });
    Some(flag_op)
}

// ---- control and debug registers --------------------------------------------------

/// CR0 bits that exist; the rest (and bits 63:32) are reserved (SDM vol 3 2.5).
const CR0_DEFINED: u64 = CR0_PE
    | CR0_MP
    | CR0_EM
    | CR0_TS
    | CR0_ET
    | CR0_NE
    | CR0_WP
    | CR0_AM
    | CR0_NW
    | CR0_CD
    | CR0_PG;
/// CR4 bits this processor supports (the rest are #GP(0) to set).
const CR4_SUPPORTED: u64 = CR4_PSE
    | CR4_PAE
    | CR4_PGE
    | CR4_PCE
    | CR4_TSD
    | CR4_DE
    | CR4_FSGSBASE
    | CR4_SMEP
    | CR4_SMAP
    | CR4_PKE
    | CR4_PKS
    | CR4_MCE
    | CR4_OSFXSR
    | CR4_OSXMMEXCPT;

/// Writes CR0 with the checks of SDM vol 2 MOV (Control Registers).
pub fn write_cr0(x: &mut Exec, v: u64) -> Result<(), Stop> {
    if v & !CR0_DEFINED != 0 {
        return Err(x.gp(0));
    }
    if v & CR0_PG != 0 && v & CR0_PE == 0 || v & CR0_NW != 0 && v & CR0_CD == 0 {
        return Err(x.gp(0));
    }
    let cpu = &*x.cpu;
    let entering_paging = v & CR0_PG != 0 && cpu.cr0 & CR0_PG == 0;
    if entering_paging && cpu.efer & EFER_LME != 0 {
        // Long mode needs PAE and, to activate, a code segment that is not 64-bit.
        if cpu.cr4 & CR4_PAE == 0 || cpu.seg[CS].long() {
            return Err(x.gp(0));
        }
    }
    if v & CR0_PG == 0 && cpu.long_mode_active() && cpu.mode64() {
        // Leaving long mode requires compatibility mode first.
        return Err(x.gp(0));
    }
    let old = x.cpu.cr0;
    // ET is hardwired to 1.
    x.cpu.cr0 = v | CR0_ET;
    x.cpu.update_lma();
    if entering_paging
        && !x.cpu.long_mode_active()
        && x.cpu.cr4 & CR4_PAE != 0
        && !paging::load_pdptes(x.cpu, x.mem)
    {
        x.cpu.cr0 = old;
        x.cpu.update_lma();
        return Err(x.gp(0));
    }
    if (old ^ x.cpu.cr0) & (CR0_PG | CR0_PE | CR0_WP) != 0 {
        x.tlb.flush();
    }
    x.end_block = true;
    Ok(())
}

pub fn write_cr3(x: &mut Exec, v: u64) -> Result<(), Stop> {
    if x.cpu.long_mode_active() && v >> MAXPHYADDR != 0 {
        return Err(x.gp(0));
    }
    let old = x.cpu.cr3;
    x.cpu.cr3 = if x.cpu.long_mode_active() {
        v
    } else {
        v & 0xffff_ffff
    };
    if x.cpu.paging()
        && !x.cpu.long_mode_active()
        && x.cpu.cr4 & CR4_PAE != 0
        && !paging::load_pdptes(x.cpu, x.mem)
    {
        x.cpu.cr3 = old;
        return Err(x.gp(0));
    }
    x.tlb.flush_nonglobal();
    x.end_block = true;
    Ok(())
}

pub fn write_cr4(x: &mut Exec, v: u64) -> Result<(), Stop> {
    if v & !CR4_SUPPORTED != 0 || !cr4_keys_enumerated(x, v) {
        return Err(x.gp(0));
    }
    let cpu = &*x.cpu;
    if cpu.long_mode_active() && v & CR4_PAE == 0 {
        return Err(x.gp(0));
    }
    let old = cpu.cr4;
    x.cpu.cr4 = v;
    x.cpu.update_lma();
    if x.cpu.paging()
        && !x.cpu.long_mode_active()
        && v & CR4_PAE != 0
        && (old ^ v) & (CR4_PAE | CR4_PGE | CR4_PSE | CR4_SMEP) != 0
        && !paging::load_pdptes(x.cpu, x.mem)
    {
        x.cpu.cr4 = old;
        x.cpu.update_lma();
        return Err(x.gp(0));
    }
    // The TLB's grants include the protection keys' (`crate::tlb`), in force by CR4.PKE
    // and CR4.PKS.
    if (old ^ v) & (CR4_PAE | CR4_PGE | CR4_PSE | CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS) != 0 {
        x.tlb.flush();
    }
    x.end_block = true;
    Ok(())
}

/// CR4.PKE and CR4.PKS are reserved bits, #GP(0) to set, where CPUID as the hypervisor
/// answers it lacks CPUID.(EAX=07H,ECX=0):ECX.PKU [bit 3] or .PKS [bit 31] (SDM vol 3
/// 2.5, 4.6.2; KVM's `kvm_is_valid_cr4` goes by the guest's CPUID the same way). Either
/// may be set in any mode: it takes effect only with 4-level paging (4.6.2).
fn cr4_keys_enumerated(x: &mut Exec, v: u64) -> bool {
    if v & (CR4_PKE | CR4_PKS) == 0 {
        return true;
    }
    let native = crate::cpuid::native(7, 0, x.env.apic_id(), x.cpu);
    let [_, _, ecx, _] = x.env.cpuid(7, 0, native);
    (v & CR4_PKE == 0 || ecx & crate::cpuid::bits::PKU != 0)
        && (v & CR4_PKS == 0 || ecx & crate::cpuid::bits::PKS != 0)
}

fn mov_to_cr(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    let v = x.cpu.gpr[op.rm as usize]
        & if x.cpu.mode64() {
            u64::MAX
        } else {
            0xffff_ffff
        };
    match op.control_register() {
        0 => write_cr0(x, v),
        2 => {
            x.cpu.cr2 = v;
            Ok(())
        }
        3 => write_cr3(x, v),
        4 => write_cr4(x, v),
        _ => {
            // CR8: the task-priority class; bits 63:4 reserved.
            if v & !0xf != 0 {
                return Err(x.gp(0));
            }
            if x.env.write_cr8(v) {
                // A lower TPR may let an interrupt through: the run looks at its
                // events after this block.
                x.end_block = true;
            } else {
                x.cpu.cr8 = v;
            }
            Ok(())
        }
    }
}

fn mov_from_cr(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    let v = match op.control_register() {
        0 => x.cpu.cr0,
        2 => x.cpu.cr2,
        3 => x.cpu.cr3,
        4 => x.cpu.cr4,
        _ => x.env.read_cr8().unwrap_or(x.cpu.cr8),
    };
    let s = if x.cpu.mode64() { 8 } else { 4 };
    x.set_reg(op.rm, s, v);
    Ok(())
}

/// The debug register a MOV names: DR4/DR5 alias DR6/DR7 unless CR4.DE, where they
/// are #UD (SDM vol 3 18.2.2).
fn debug_index(x: &mut Exec, n: u8) -> Result<usize, Stop> {
    match n {
        4 | 5 if x.cpu.cr4 & CR4_DE != 0 => Err(x.ud()),
        4 | 5 => Ok(n as usize + 2),
        _ => Ok(n as usize),
    }
}

/// DR7.GD set: a MOV with a debug register is a #DB fault instead, with DR6.BD set and
/// B0-B3 clear (SDM vol 3 18.2.3, 18.2.4).
fn general_detect(x: &mut Exec) -> Result<(), Stop> {
    if x.cpu.dr[7] & crate::interrupt::DR7_GD != 0 {
        x.cpu.dr[6] = (x.cpu.dr[6] & !crate::dr::DR6_B) | crate::dr::DR6_BD;
        return Err(x.raise(DB, None));
    }
    Ok(())
}

fn mov_to_dr(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    let i = debug_index(x, op.debug_register())?;
    general_detect(x)?;
    let v = x.cpu.gpr[op.rm as usize]
        & if x.cpu.mode64() {
            u64::MAX
        } else {
            0xffff_ffff
        };
    if (i == 6 || i == 7) && v >> 32 != 0 {
        return Err(x.gp(0));
    }
    // Reserved bits: DR6 bits 4..11 and 16..31 read as 1, DR7 bit 10 as 1.
    x.cpu.dr[i] = match i {
        6 => v | 0xffff_0ff0,
        7 => v | 0x400,
        _ => v,
    };
    if i != 6 {
        x.breakpoints_changed();
    }
    x.end_block = true;
    Ok(())
}

fn mov_from_dr(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    let i = debug_index(x, op.debug_register())?;
    general_detect(x)?;
    let s = if x.cpu.mode64() { 8 } else { 4 };
    let v = x.cpu.dr[i];
    x.set_reg(op.rm, s, v);
    Ok(())
}

pub fn compile_mov_special(ins: &Instruction, op: &mut Op) -> Option<Handler> {
    let r0 = ins.op_register(0);
    let r1 = ins.op_register(1);
    if r0.is_tr() || r1.is_tr() {
        return Some(crate::decode::invalid);
    }
    // The special register is operand 0 for a write, 1 for a read; the other is the
    // general register.
    let (special, general) = if r0.is_cr() || r0.is_dr() {
        (r0, r1)
    } else {
        (r1, r0)
    };
    op.rm = gpr(general);
    let to = special == r0;
    if special.is_cr() {
        let n = (special as u32 - Register::CR0 as u32) as u8;
        if !matches!(n, 0 | 2 | 3 | 4 | 8) {
            return Some(crate::decode::invalid);
        }
        op.set_control_register(n);
        Some(if to { mov_to_cr } else { mov_from_cr })
    } else {
        let n = (special as u32 - Register::DR0 as u32) as u8;
        if n > 7 {
            return Some(crate::decode::invalid);
        }
        op.set_debug_register(n);
        Some(if to { mov_to_dr } else { mov_from_dr })
    }
}

fn lmsw(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    let v = read_rm(x, op, 2)?;
    // PE, MP, EM and TS; PE can be set but not cleared.
    let cr0 = (x.cpu.cr0 & !0xe) | (v & 0xf) | (x.cpu.cr0 & CR0_PE);
    write_cr0(x, cr0)
}

fn smsw(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let s = if op.rm == NONE { 2 } else { op.size as usize };
    let v = x.cpu.cr0;
    write_rm(x, op, s, v)
}

fn clts(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    x.cpu.cr0 &= !CR0_TS;
    Ok(())
}

// ---- descriptor tables, LDTR, TR ----------------------------------------------------

/// LGDT/LIDT m16&32 (m16&64 in 64-bit mode; a 16-bit operand loads a 24-bit base).
fn load_table(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    let at = ea(x, op);
    let limit = x.read(op.seg as usize, at, 2)? as u16;
    let wide = x.cpu.mode64();
    let base_at = at.wrapping_add(2) & crate::flags::mask(op.asize as usize);
    let base = x.read(op.seg as usize, base_at, if wide { 8 } else { 4 })?;
    let base = if wide {
        if !canonical(base) {
            return Err(x.gp(0));
        }
        base
    } else if op.size == 2 {
        base & 0xff_ffff
    } else {
        base & 0xffff_ffff
    };
    let t = Table { base, limit };
    if op.idt() {
        x.cpu.idtr = t;
    } else {
        x.cpu.gdtr = t;
    }
    Ok(())
}

/// SGDT/SIDT: the limit, then the base (all 32 bits, or 64 in 64-bit mode).
fn store_table(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let t = if op.idt() { x.cpu.idtr } else { x.cpu.gdtr };
    let at = ea(x, op);
    let size = if x.cpu.mode64() { 8 } else { 4 };
    x.probe_write(op.seg as usize, at, 2 + size)?;
    x.write(op.seg as usize, at, 2, t.limit as u64)?;
    let base_at = at.wrapping_add(2) & crate::flags::mask(op.asize as usize);
    x.write(op.seg as usize, base_at, size, t.base)
}

fn protected_only(x: &mut Exec) -> Result<(), Stop> {
    if !x.cpu.protected() || x.cpu.v86() {
        return Err(x.ud());
    }
    Ok(())
}

/// LLDT r/m16: a null selector leaves LDTR unusable; otherwise an LDT descriptor in
/// the GDT, present (#GP(sel)/#NP(sel)).
fn lldt(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    protected_only(x)?;
    privileged(x)?;
    let sel = read_rm(x, op, 2)? as u16;
    if sel & !3 == 0 {
        x.cpu.ldtr = Segment {
            selector: sel,
            ..Segment::default()
        };
        return Ok(());
    }
    let err = selector_error(sel);
    if sel & 4 != 0 {
        return Err(x.gp(err));
    }
    let long = x.cpu.long_mode_active();
    let (d, _) = read_descriptor(x, sel, long, crate::fault::GP)?;
    if d.code_or_data() || d.kind() != TYPE_LDT {
        return Err(x.gp(err));
    }
    if !d.present() {
        return Err(x.raise(NP, Some(err)));
    }
    let mut s = d.segment(sel);
    if long {
        s.base = system_base(x, &d, err)?;
    }
    x.cpu.ldtr = s;
    Ok(())
}

/// The base of a 16-byte LDT or TSS descriptor that LLDT or LTR loads in IA-32e mode:
/// a non-canonical one is #GP(selector), before anything changes (AMD APM vol 3 LLDT
/// and LTR, "Exceptions": "the new LDT/TSS base is non-canonical"; Intel's 5-level
/// paging white paper 2.5 has the same check at the width paging gives, 48 bits here,
/// as this processor has no LA57).
fn system_base(x: &mut Exec, d: &crate::segment::Descriptor, err: u32) -> Result<u64, Stop> {
    let base = d.base64();
    if !crate::paging::canonical(base) {
        return Err(x.gp(err));
    }
    Ok(base)
}

/// LTR r/m16: an available TSS in the GDT, which becomes busy.
fn ltr(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    protected_only(x)?;
    privileged(x)?;
    let sel = read_rm(x, op, 2)? as u16;
    let err = selector_error(sel);
    if sel & !3 == 0 {
        return Err(x.gp(0));
    }
    if sel & 4 != 0 {
        return Err(x.gp(err));
    }
    let long = x.cpu.long_mode_active();
    let (d, at) = read_descriptor(x, sel, long, crate::fault::GP)?;
    let available = !d.code_or_data()
        && (d.kind() == TYPE_TSS32_AVAILABLE || !long && d.kind() == TYPE_TSS16_AVAILABLE);
    if !available {
        return Err(x.gp(err));
    }
    if !d.present() {
        return Err(x.raise(NP, Some(err)));
    }
    let base = if long {
        system_base(x, &d, err)?
    } else {
        d.base()
    };
    x.write_system(at.wrapping_add(5), 1, ((d.low >> 40) & 0xff) | 2)?;
    let mut s = d.segment(sel);
    s.attributes |= 2;
    s.base = base;
    x.cpu.tr = s;
    Ok(())
}

/// SLDT/STR: the selector; a register gets it zero-extended to the operand size.
fn store_selector(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    protected_only(x)?;
    let sel = if op.task_register() {
        x.cpu.tr.selector
    } else {
        x.cpu.ldtr.selector
    } as u64;
    let s = if op.rm == NONE { 2 } else { op.size as usize };
    write_rm(x, op, s, sel)
}

// ---- LAR, LSL, VERR, VERW, ARPL ---------------------------------------------------

/// The descriptor of `sel` if software at the current CPL may inspect it with
/// LAR/LSL/VERR/VERW (SDM vol 2 LAR: null, out of table, DPL < max(CPL, RPL) for
/// non-conforming segments, or a type these instructions do not accept: ZF = 0).
fn visible(
    x: &mut Exec,
    sel: u16,
    accept: fn(&Descriptor, bool) -> bool,
) -> Result<Option<Descriptor>, Stop> {
    if sel & !3 == 0 {
        return Ok(None);
    }
    let size = 8;
    let (base, limit) = if sel & 4 != 0 {
        (x.cpu.ldtr.base, x.cpu.ldtr.limit as u64)
    } else {
        (x.cpu.gdtr.base, x.cpu.gdtr.limit as u64)
    };
    if sel & 4 != 0 && !x.cpu.ldtr.present() || (sel & !7) as u64 + size - 1 > limit {
        return Ok(None);
    }
    let low = x.read_system(base.wrapping_add((sel & !7) as u64), 8)?;
    let d = Descriptor { low, high: 0 };
    let long = x.cpu.long_mode_active();
    if !accept(&d, long) {
        return Ok(None);
    }
    let cpl = x.cpu.cpl();
    if !d.conforming() && (d.dpl() < cpl || d.dpl() < (sel & 3) as u8) {
        return Ok(None);
    }
    Ok(Some(d))
}

fn lar_type(d: &Descriptor, long: bool) -> bool {
    d.code_or_data()
        || if long {
            matches!(d.kind(), 2 | 9 | 11 | 12)
        } else {
            matches!(d.kind(), 1 | 2 | 3 | 4 | 5 | 9 | 11 | 12)
        }
}

fn lsl_type(d: &Descriptor, long: bool) -> bool {
    d.code_or_data()
        || if long {
            matches!(d.kind(), 2 | 9 | 11)
        } else {
            matches!(d.kind(), 1 | 2 | 3 | 9 | 11)
        }
}

fn lar_lsl(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    protected_only(x)?;
    let sel = read_rm(x, op, 2)? as u16;
    let lar = !op.lsl();
    match visible(x, sel, if lar { lar_type } else { lsl_type })? {
        Some(d) => {
            let s = op.size as usize;
            // SDM vol 2 LAR: "DEST <- [SRC + 4] AND 00FxFF00H"; the x (the limit's
            // bits 19:16) is undefined and reads as 0 here, as on QEMU.
            let v = if lar {
                (d.low >> 32) & 0x00f0_ff00
            } else {
                d.limit() as u64
            };
            x.set_reg(op.r, s, v);
            x.cpu.flags.set_arith(ZF, ZF);
        }
        None => x.cpu.flags.set_arith(0, ZF),
    }
    Ok(())
}

fn verr_verw(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    protected_only(x)?;
    let sel = read_rm(x, op, 2)? as u16;
    let write = op.verw();
    let ok = match visible(x, sel, |d, _| d.code_or_data())? {
        Some(d) => {
            if write {
                d.writable_data()
            } else {
                !d.is_code() || d.readable_code()
            }
        }
        None => false,
    };
    x.cpu.flags.set_arith(if ok { ZF } else { 0 }, ZF);
    Ok(())
}

fn arpl(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    protected_only(x)?;
    let src = x.reg(op.r, 2);
    let dst = read_rm(x, op, 2)?;
    if dst & 3 < src & 3 {
        write_rm(x, op, 2, (dst & !3) | (src & 3))?;
        x.cpu.flags.set_arith(ZF, ZF);
    } else {
        x.cpu.flags.set_arith(0, ZF);
    }
    Ok(())
}

// ---- CPUID, MSRs, TSC -------------------------------------------------------------

fn cpuid(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    let leaf = x.cpu.gpr[0] as u32;
    let sub = x.cpu.gpr[1] as u32;
    let native = crate::cpuid::native(leaf, sub, x.env.apic_id(), x.cpu);
    let [a, b, c, d] = crate::cpuid::with_state(leaf, sub, x.cpu, x.env.cpuid(leaf, sub, native));
    x.cpu.gpr[0] = a as u64;
    x.cpu.gpr[3] = b as u64;
    x.cpu.gpr[1] = c as u64;
    x.cpu.gpr[2] = d as u64;
    // Serializing: code others changed is seen from here on.
    x.cache.new_epoch();
    Ok(())
}

fn rdmsr(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    let m = x.cpu.gpr[1] as u32;
    if x.env.msr_exits(m) {
        return Err(x.exit_with(Exit::Msr {
            msr: m,
            write: false,
        }));
    }
    if (msr::X2APIC_FIRST..=msr::X2APIC_LAST).contains(&m) && x.env.has_apic() {
        return x2apic_rdmsr(x, m);
    }
    let v = match x.env.read_msr(m, x.cpu.tsc).or_else(|| msr::read(x.cpu, m)) {
        Some(v) => v,
        None if msr::absent(m) => return Err(x.gp(0)),
        // AMD's legacy performance counters: present and holding 0 (see `K7_PERF_FIRST`).
        None if vendor::is_k7_perf(m) && Vendor::of_guest(x).has_k7_perf_msrs() => 0,
        None => match x.env.unknown_msr() {
            UnknownMsr::Ignore => 0,
            UnknownMsr::Exit => {
                return Err(x.exit_with(Exit::Msr {
                    msr: m,
                    write: false,
                }))
            }
            UnknownMsr::Fault => return Err(x.gp(0)),
        },
    };
    x.cpu.gpr[0] = v & 0xffff_ffff;
    x.cpu.gpr[2] = v >> 32;
    Ok(())
}

fn wrmsr(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    let m = x.cpu.gpr[1] as u32;
    if x.env.msr_exits(m) {
        return Err(x.exit_with(Exit::Msr {
            msr: m,
            write: true,
        }));
    }
    let v = (x.cpu.gpr[2] << 32) | (x.cpu.gpr[0] & 0xffff_ffff);
    if (msr::X2APIC_FIRST..=msr::X2APIC_LAST).contains(&m) && x.env.has_apic() {
        return x2apic_wrmsr(x, m, v);
    }
    if x.env.write_msr(m, v, x.cpu.tsc) {
        return Ok(());
    }
    match msr::write(x, m, v) {
        Written::Done => Ok(()),
        Written::Refused => Err(x.gp(0)),
        // AMD's legacy performance counters: 0 is theirs to hold, any other value is an
        // event or a count the sim does not keep (see `K7_PERF_FIRST`).
        Written::Unknown if vendor::is_k7_perf(m) && Vendor::of_guest(x).has_k7_perf_msrs() => {
            if v == 0 {
                Ok(())
            } else {
                Err(x.gp(0))
            }
        }
        Written::Unknown => match x.env.unknown_msr() {
            UnknownMsr::Ignore => Ok(()),
            UnknownMsr::Exit => Err(x.exit_with(Exit::Msr {
                msr: m,
                write: true,
            })),
            UnknownMsr::Fault => Err(x.gp(0)),
        },
    }
}

/// RDMSR of an x2APIC register: the local APIC's in x2APIC mode, #GP(0) in any other
/// mode (SDM vol 3 11.12.1.2: "Accessing any APIC register in the MSR address range
/// 0800H through 08FFH via RDMSR or WRMSR when the local APIC is not in x2APIC mode
/// causes a general-protection exception").
#[cold]
fn x2apic_rdmsr(x: &mut Exec, m: u32) -> Result<(), Stop> {
    if !msr::x2apic_mode(x.cpu.apic_base) {
        return Err(x.gp(0));
    }
    let Some(v) = x.env.x2apic_read((m - msr::X2APIC_FIRST) << 4, x.cpu.tsc) else {
        return Err(x.gp(0));
    };
    x.cpu.gpr[0] = v & 0xffff_ffff;
    x.cpu.gpr[2] = v >> 32;
    Ok(())
}

/// WRMSR of an x2APIC register (see [`x2apic_rdmsr`]). A write that may have raised
/// an interrupt for this processor (an IPI to itself, TPR, EOI) ends the block, as an
/// APIC page write does.
#[cold]
fn x2apic_wrmsr(x: &mut Exec, m: u32, v: u64) -> Result<(), Stop> {
    if !msr::x2apic_mode(x.cpu.apic_base) {
        return Err(x.gp(0));
    }
    x.end_block = true;
    match x
        .env
        .x2apic_write((m - msr::X2APIC_FIRST) << 4, v, x.cpu.tsc)
    {
        X2apicWrite::Done => Ok(()),
        X2apicWrite::Eoi(vector) => Err(x.exit_with(Exit::ApicEoi(vector))),
        X2apicWrite::Fault => Err(x.gp(0)),
    }
}

// ---- protection keys --------------------------------------------------------------

/// RDPKRU (SDM vol 2 RDPKRU): #UD unless CR4.PKE; "IF (ECX = 0) THEN EAX := PKRU; EDX
/// := 0; ELSE #GP(0)", the high halves of RCX ignored. Any CPL, any mode.
fn rdpkru(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    if x.cpu.cr4 & CR4_PKE == 0 {
        return Err(x.ud());
    }
    if x.cpu.gpr[1] as u32 != 0 {
        return Err(x.gp(0));
    }
    let pkru = u64::from(x.cpu.pkru);
    x.set_reg(0, 4, pkru);
    x.set_reg(2, 4, 0);
    Ok(())
}

/// WRPKRU (SDM vol 2 WRPKRU): #UD unless CR4.PKE; "IF (ECX = 0 AND EDX = 0) THEN PKRU
/// := EAX; ELSE #GP(0)", the high halves of RAX, RCX and RDX ignored. The new rights
/// rule the next access, with no TLB invalidation ([`crate::tlb::Tlb::rekey`]).
fn wrpkru(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    if x.cpu.cr4 & CR4_PKE == 0 {
        return Err(x.ud());
    }
    if x.cpu.gpr[1] as u32 != 0 || x.cpu.gpr[2] as u32 != 0 {
        return Err(x.gp(0));
    }
    x.cpu.pkru = x.cpu.gpr[0] as u32;
    let keys = x.keys();
    x.tlb.rekey(keys);
    Ok(())
}

fn rdtsc(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.cr4 & CR4_TSD != 0 && x.cpu.cpl() != 0 {
        return Err(x.gp(0));
    }
    let t = x.env.tsc(x.cpu.tsc);
    x.cpu.gpr[0] = t & 0xffff_ffff;
    x.cpu.gpr[2] = t >> 32;
    if op.rdtscp() {
        x.cpu.gpr[1] = x.cpu.msr.tsc_aux & 0xffff_ffff;
    }
    Ok(())
}

/// RDPMC: this processor has no performance counters (CPUID leaf 0xA is empty), so
/// every counter index is #GP(0).
fn rdpmc(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    Err(x.gp(0))
}

fn hlt(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    x.cpu.halted = true;
    Err(x.exit_with(Exit::Halt))
}

fn invlpg(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    privileged(x)?;
    // A large page's granules may sit anywhere in the TLB: everything goes. The links
    // between code blocks stand unless the page may map code they were made from (its
    // 1 GiB region, the largest page, holds some): Linux invalidates fixmap, vmalloc and
    // direct-map pages by the thousand while it boots, and every link made stale is a
    // lookup. The linear address is formed without `Exec::linear`'s checks: INVLPG
    // faults on none.
    let lin = x.cpu.linear_of(op.seg as usize, ea(x, op));
    if x.cache.may_hold_code(lin) {
        x.tlb.flush();
    } else {
        x.tlb.flush_entries();
    }
    Ok(())
}

fn privileged_nop(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    privileged(x)
}

// ---- fast system calls ------------------------------------------------------------

/// The flat 64-bit or 32-bit code and data segments SYSCALL/SYSENTER load.
fn flat(selector: u16, code: bool, long: bool, dpl: u16) -> Segment {
    let kind = if code { 0xb } else { 0x3 };
    let mut attributes = kind | ATTR_S | ATTR_P | dpl << 5 | ATTR_G;
    if code && long {
        attributes |= ATTR_L;
    } else {
        attributes |= ATTR_DB;
    }
    Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        attributes,
    }
}

/// SYSCALL. EFER.SCE clear is #UD for both vendors (SDM vol 2 SYSCALL, AMD APM vol 3
/// SYSCALL). Outside 64-bit mode it follows the guest's vendor ([`Vendor`]): Intel's
/// is #UD there (SDM vol 2 SYSCALL); AMD's enters the 64-bit kernel at CSTAR from
/// compatibility mode and the 32-bit kernel at STAR[31:0] from legacy protected mode
/// (APM vol 3 SYSCALL). Real and virtual-8086 mode are #UD for both, as KVM's
/// `em_syscall` has them ("syscall is not available in real mode").
fn syscall(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.efer & EFER_SCE == 0 {
        return Err(x.ud());
    }
    let from64 = x.cpu.mode64();
    if !from64
        && (!x.cpu.protected() || x.cpu.v86() || !Vendor::of_guest(x).syscall_outside_64bit_mode())
    {
        return Err(x.ud());
    }
    let star = x.cpu.msr.star;
    let cs = ((star >> 32) & 0xfffc) as u16;
    let f = x.cpu.rflags();
    if x.cpu.long_mode_active() {
        // APM vol 3 SYSCALL, "SYSCALL_LONG_MODE": RIP from LSTAR in 64-bit mode, from
        // CSTAR in compatibility mode; always into 64-bit code (SDM vol 2 SYSCALL for
        // the 64-bit-mode half).
        x.cpu.gpr[1] = op.next;
        x.cpu.gpr[11] = f;
        x.cpu.set_rflags(f & !x.cpu.msr.sfmask & !RF);
        x.cpu.seg[CS] = flat(cs, true, true, 0);
        x.cpu.rip = if from64 {
            x.cpu.msr.lstar
        } else {
            x.cpu.msr.cstar
        };
    } else {
        // APM vol 3 SYSCALL, "SYSCALL_LEGACY_MODE": ECX the next EIP, EIP STAR[31:0],
        // 32-bit code at CPL 0, RFLAGS.VM, IF and RF cleared (IA32_FMASK and R11 are
        // long mode's).
        x.cpu.gpr[1] = op.next & 0xffff_ffff;
        x.cpu.set_rflags(f & !(VM | IF | RF));
        x.cpu.seg[CS] = flat(cs, true, false, 0);
        x.cpu.rip = star & 0xffff_ffff;
    }
    x.cpu.seg[SS] = flat(cs.wrapping_add(8), false, false, 0);
    x.end_block = true;
    step_at_end(x);
    Ok(())
}

/// SYSCALL and SYSRET single-step by TF as they leave it (see `Gate::Syscall`): the
/// trap, if TF is set now, is owed after the instruction.
fn step_at_end(x: &mut Exec) {
    x.gate = crate::dr::Gate::Syscall;
    if x.cpu.flags.bits & crate::flags::TF != 0 {
        x.db_traps |= crate::dr::DR6_BS;
    }
}

/// SYSRET. EFER.SCE clear is #UD for both vendors. Outside 64-bit mode it follows
/// the guest's vendor ([`Vendor`]): Intel's is #UD there (SDM vol 2 SYSRET); AMD's
/// needs protected mode (#GP(0) in real mode) and returns to 32-bit code (APM vol 3
/// SYSRET). Then CPL 0 (#GP(0)) and, to 64-bit code, a canonical RCX: #GP(0) before
/// anything changes, as Intel processors check (SDM vol 2 SYSRET).
fn sysret(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.efer & EFER_SCE == 0 {
        return Err(x.ud());
    }
    if !x.cpu.mode64() {
        if !Vendor::of_guest(x).sysret_outside_64bit_mode() {
            return Err(x.ud());
        }
        if !x.cpu.protected() {
            return Err(x.gp(0));
        }
    }
    privileged(x)?;
    let to64 = op.size == 8;
    let rcx = x.cpu.gpr[1];
    if to64 && !canonical(rcx) {
        return Err(x.gp(0));
    }
    let base = ((x.cpu.msr.star >> 48) & 0xffff) as u16;
    let (cs, rip) = if to64 {
        (base.wrapping_add(16) | 3, rcx)
    } else {
        (base | 3, rcx & 0xffff_ffff)
    };
    x.cpu.seg[CS] = flat(cs, true, to64, 3);
    x.cpu.seg[SS] = flat(base.wrapping_add(8) | 3, false, false, 3);
    if x.cpu.long_mode_active() {
        x.cpu.set_rflags((x.cpu.gpr[11] & 0x3c_7fd7) | 2);
    } else {
        // APM vol 3 SYSRET, "SYSRET_LEGACY_MODE": RFLAGS.IF = 1, the rest kept.
        let f = x.cpu.rflags();
        x.cpu.set_rflags(f | IF);
    }
    x.cpu.rip = rip;
    x.end_block = true;
    step_at_end(x);
    Ok(())
}

fn sysenter(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    let cs = x.cpu.msr.sysenter_cs as u16 & 0xfffc;
    if !x.cpu.protected() || cs == 0 {
        return Err(x.gp(0));
    }
    let long = x.cpu.long_mode_active();
    let f = x.cpu.rflags() & !(VM | IF | RF);
    x.cpu.set_rflags(f);
    x.cpu.seg[CS] = flat(cs, true, long, 0);
    x.cpu.seg[SS] = flat(cs.wrapping_add(8), false, false, 0);
    let m = if long { u64::MAX } else { 0xffff_ffff };
    x.cpu.gpr[4] = x.cpu.msr.sysenter_esp & m;
    x.cpu.rip = x.cpu.msr.sysenter_eip & m;
    x.end_block = true;
    Ok(())
}

fn sysexit(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    let base = x.cpu.msr.sysenter_cs as u16;
    if !x.cpu.protected() || x.cpu.v86() || x.cpu.cpl() != 0 || base & 0xfffc == 0 {
        return Err(x.gp(0));
    }
    let to64 = op.size == 8;
    if to64 && (!canonical(x.cpu.gpr[1]) || !canonical(x.cpu.gpr[2])) {
        return Err(x.gp(0));
    }
    let (cs, ss) = if to64 {
        (base.wrapping_add(32) | 3, base.wrapping_add(40) | 3)
    } else {
        (base.wrapping_add(16) | 3, base.wrapping_add(24) | 3)
    };
    x.cpu.seg[CS] = flat(cs, true, to64, 3);
    x.cpu.seg[SS] = flat(ss, false, false, 3);
    let m = if to64 { u64::MAX } else { 0xffff_ffff };
    x.cpu.gpr[4] = x.cpu.gpr[1] & m;
    x.cpu.rip = x.cpu.gpr[2] & m;
    x.end_block = true;
    Ok(())
}

fn swapgs(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    if !x.cpu.mode64() {
        return Err(x.ud());
    }
    privileged(x)?;
    std::mem::swap(&mut x.cpu.msr.kernel_gs_base, &mut x.cpu.seg[GS].base);
    Ok(())
}

/// RDFSBASE/RDGSBASE/WRFSBASE/WRGSBASE: 64-bit mode with CR4.FSGSBASE, else #UD.
fn fsgsbase(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if !x.cpu.mode64() || x.cpu.cr4 & CR4_FSGSBASE == 0 {
        return Err(x.ud());
    }
    let which = op.fs_gs_base();
    let seg = if which.gs() { GS } else { FS };
    let s = op.size as usize;
    if !which.write() {
        let v = x.cpu.seg[seg].base;
        x.set_reg(op.r, s, v);
    } else {
        let v = x.reg(op.r, s);
        if !canonical(v) {
            return Err(x.gp(0));
        }
        x.cpu.seg[seg].base = v;
    }
    Ok(())
}

/// STAC/CLAC: CPL 0 only (#UD otherwise).
fn stac_clac(x: &mut Exec, op: &Op) -> Result<(), Stop> {
    if x.cpu.cpl() != 0 {
        return Err(x.ud());
    }
    if op.clac() {
        x.cpu.flags.bits &= !AC;
    } else {
        x.cpu.flags.bits |= AC;
    }
    Ok(())
}

/// WAIT/FWAIT: #NM when CR0.MP and CR0.TS are both set; with no x87 unit there is
/// no pending floating-point exception to report (SDM vol 2 WAIT).
fn wait(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    if x.cpu.cr0 & (CR0_MP | CR0_TS) == CR0_MP | CR0_TS {
        return Err(x.raise(crate::fault::NM, None));
    }
    Ok(())
}

/// SALC (D6, outside 64-bit mode): AL = CF ? 0xFF : 0, as Intel processors execute it.
fn salc(x: &mut Exec, _op: &Op) -> Result<(), Stop> {
    let v = if x.cpu.flags.cf() { 0xff } else { 0 };
    x.set_reg(0, 1, v);
    Ok(())
}

pub fn compile_misc(ins: &Instruction, _op: &mut Op) -> Option<Handler> {
    Some(if ins.mnemonic() == Mnemonic::Wait {
        wait
    } else {
        salc
    })
}

pub fn compile(ins: &Instruction, op: &mut Op, _bits: u32) -> Option<Handler> {
    use Mnemonic as M;
    let mem0 = ins.op_count() > 0 && ins.op_kind(0) == OpKind::Memory;
    Some(match ins.mnemonic() {
        M::Hlt => hlt,
        M::Cpuid => cpuid,
        M::Rdmsr => rdmsr,
        M::Wrmsr => wrmsr,
        M::Rdtsc | M::Rdtscp => {
            op.set_rdtscp(ins.mnemonic() == M::Rdtscp);
            rdtsc
        }
        M::Rdpmc => rdpmc,
        M::Rdpkru => rdpkru,
        M::Wrpkru => wrpkru,
        M::Invlpg => invlpg,
        M::Invd | M::Wbinvd => privileged_nop,
        M::Lgdt | M::Lidt => {
            op.set_idt(ins.mnemonic() == M::Lidt);
            op.size = match ins.code() {
                Code::Lgdt_m1632_16 | Code::Lidt_m1632_16 => 2,
                _ => 4,
            };
            load_table
        }
        M::Sgdt | M::Sidt => {
            op.set_idt(ins.mnemonic() == M::Sidt);
            store_table
        }
        M::Lldt | M::Ltr | M::Lmsw if !mem0 => {
            // The only operand is the r/m one: a register form reads `rm`.
            op.rm = gpr(ins.op_register(0));
            match ins.mnemonic() {
                M::Lldt => lldt,
                M::Ltr => ltr,
                _ => lmsw,
            }
        }
        M::Lldt => lldt,
        M::Ltr => ltr,
        M::Sldt | M::Str => {
            op.set_task_register(ins.mnemonic() == M::Str);
            if !mem0 {
                op.rm = gpr(ins.op_register(0));
            }
            store_selector
        }
        M::Lmsw => lmsw,
        M::Smsw => {
            if !mem0 {
                op.rm = gpr(ins.op_register(0));
            }
            smsw
        }
        M::Clts => clts,
        M::Lar | M::Lsl => {
            op.set_lsl(ins.mnemonic() == M::Lsl);
            lar_lsl
        }
        M::Verr | M::Verw => {
            op.set_verw(ins.mnemonic() == M::Verw);
            if !mem0 {
                op.rm = gpr(ins.op_register(0));
            }
            verr_verw
        }
        M::Arpl => {
            if mem0 {
                op.rm = NONE;
                op.r = gpr(ins.op_register(1));
            } else {
                op.rm = gpr(ins.op_register(0));
                op.r = gpr(ins.op_register(1));
            }
            arpl
        }
        M::Syscall => syscall,
        M::Sysret | M::Sysretq => {
            op.size = if matches!(ins.code(), Code::Sysretq) {
                8
            } else {
                4
            };
            sysret
        }
        M::Sysenter => sysenter,
        M::Sysexit | M::Sysexitq => {
            op.size = if matches!(ins.code(), Code::Sysexitq) {
                8
            } else {
                4
            };
            sysexit
        }
        M::Swapgs => swapgs,
        M::Rdfsbase | M::Rdgsbase | M::Wrfsbase | M::Wrgsbase => {
            op.set_fs_gs_base(match ins.mnemonic() {
                M::Rdfsbase => FsGsBase::RdFs,
                M::Rdgsbase => FsGsBase::RdGs,
                M::Wrfsbase => FsGsBase::WrFs,
                _ => FsGsBase::WrGs,
            });
            fsgsbase
        }
        M::Stac | M::Clac => {
            op.set_clac(ins.mnemonic() == M::Clac);
            stac_clac
        }
        M::Ud0 | M::Ud1 | M::Ud2 | M::Rsm => crate::decode::invalid,
        _ => return None,
    })
}
