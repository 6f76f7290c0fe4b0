//! Typed backend errors become JS `Error`s whose `code` is the error's stable code.

use hv_core::HvError;

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

/// Reads a JS BigInt as an exact u64, naming `what` when it does not fit.
pub fn u64_arg(v: &napi::bindgen_prelude::BigInt, what: &str) -> Result<u64> {
    let (signed, value, lossless) = v.get_u64();
    if signed || !lossless {
        return Err(invalid(format!(
            "{what} must be a BigInt between 0 and 2^64-1, got {}{}",
            if signed { "-" } else { "" },
            v.words
                .iter()
                .rev()
                .map(|w| format!("{w:016x}"))
                .collect::<String>()
        )));
    }
    Ok(value)
}
