//! The constants TypeScript needs, exported from their single Rust source.

use hv_core::regs::{RegisterGroup, RegisterKind, REGISTERS};
use napi_derive::napi;
use std::collections::HashMap;

/// One register: its id, value shape, fetch group and register page slot.
#[napi(object)]
pub struct RegisterDescriptor {
    pub name: String,
    pub id: u32,
    /// 'u64' | 'u128' | 'segment' | 'table'
    pub kind: String,
    /// 'general' | 'segment' | 'control' | 'system' | 'debug' | 'xmm' | 'msr'
    pub group: String,
    /// Byte offset on the register page, if the page carries it.
    pub page_offset: Option<u32>,
    /// Dirty bit to set when writing through the page; absent = read-only there.
    pub dirty_bit: Option<u32>,
}

/// Every layout table, in one object.
#[napi(object)]
pub struct Layout {
    /// Register page offsets, sizes and dirty bits.
    pub page: HashMap<String, u32>,
    /// `hv_message` field offsets.
    pub message: HashMap<String, u32>,
    /// Message types by name.
    pub message_types: HashMap<String, u32>,
    /// Synthetic exit codes a vCPU run returns besides message types.
    pub exits: HashMap<String, u32>,
    /// Bits of an intercept message header's `execution_state`
    /// (`hv_x64_vp_execution_state`) by name: `eferLma`, `interruptionPending`, ...
    pub execution_state: HashMap<String, u32>,
    pub registers: Vec<RegisterDescriptor>,
    /// Size of one register value in the batched register calls (bytes).
    pub register_value_size: u32,
    /// `HV_TRANSLATE_GVA_*` flags for `translateGva`.
    pub translate_flags: HashMap<String, u32>,
    /// `hv_translate_gva_result_code` values `translateGva` returns.
    pub translate_results: HashMap<String, u32>,
    /// The sim processor's clocks, as its CPUID leaves 0x15/0x16 give them: `tscHz`
    /// and `apicTimerHz` (the crystal the local APIC timer counts).
    pub sim_clocks: HashMap<String, f64>,
}

/// Run result when `cancel()` interrupted the run.
pub const EXIT_CANCELLED: u32 = 0xffff_0001;
/// Run result when the run's instruction budget ran out.
pub const EXIT_INSTRUCTIONS: u32 = 0xffff_0002;
/// Run result when the run's deadline passed.
pub const EXIT_TIMEOUT: u32 = 0xffff_0003;
/// Run result when one native run's slice (`sliceMs`) ended; the run goes on.
pub const EXIT_SLICE: u32 = 0xffff_0004;
/// Run result when guest time reached the run's `guestDeadlineNs`: a device timer is due.
pub const EXIT_CLOCK: u32 = 0xffff_0005;
/// Run result when the vCPU is halted with interrupts enabled and the run may not
/// block (`blockOnHalt: false`): nothing can wake it until the VMM raises an interrupt.
pub const EXIT_IDLE: u32 = 0xffff_0006;
/// A vCPU thread's result when its run threw (`VcpuThreads`): the error is taken apart.
pub const EXIT_FAILED: u32 = 0xffff_0007;
/// Run result when the vCPU is halted with interrupts disabled and the run may not
/// block: only an NMI, INIT or SIPI (or the VMM clearing halt suspend) wakes it.
pub const EXIT_HALTED: u32 = 0xffff_0008;

