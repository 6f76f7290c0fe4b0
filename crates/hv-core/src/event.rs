//! Exception injection: the `HV_REGISTER_PENDING_EVENT0` value a VMM writes to make the
//! vCPU take an exception (a #GP for a refused MSR, say) when it next resumes.
//!
//! Encoding and decoding go through mshv-bindings' own bitfield accessors, so the sim,
//! the real backend and TypeScript agree on the layout without retyping it.

use crate::regs::RegisterValue;
use mshv_bindings::{
    hv_x64_pending_exception_event__bindgen_ty_1 as Event, HV_X64_PENDING_EXCEPTION,
};

/// An exception waiting to be delivered at the next resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingException {
    pub vector: u8,
    /// Pushed on the handler's stack when present.
    pub error_code: Option<u32>,
}

impl PendingException {
    /// The register value announcing this exception.
    pub fn encode(&self) -> RegisterValue {
        let mut e = Event::default();
        e.set_event_pending(1);
        e.set_event_type(HV_X64_PENDING_EXCEPTION);
        e.set_vector(self.vector as u32);
        e.set_deliver_error_code(self.error_code.is_some() as u32);
        e.error_code = self.error_code.unwrap_or(0);
        let bits = e._bitfield_1.get(0, 32);
        [bits | (e.error_code as u64) << 32, e.exception_parameter]
    }

    /// The exception a register value announces; `None` when nothing is pending or the
    /// event is not an exception.
    pub fn decode(value: RegisterValue) -> Option<Self> {
        let mut e = Event::default();
        e._bitfield_1.set(0, 32, value[0] & 0xffff_ffff);
        if e.event_pending() == 0 || e.event_type() != HV_X64_PENDING_EXCEPTION {
            return None;
        }
        Some(PendingException {
            vector: e.vector() as u8,
            error_code: (e.deliver_error_code() != 0).then_some((value[0] >> 32) as u32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_empty_events() {
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
            assert_eq!(PendingException::decode(e.encode()), Some(e));
        }
        assert_eq!(PendingException::decode([0, 0]), None);
        let gp = PendingException {
            vector: 13,
            error_code: Some(0),
        }
        .encode();
        assert_eq!(gp[0] & 1, 1, "event_pending is bit 0");
        assert_eq!(PendingException::decode([gp[0] & !1, 0]), None);
    }
}
