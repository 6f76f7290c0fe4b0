//! Exception injection: the `HV_REGISTER_PENDING_EVENT0` value a VMM writes to make the
//! vCPU take an exception (a #GP for a refused MSR, say) when it next resumes.
//!
//! The layout is mshv-bindings' `hv_x64_pending_exception_event` (encoded and decoded
//! through its own bitfield accessors). The event type is not: mshv-bindings names no
//! pending-*event* types, and its `HV_X64_PENDING_EXCEPTION` (3) is a pending
//! *interruption* type (for `HV_REGISTER_PENDING_INTERRUPTION`). As an event type, 3 is a
//! virtualization fault, which the hypervisor rejects for this register.

use crate::error::HvError;
use crate::regs::RegisterValue;
use mshv_bindings::{
    hv_x64_pending_exception_event__bindgen_ty_1 as Event, HVCALL_SET_VP_REGISTERS,
    HV_STATUS_INVALID_REGISTER_VALUE,
};

/// Pending event type "exception": OpenVMM's hvdef (`HvX64PendingEventType::EXCEPTION`
/// = 0) and the Windows Hypervisor Platform (`WHvX64PendingEventException` = 0).
pub const PENDING_EVENT_EXCEPTION: u32 = 0;
/// Pending event type "external interrupt" (hvdef `EXT_INT`, WHV `WHvX64PendingEventExtInt` = 5).
pub const PENDING_EVENT_EXT_INT: u32 = 5;

/// What led to a triple fault, as far as the backend saw it: the exceptions raised, the
/// first one first and the one that could not be delivered last (SDM vol 3 6.15,
/// interrupt 8). The sim records them as it raises them; MSHV's
/// `HVMSG_UNRECOVERABLE_EXCEPTION` carries only the intercept header (hvgdk_mini.h
/// `hv_x64_unrecoverable_exception_message`), so a host backend has none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TripleFault {
    /// The vectors raised, in order.
    pub vectors: Vec<u8>,
    /// The first exception's error code, when it pushes one.
    pub error_code: Option<u32>,
    /// The first exception's faulting address, when it was a #PF (CR2 then; a later
    /// #PF in the chain overwrote the register).
    pub cr2: Option<u64>,
}

/// An exception waiting to be delivered at the next resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingException {
    pub vector: u8,
    /// Pushed on the handler's stack when present.
    pub error_code: Option<u32>,
}

/// The refusal a hypervisor gives a pending-event value it cannot deliver: the
/// set-registers hypercall fails with `HV_STATUS_INVALID_REGISTER_VALUE`.
fn invalid_value() -> HvError {
    HvError::Hypercall {
        op: "set registers",
        code: HVCALL_SET_VP_REGISTERS as u16,
        status: HV_STATUS_INVALID_REGISTER_VALUE as u16,
    }
}

/// Whether the processor pushes an error code for exception `vector` in protected or
/// long mode: #DF, #TS, #NP, #SS, #GP, #PF, #AC and #CP (SDM vol 3 6.3.1 and Table 6-1).
/// Real mode pushes none (SDM vol 3 20.1.4).
pub fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

impl PendingException {
    /// The exception `vector` as the processor would take it in the current mode:
    /// with `error_code` (0 when not given) where it pushes one, without it elsewhere.
    /// Asking for an error code a vector never has is an error naming both. A VMM
    /// must get this right: VM entry fails when the delivered-error-code flag
    /// disagrees with the mode and the vector (SDM vol 3C, "Checks on VM-Entry Control
    /// Fields").
    pub fn for_mode(
        vector: u8,
        error_code: Option<u32>,
        protected_mode: bool,
    ) -> Result<Self, HvError> {
        if vector > 31 {
            return Err(HvError::InvalidArgument(format!(
                "exception vector must be 0..31, got {vector}"
            )));
        }
        if !pushes_error_code(vector) {
            if let Some(code) = error_code {
                return Err(HvError::InvalidArgument(format!(
                    "exception {vector} has no error code, got error code {code:#x} (SDM vol 3 Table 6-1)"
                )));
            }
        }
        Ok(PendingException {
            vector,
            error_code: (protected_mode && pushes_error_code(vector))
                .then(|| error_code.unwrap_or(0)),
        })
    }

    /// The register value announcing this exception.
    pub fn encode(&self) -> RegisterValue {
        let mut e = Event::default();
        e.set_event_pending(1);
        e.set_event_type(PENDING_EVENT_EXCEPTION);
        e.set_vector(self.vector as u32);
        e.set_deliver_error_code(self.error_code.is_some() as u32);
        e.error_code = self.error_code.unwrap_or(0);
        let bits = e._bitfield_1.get(0, 32);
        [bits | (e.error_code as u64) << 32, e.exception_parameter]
    }

    /// The exception a register value announces: `None` when nothing is pending, an
    /// error (as the hypervisor's) for an event this model cannot deliver: another
    /// event type, or a vector above 31.
    pub fn decode(value: RegisterValue) -> Result<Option<Self>, HvError> {
        // event_pending is bit 0: checked first, as every resume asks (the bindgen
        // bitfield setter below copies bit by bit).
        if value[0] & 1 == 0 {
            return Ok(None);
        }
        let mut e = Event::default();
        e._bitfield_1.set(0, 32, value[0] & 0xffff_ffff);
        if e.event_pending() == 0 {
            return Ok(None);
        }
        if e.event_type() != PENDING_EVENT_EXCEPTION || e.vector() > 31 {
            return Err(invalid_value());
        }
        Ok(Some(PendingException {
            vector: e.vector() as u8,
            error_code: (e.deliver_error_code() != 0).then_some((value[0] >> 32) as u32),
        }))
    }
}