/// `hv_x64_vp_execution_state`'s bits, each found by setting its bitfield in
/// mshv-bindings' union (so the positions are the binding's, not copied by hand).
fn execution_state_bits() -> HashMap<String, u32> {
    use mshv_bindings::{
        hv_x64_vp_execution_state, hv_x64_vp_execution_state__bindgen_ty_1 as Bits,
    };
    let bit = |set: fn(&mut Bits)| {
        let mut s = hv_x64_vp_execution_state { as_uint16: 0 };
        // SAFETY: both views of the union are plain integers; every bit pattern is valid.
        unsafe {
            set(&mut s.__bindgen_anon_1);
            u32::from(s.as_uint16)
        }
    };
    [
        ("cr0Pe", bit(|b| b.set_cr0_pe(1))),
        ("cr0Am", bit(|b| b.set_cr0_am(1))),
        ("eferLma", bit(|b| b.set_efer_lma(1))),
        ("debugActive", bit(|b| b.set_debug_active(1))),
        (
            "interruptionPending",
            bit(|b| b.set_interruption_pending(1)),
        ),
        ("interruptShadow", bit(|b| b.set_interrupt_shadow(1))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn table(rows: &[(&str, usize)]) -> HashMap<String, u32> {
    rows.iter()
        .map(|(k, v)| (k.to_string(), *v as u32))
        .collect()
}

/// Returns the layout tables.
#[napi]
pub fn layout() -> Layout {
    let registers = REGISTERS
        .iter()
        .map(|r| RegisterDescriptor {
            name: r.name.to_string(),
            id: r.id,
            kind: match r.kind {
                RegisterKind::U64 => "u64",
                RegisterKind::U128 => "u128",
                RegisterKind::Segment => "segment",
                RegisterKind::Table => "table",
            }
            .to_string(),
            group: match r.group {
                RegisterGroup::General => "general",
                RegisterGroup::Segment => "segment",
                RegisterGroup::Control => "control",
                RegisterGroup::System => "system",
                RegisterGroup::Debug => "debug",
                RegisterGroup::Xmm => "xmm",
                RegisterGroup::Fp => "fp",
                RegisterGroup::Msr => "msr",
                RegisterGroup::Events => "events",
            }
            .to_string(),
            page_offset: r.page.map(|p| p.offset as u32),
            dirty_bit: r.page.and_then(|p| p.dirty),
        })
        .collect();
    Layout {
        page: table(hv_core::page::FIELDS),
        message: table(hv_core::message::FIELDS),
        execution_state: execution_state_bits(),
        message_types: hv_core::message::TYPES
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        exits: [
            ("cancelled".to_string(), EXIT_CANCELLED),
            ("instructions".to_string(), EXIT_INSTRUCTIONS),
            ("timeout".to_string(), EXIT_TIMEOUT),
            ("slice".to_string(), EXIT_SLICE),
            ("clock".to_string(), EXIT_CLOCK),
            ("idle".to_string(), EXIT_IDLE),
            ("failed".to_string(), EXIT_FAILED),
            ("halted".to_string(), EXIT_HALTED),
        ]
        .into_iter()
        .collect(),
        registers,
        register_value_size: hv_core::REGISTER_VALUE_SIZE as u32,
        translate_flags: [
            (
                "validateRead",
                mshv_bindings::HV_TRANSLATE_GVA_VALIDATE_READ,
            ),
            (
                "validateWrite",
                mshv_bindings::HV_TRANSLATE_GVA_VALIDATE_WRITE,
            ),
            (
                "validateExecute",
                mshv_bindings::HV_TRANSLATE_GVA_VALIDATE_EXECUTE,
            ),
            (
                "privilegeExempt",
                mshv_bindings::HV_TRANSLATE_GVA_PRIVILEGE_EXEMPT,
            ),
            (
                "setPageTableBits",
                mshv_bindings::HV_TRANSLATE_GVA_SET_PAGE_TABLE_BITS,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        translate_results: [
            (
                "success",
                mshv_bindings::hv_translate_gva_result_code_HV_TRANSLATE_GVA_SUCCESS,
            ),
            (
                "pageNotPresent",
                mshv_bindings::hv_translate_gva_result_code_HV_TRANSLATE_GVA_PAGE_NOT_PRESENT,
            ),
            (
                "privilegeViolation",
                mshv_bindings::hv_translate_gva_result_code_HV_TRANSLATE_GVA_PRIVILEGE_VIOLATION,
            ),
            (
                "gpaUnmapped",
                mshv_bindings::hv_translate_gva_result_code_HV_TRANSLATE_GVA_GPA_UNMAPPED,
            ),
            (
                "intercept",
                mshv_bindings::hv_translate_gva_result_code_HV_TRANSLATE_GVA_INTERCEPT,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        sim_clocks: [
            ("tscHz", sim_cpu::cpuid::TSC_MHZ as f64 * 1e6),
            ("apicTimerHz", sim_cpu::cpuid::CRYSTAL_HZ as f64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    }
}
