//! Exit messages: the 256-byte `hv_message` a vCPU run returns.
//!
//! Both backends fill an [`ExitMessage`] buffer with the exact bytes of the
//! `mshv-bindings` structs; TypeScript reads them in place at the offsets in [`FIELDS`].

use mshv_bindings::*;
use std::mem::{offset_of, size_of};

/// Size of an `hv_message`.
pub const MESSAGE_SIZE: usize = size_of::<hv_message>();
/// Offset of the payload (the intercept message) inside an `hv_message`.
pub const PAYLOAD: usize = offset_of!(hv_message, u);

pub const HVMSG_NONE: u32 = hv_message_type_HVMSG_NONE;
pub const HVMSG_UNMAPPED_GPA: u32 = hv_message_type_HVMSG_UNMAPPED_GPA;
pub const HVMSG_GPA_INTERCEPT: u32 = hv_message_type_HVMSG_GPA_INTERCEPT;
pub const HVMSG_UNRECOVERABLE_EXCEPTION: u32 = hv_message_type_HVMSG_UNRECOVERABLE_EXCEPTION;
pub const HVMSG_X64_IO_PORT_INTERCEPT: u32 = hv_message_type_HVMSG_X64_IO_PORT_INTERCEPT;
pub const HVMSG_X64_MSR_INTERCEPT: u32 = hv_message_type_HVMSG_X64_MSR_INTERCEPT;
pub const HVMSG_X64_CPUID_INTERCEPT: u32 = hv_message_type_HVMSG_X64_CPUID_INTERCEPT;
pub const HVMSG_X64_EXCEPTION_INTERCEPT: u32 = hv_message_type_HVMSG_X64_EXCEPTION_INTERCEPT;
pub const HVMSG_X64_HALT: u32 = hv_message_type_HVMSG_X64_HALT;
/// The EOI of a level-triggered interrupt (`hv_x64_apic_eoi_message`): an I/O APIC
/// re-asserts a line still high (OpenVMM `virt_mshv`, Cloud Hypervisor `IoapicEoi`).
pub const HVMSG_X64_APIC_EOI: u32 = hv_message_type_HVMSG_X64_APIC_EOI;

/// The message types both backends produce, by name, for TypeScript.
pub const TYPES: &[(&str, u32)] = &[
    ("none", HVMSG_NONE),
    ("unmappedGpa", HVMSG_UNMAPPED_GPA),
    ("gpaIntercept", HVMSG_GPA_INTERCEPT),
    ("unrecoverableException", HVMSG_UNRECOVERABLE_EXCEPTION),
    ("ioPort", HVMSG_X64_IO_PORT_INTERCEPT),
    ("msr", HVMSG_X64_MSR_INTERCEPT),
    ("cpuid", HVMSG_X64_CPUID_INTERCEPT),
    ("exception", HVMSG_X64_EXCEPTION_INTERCEPT),
    ("halt", HVMSG_X64_HALT),
    ("apicEoi", HVMSG_X64_APIC_EOI),
];

/// `gva_valid` in `hv_x64_memory_access_info` (checked against the binding's setter in tests).
pub const MEM_GVA_VALID: u8 = 1 << 0;
/// `gva_gpa_valid` in `hv_x64_memory_access_info`.
pub const MEM_GVA_GPA_VALID: u8 = 1 << 1;

type Hdr = hv_x64_intercept_message_header;
type Io = hv_x64_io_port_intercept_message;
type Mem = hv_x64_memory_intercept_message;
type Cpuid = hv_x64_cpuid_intercept_message;
type Msr = hv_x64_msr_intercept_message;
type Eoi = hv_x64_apic_eoi_message;
type Exc = hv_x64_exception_intercept_message;

const fn p(off: usize) -> usize {
    PAYLOAD + off
}