/// An event waiting in `HV_REGISTER_PENDING_EVENT0` that this model delivers: an
/// exception, or an external interrupt the VMM asserts directly (how OpenHCL hands
/// the guest a vector acknowledged from its 8259: `processor/mshv/x64.rs`
/// `handle_interrupt_deliverable_exit` writes an `HvX64PendingExtIntEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingEvent {
    Exception(PendingException),
    /// Delivered as an external interrupt with this vector when the guest takes
    /// interrupts (RFLAGS.IF set, no interrupt shadow).
    ExtInt {
        vector: u8,
    },
}

impl PendingEvent {
    /// The register value of an ExtINT event: hvdef `HvX64PendingExtIntEvent`,
    /// pending:1, type:3 (5), reserved:4, vector:8.
    pub fn ext_int(vector: u8) -> RegisterValue {
        [
            1 | (PENDING_EVENT_EXT_INT as u64) << 1 | (vector as u64) << 8,
            0,
        ]
    }

    /// The event a register value announces: `None` when nothing is pending; the
    /// hypervisor's refusal for a type this model does not deliver (a memory intercept,
    /// a virtualization fault, hypercall output, ...) or an exception vector above 31.
    pub fn decode(value: RegisterValue) -> Result<Option<Self>, HvError> {
        if value[0] & 1 == 0 {
            return Ok(None);
        }
        if (value[0] >> 1) & 7 == PENDING_EVENT_EXT_INT as u64 {
            return Ok(Some(PendingEvent::ExtInt {
                vector: (value[0] >> 8) as u8,
            }));
        }
        Ok(PendingException::decode(value)?.map(PendingEvent::Exception))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hvdef `HvX64PendingExtIntEvent`: the vector sits in bits 8..15, not where an
    /// exception's does (16..31).
    #[test]
    fn an_ext_int_event_decodes_with_its_vector_at_bits_8_to_15() {
        let v = PendingEvent::ext_int(0x30);
        assert_eq!(v[0], 1 | 5 << 1 | 0x30 << 8);
        assert_eq!(
            PendingEvent::decode(v),
            Ok(Some(PendingEvent::ExtInt { vector: 0x30 }))
        );
        let gp = PendingException {
            vector: 13,
            error_code: Some(0),
        };
        assert_eq!(
            PendingEvent::decode(gp.encode()),
            Ok(Some(PendingEvent::Exception(gp)))
        );
        assert_eq!(PendingEvent::decode([0, 0]), Ok(None));
        for event_type in [1u64, 2, 3, 4, 6] {
            assert!(
                PendingEvent::decode([1 | event_type << 1, 0]).is_err(),
                "type {event_type}"
            );
        }
    }

    #[test]
    fn round_trips_and_ignores_empty_events() {
        for e in [
            PendingException {
                vector: 13,
                error_code: Some(0),
            },
            PendingException {
                vector: 6,
                error_code: None,
            },
            PendingException {
                vector: 14,
                error_code: Some(0xdead_beef),
            },
        ] {
            assert_eq!(PendingException::decode(e.encode()), Ok(Some(e)));
        }
        assert_eq!(PendingException::decode([0, 0]), Ok(None));
        let gp = PendingException {
            vector: 13,
            error_code: Some(0),
        }
        .encode();
        assert_eq!(gp[0] & 1, 1, "event_pending is bit 0");
        assert_eq!(PendingException::decode([gp[0] & !1, 0]), Ok(None));
    }

    /// The event type sits in bits 1..3 (hvdef `HvX64PendingExceptionEvent`: pending:1,
    /// type:3, reserved:4, deliver_error_code:1, reserved:7, vector:16); an exception is
    /// type 0, so an injected #GP(0) is exactly `pending | vector 13 << 16 | error code flag`.
    #[test]
    fn an_exception_is_event_type_zero_at_the_documented_bits() {
        let gp = PendingException {
            vector: 13,
            error_code: Some(0),
        }
        .encode();
        assert_eq!(gp[0] & 0xffff_ffff, 1 | (1 << 8) | (13 << 16));
        assert_eq!((gp[0] >> 1) & 7, PENDING_EVENT_EXCEPTION as u64);
    }

    #[test]
    fn the_error_code_follows_the_mode_and_the_vector() {
        let gp = |code, pe| PendingException::for_mode(13, code, pe).unwrap().error_code;
        assert_eq!(gp(Some(8), true), Some(8));
        assert_eq!(
            gp(None, true),
            Some(0),
            "#GP always pushes one in protected mode"
        );
        assert_eq!(gp(Some(8), false), None, "real mode pushes none");
        let ud = PendingException::for_mode(6, None, true).unwrap();
        assert_eq!(ud.error_code, None);
        let e = PendingException::for_mode(6, Some(1), true).unwrap_err();
        assert!(
            e.to_string().contains("exception 6 has no error code"),
            "{e}"
        );
        let e = PendingException::for_mode(32, None, true).unwrap_err();
        assert!(e.to_string().contains("got 32"), "{e}");
    }

    #[test]
    fn other_event_types_are_refused_as_the_hypervisor_refuses_them() {
        for event_type in [1u64, 3, PENDING_EVENT_EXT_INT as u64] {
            let v = [1 | event_type << 1 | 13 << 16, 0];
            let e = PendingException::decode(v).unwrap_err();
            assert_eq!(e.code(), "EHYPERCALL");
            assert!(e.to_string().contains("0x50"), "{e}");
        }
        assert!(
            PendingException::decode([1 | 32 << 16, 0]).is_err(),
            "vector 32"
        );
    }
}
