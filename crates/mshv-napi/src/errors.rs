//! Typed backend errors become JS `Error`s whose `code` is the error's stable code, and
//! no panic ever crosses into JavaScript.

use hv_core::HvError;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A napi error carrying an errno-like string code.
pub type JsError = napi::Error<String>;
/// Result of a binding call.
pub type Result<T> = std::result::Result<T, JsError>;

pub fn to_js(e: HvError) -> JsError {
    napi::Error::new(e.code().to_string(), e.to_string())
}

pub fn invalid(msg: String) -> JsError {
    napi::Error::new("EINVAL".to_string(), msg)
}

pub fn closed(what: &'static str) -> JsError {
    to_js(HvError::Closed(what))
}

/// Converts a napi-rs error (from a napi call) into ours.
pub fn from_napi(e: napi::Error) -> JsError {
    napi::Error::new("ENAPI".to_string(), e.reason.clone())
}

/// The text a panic carried.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// Runs one binding entry point's body; a panic becomes an `EPANIC` error naming
/// `what`, so Node never aborts (a panic unwinding into N-API would).
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(napi::Error::new(
            "EPANIC".to_string(),
            format!(
                "{what}: the native code panicked ({}); this is a bug in mshv, please report it",
                panic_message(payload.as_ref())
            ),
        ))
    })
}

/// Reads a JS BigInt as an exact u64, naming `what` when it does not fit.
pub fn u64_arg(v: &napi::bindgen_prelude::BigInt, what: &str) -> Result<u64> {
    let (signed, value, lossless) = v.get_u64();
    if signed || !lossless {
        return Err(invalid(format!(
            "{what} must be a BigInt between 0 and 2^64-1, got {}0x{}",
            if signed { "-" } else { "" },
            v.words
                .iter()
                .rev()
                .map(|w| format!("{w:016x}"))
                .collect::<String>()
                .trim_start_matches('0')
        )));
    }
    Ok(value)
}

/// Reads a JS number that must be a whole number in `0..=max`, naming `what`.
pub fn whole(v: f64, what: &str, max: f64) -> Result<u64> {
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= max) {
        return Err(invalid(format!(
            "{what} must be a whole number from 0 to {max}, got {v}"
        )));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_epanic_error_naming_the_entry_point() {
        let e = guard::<()>("Vcpu.run", || panic!("boom")).unwrap_err();
        assert_eq!(e.status, "EPANIC");
        assert!(
            e.reason.contains("Vcpu.run") && e.reason.contains("boom"),
            "{}",
            e.reason
        );
        assert_eq!(guard("x", || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn whole_numbers_are_checked_against_their_range() {
        assert_eq!(whole(5.0, "n", 10.0).unwrap(), 5);
        for bad in [-1.0, 1.5, f64::NAN, f64::INFINITY, 11.0, 1e300] {
            let e = whole(bad, "n", 10.0).unwrap_err();
            assert_eq!(e.status, "EINVAL");
            assert!(e.reason.starts_with("n must be"), "{}", e.reason);
        }
    }
}