/// Offsets from the start of the `hv_message`, by name, for TypeScript.
pub const FIELDS: &[(&str, usize)] = &[
    ("size", MESSAGE_SIZE),
    ("messageType", offset_of!(hv_message_header, message_type)),
    ("payloadSize", offset_of!(hv_message_header, payload_size)),
    ("payload", PAYLOAD),
    ("vpIndex", p(offset_of!(Hdr, vp_index))),
    // instruction_length:4 | cr8:4, one byte of bitfield right after vp_index.
    ("instructionLengthCr8", p(offset_of!(Hdr, _bitfield_1))),
    (
        "interceptAccessType",
        p(offset_of!(Hdr, intercept_access_type)),
    ),
    ("executionState", p(offset_of!(Hdr, execution_state))),
    ("csSegment", p(offset_of!(Hdr, cs_segment))),
    ("rip", p(offset_of!(Hdr, rip))),
    ("rflags", p(offset_of!(Hdr, rflags))),
    ("ioPortNumber", p(offset_of!(Io, port_number))),
    // access_size:3 | string_op:1 | rep_prefix:1
    ("ioAccessInfo", p(offset_of!(Io, access_info))),
    (
        "ioInstructionByteCount",
        p(offset_of!(Io, instruction_byte_count)),
    ),
    ("ioRax", p(offset_of!(Io, rax))),
    ("ioInstructionBytes", p(offset_of!(Io, instruction_bytes))),
    ("ioDsSegment", p(offset_of!(Io, ds_segment))),
    ("ioEsSegment", p(offset_of!(Io, es_segment))),
    ("ioRcx", p(offset_of!(Io, rcx))),
    ("ioRsi", p(offset_of!(Io, rsi))),
    ("ioRdi", p(offset_of!(Io, rdi))),
    (
        "memInstructionByteCount",
        p(offset_of!(Mem, instruction_byte_count)),
    ),
    // gva_valid:1 | gva_gpa_valid:1 | ...
    ("memAccessInfo", p(offset_of!(Mem, memory_access_info))),
    ("memGva", p(offset_of!(Mem, guest_virtual_address))),
    ("memGpa", p(offset_of!(Mem, guest_physical_address))),
    ("memInstructionBytes", p(offset_of!(Mem, instruction_bytes))),
    ("cpuidRax", p(offset_of!(Cpuid, rax))),
    ("cpuidRcx", p(offset_of!(Cpuid, rcx))),
    ("cpuidRdx", p(offset_of!(Cpuid, rdx))),
    ("cpuidRbx", p(offset_of!(Cpuid, rbx))),
    ("cpuidDefaultRax", p(offset_of!(Cpuid, default_result_rax))),
    ("cpuidDefaultRcx", p(offset_of!(Cpuid, default_result_rcx))),
    ("cpuidDefaultRdx", p(offset_of!(Cpuid, default_result_rdx))),
    ("cpuidDefaultRbx", p(offset_of!(Cpuid, default_result_rbx))),
    ("msrNumber", p(offset_of!(Msr, msr_number))),
    ("msrRdx", p(offset_of!(Msr, rdx))),
    ("msrRax", p(offset_of!(Msr, rax))),
    // HVMSG_X64_EXCEPTION_INTERCEPT: the vector, and its parameter (DR6 for #DB).
    ("exceptionVector", p(offset_of!(Exc, exception_vector))),
    (
        "exceptionParameter",
        p(offset_of!(Exc, exception_parameter)),
    ),
    // HVMSG_X64_APIC_EOI carries no intercept header: the VP index and the vector.
    ("eoiVpIndex", p(offset_of!(Eoi, vp_index))),
    ("eoiVector", p(offset_of!(Eoi, interrupt_vector))),
    // Bits of `memAccessInfo` (`hv_x64_memory_access_info`): the message's GVA is
    // valid, and so is its translation to the message's GPA.
    ("memGvaValid", MEM_GVA_VALID as usize),
    ("memGvaGpaValid", MEM_GVA_GPA_VALID as usize),
    ("accessRead", HV_INTERCEPT_ACCESS_READ as usize),
    ("accessWrite", HV_INTERCEPT_ACCESS_WRITE as usize),
    ("accessExecute", HV_INTERCEPT_ACCESS_EXECUTE as usize),
];

/// A preallocated, 8-byte aligned `hv_message` buffer.
#[derive(Clone)]
#[repr(C, align(8))]
pub struct ExitMessage {
    pub bytes: [u8; MESSAGE_SIZE],
}

impl Default for ExitMessage {
    fn default() -> Self {
        ExitMessage {
            bytes: [0; MESSAGE_SIZE],
        }
    }
}

impl std::fmt::Debug for ExitMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExitMessage(type {:#x})", self.message_type())
    }
}

impl ExitMessage {
    /// The `hv_message_type` in the header.
    pub fn message_type(&self) -> u32 {
        u32::from_le_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }

