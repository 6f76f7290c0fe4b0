//! The VMM's interrupt requests as JavaScript writes them: `Vm.requestInterrupt` and
//! `Vm.signalMsi`, checked here and delivered by the backend's [`hv_core::Interrupts`].

use crate::errors::{invalid, Result};
use hv_core::{InterruptKind, InterruptRequest};
use napi_derive::napi;

/// One interrupt for `Vm.requestInterrupt` (MSHV's `HVCALL_ASSERT_VIRTUAL_INTERRUPT`).
#[napi(object)]
pub struct InterruptOptions {
    /// 'fixed' (default) | 'lowest-priority' | 'nmi' | 'init' | 'sipi' | 'extint'.
    pub kind: Option<String>,
    /// The destination APIC id, or the logical destination when `logical`.
    pub destination: u32,
    /// Logical destination mode (default physical).
    pub logical: Option<bool>,
    /// The vector: 16-255 for fixed, lowest-priority and extint; the start page for
    /// sipi; ignored for nmi and init.
    pub vector: Option<u32>,
    /// Level-triggered: the vector's EOI comes back as an `apicEoi` exit.
    pub level: Option<bool>,
}

impl InterruptOptions {
    /// The request these options describe, checked as a local APIC would take it.
    pub(crate) fn request(&self) -> Result<InterruptRequest> {
        let kind = match self.kind.as_deref() {
            None => InterruptKind::Fixed,
            Some(name) => InterruptKind::from_name(name).ok_or_else(|| {
                invalid(format!(
                    "kind must be 'fixed', 'lowest-priority', 'nmi', 'init', 'sipi' or 'extint', got '{name}'"
                ))
            })?,
        };
        let vector = self.vector.unwrap_or(0);
        let vector = u8::try_from(vector)
            .map_err(|_| invalid(format!("vector must be 0..=255, got {vector}")))?;
        let request = InterruptRequest {
            kind,
            destination: self.destination,
            logical: self.logical.unwrap_or(false),
            vector,
            level: self.level.unwrap_or(false),
        };
        request.check().map_err(crate::errors::to_js)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(kind: Option<&str>, vector: Option<u32>) -> InterruptOptions {
        InterruptOptions {
            kind: kind.map(str::to_string),
            destination: 0,
            logical: None,
            vector,
            level: None,
        }
    }

    #[test]
    fn bad_kinds_and_vectors_are_einval_naming_the_value() {
        let e = options(Some("smi"), Some(32)).request().unwrap_err();
        assert_eq!(e.status, "EINVAL");
        assert!(e.reason.contains("'smi'"), "{}", e.reason);
        let e = options(None, Some(256)).request().unwrap_err();
        assert!(e.reason.contains("256"), "{}", e.reason);
        let e = options(None, Some(15)).request().unwrap_err();
        assert_eq!(e.status, "EINVAL");
        assert!(options(Some("nmi"), None).request().is_ok());
        let r = options(Some("lowest-priority"), Some(0x30))
            .request()
            .unwrap();
        assert_eq!((r.kind, r.vector), (InterruptKind::LowestPriority, 0x30));
    }
}
