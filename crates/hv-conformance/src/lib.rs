//! The backend checklist: what a hypervisor must deliver at the VMM boundary, written
//! once against [`hv_core::HvBackend`] and run on every backend.
//!
//! The sim runs it in CI (`crates/hv-sim/tests/conformance.rs`); on a host with
//! `/dev/mshv` the device tests (`crates/hv-mshv/tests/device.rs`) and `mshv doctor`
//! run the same list, so a fact the sim was taught and the real hypervisor disagrees
//! with shows up as one named failure. Each check names the reference its expectation
//! comes from.

mod checks;
mod guest;

pub use guest::Guest;

use hv_core::{HvBackend, HvError};
use thiserror::Error;

/// Why a check failed.
#[derive(Debug, Error)]
pub enum CheckError {
    /// The backend refused an operation the check needs.
    #[error(transparent)]
    Hv(#[from] HvError),
    /// The backend answered, but not as the reference says it must.
    #[error("{0}")]
    Mismatch(String),
}

/// A check's result: what it saw when it passed (for the report), or why it failed.
pub type Outcome = Result<String, CheckError>;

/// One item of the checklist.
#[derive(Clone, Copy)]
pub struct Check {
    /// A short name, stable across releases (reports and test names use it).
    pub name: &'static str,
    /// What it establishes, in one line.
    pub summary: &'static str,
    pub run: fn(&dyn HvBackend) -> Outcome,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Check({})", self.name)
    }
}

/// The checklist, in the order a report lists it.
pub fn checklist() -> &'static [Check] {
    checks::ALL
}

/// Runs one check, turning a panic inside it into a failure (a check runs native code
/// under a JavaScript caller, where a panic must never unwind out).
pub fn run_check(check: &Check, hv: &dyn HvBackend) -> Outcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(hv))) {
        Ok(outcome) => outcome,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(CheckError::Mismatch(format!("the check panicked: {what}")))
        }
    }
}

/// The checklist as cargo tests (a `harness = false` test target's trials): one per
/// check, named for it, printing what it saw. `ignored` (with the reason printed
/// once) makes cargo report them as ignored, not passed, where the backend is absent.
#[cfg(feature = "harness")]
pub fn trials(
    hv: impl Fn() -> Result<Box<dyn HvBackend>, HvError> + Send + Sync + 'static,
    ignored: Option<&str>,
) -> Vec<libtest_mimic::Trial> {
    if let Some(reason) = ignored {
        eprintln!("conformance checks ignored: {reason}");
    }
    let hv = std::sync::Arc::new(hv);
    checklist()
        .iter()
        .map(|check| {
            let hv = std::sync::Arc::clone(&hv);
            libtest_mimic::Trial::test(check.name, move || {
                let backend = hv().map_err(|e| format!("cannot open the backend: {e}"))?;
                match run_check(check, backend.as_ref()) {
                    Ok(detail) => {
                        println!("{}: {detail}", check.name);
                        Ok(())
                    }
                    Err(e) => Err(format!("{}: {e}", check.summary).into()),
                }
            })
            .with_ignored_flag(ignored.is_some())
        })
        .collect()
}