    /// The bytes the message uses: its header and payload (`payload_size`), rounded
    /// up to whole u64 words.
    pub fn used_len(&self) -> usize {
        let payload = self.bytes[4] as usize;
        (PAYLOAD + payload).next_multiple_of(8).min(MESSAGE_SIZE)
    }

    /// Copies a binding `hv_message` in.
    pub fn set(&mut self, msg: &hv_message) {
        // SAFETY: `hv_message` is a packed plain-old-data struct of exactly MESSAGE_SIZE bytes.
        let src = unsafe {
            std::slice::from_raw_parts((msg as *const hv_message).cast::<u8>(), MESSAGE_SIZE)
        };
        self.bytes.copy_from_slice(src);
    }

    /// Writes a header of `message_type` and the payload struct `payload`.
    pub fn write<T: Copy>(&mut self, message_type: u32, payload: &T) {
        assert!(
            size_of::<T>() <= MESSAGE_SIZE - PAYLOAD,
            "payload too large"
        );
        self.bytes.fill(0);
        let mut header = hv_message_header {
            message_type,
            payload_size: size_of::<T>() as u8,
            ..Default::default()
        };
        header.message_flags.asu8 = 0;
        // SAFETY: both structs are packed plain-old-data; the destinations are in bounds
        // (asserted above) and `write_unaligned` needs no alignment.
        unsafe {
            std::ptr::write_unaligned(self.bytes.as_mut_ptr().cast::<hv_message_header>(), header);
            std::ptr::write_unaligned(self.bytes.as_mut_ptr().add(PAYLOAD).cast::<T>(), *payload);
        }
    }

    /// Reads the payload as `T`.
    pub fn payload<T: Copy>(&self) -> T {
        assert!(
            size_of::<T>() <= MESSAGE_SIZE - PAYLOAD,
            "payload too large"
        );
        // SAFETY: in bounds (asserted); T is a packed binding struct valid for any bytes.
        unsafe { std::ptr::read_unaligned(self.bytes.as_ptr().add(PAYLOAD).cast::<T>()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_info_bits_are_the_bindings_bitfields() {
        let bit = |set: fn(&mut hv_x64_memory_access_info__bindgen_ty_1)| {
            let mut info = hv_x64_memory_access_info { as_uint8: 0 };
            // SAFETY: both views of the union are one plain byte.
            unsafe {
                set(&mut info.__bindgen_anon_1);
                info.as_uint8
            }
        };
        assert_eq!(bit(|i| i.set_gva_valid(1)), MEM_GVA_VALID);
        assert_eq!(bit(|i| i.set_gva_gpa_valid(1)), MEM_GVA_GPA_VALID);
    }

    #[test]
    fn sizes_match_the_kernel_abi() {
        assert_eq!(MESSAGE_SIZE, 256);
        assert_eq!(PAYLOAD, 16);
        assert_eq!(size_of::<Hdr>(), 40);
        assert_eq!(size_of::<Io>(), 128);
        assert_eq!(size_of::<Mem>(), 80);
    }

    #[test]
    fn write_then_read_round_trips_an_io_message() {
        let mut io = Io {
            port_number: 0x3f8,
            rax: 0x41,
            ..Default::default()
        };
        io.header.rip = 0x1000;
        io.header.set_instruction_length(1);
        // SAFETY: writing the bitfield view of a plain u8 union.
        unsafe { io.access_info.__bindgen_anon_1.set_access_size(1) };
        let mut m = ExitMessage::default();
        m.write(HVMSG_X64_IO_PORT_INTERCEPT, &io);
        assert_eq!(m.message_type(), HVMSG_X64_IO_PORT_INTERCEPT);
        let at = |name: &str| FIELDS.iter().find(|f| f.0 == name).unwrap().1;
        assert_eq!(
            u16::from_le_bytes([m.bytes[at("ioPortNumber")], m.bytes[at("ioPortNumber") + 1]]),
            0x3f8
        );
        assert_eq!(m.bytes[at("ioRax")], 0x41);
        assert_eq!(m.bytes[at("instructionLengthCr8")] & 0xf, 1);
        assert_eq!(m.bytes[at("ioAccessInfo")] & 7, 1);
        let back: Io = m.payload();
        assert_eq!({ back.header.rip }, 0x1000);
        assert_eq!(m.bytes[4] as usize, size_of::<Io>());
        assert_eq!(m.used_len(), PAYLOAD + size_of::<Io>());
    }
}
