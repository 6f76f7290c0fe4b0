//! `RunBudget`: the limits of one whole run as TypeScript sees it (many native runs,
//! one per exit), so a guest that exits often still stops at its deadline.

use crate::errors::{guard, invalid, Result};
use crate::layout::{EXIT_INSTRUCTIONS, EXIT_SLICE, EXIT_TIMEOUT};
use hv_core::Exit;
use hv_core::RunLimits;
use napi_derive::napi;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Limits for one run.
#[napi(object)]
#[derive(Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop after this many guest instructions in all (sim).
    pub max_instructions: Option<f64>,
    /// Stop this many milliseconds after the run's first native run.
    pub timeout_ms: Option<f64>,
    /// End each native run after at most this many milliseconds with
    /// `layout().exits.slice`, so a synchronous caller regains control (to redraw a
    /// progress line, to let its event loop in) and then runs on (sim).
    pub slice_ms: Option<f64>,
    /// End the run with `layout().exits.clock` when the VM's guest time
    /// (`vm.clockNs()`) reaches this many nanoseconds: a device timer is due (sim).
    pub guest_deadline_ns: Option<f64>,
    /// Whether a vCPU halted with interrupts enabled may block the thread until an
    /// interrupt, as MSHV's does (default false: the sim returns
    /// `layout().exits.idle` instead, so the caller can wait without a thread).
    pub block_on_halt: Option<bool>,
    /// End a native run with `layout().exits.instructions` soon after the guest
    /// executes PAUSE while another vCPU is executing (sim): a turn-by-turn scheduler's
    /// spinning vCPU gives up its turn to the one it waits for.
    pub yield_on_pause: Option<bool>,
    /// Deterministic clock: when every vCPU waits in a halt, end with
    /// `layout().exits.idle` instead of leaping guest time to the next timer (the
    /// caller lets that time pass on the host's clock, then `vm.setGuestTimeNs`).
    pub idle_sleeps: Option<bool>,
}

/// The largest count or duration accepted: JavaScript's exact integer range.
const MAX: f64 = 9_007_199_254_740_991.0;

/// Where a budget ends, fixed by its first native run.
#[derive(Debug, Clone, Copy)]
struct Ends {
    /// The vCPU's retired-instruction count at which it ends.
    instructions: Option<u64>,
    deadline: Option<Instant>,
}

/// What a native run may still use.
pub(crate) enum Allowance {
    /// Run with these limits; `sliced` when the deadline is the slice's, not the run's.
    Run { limits: RunLimits, sliced: bool },
    /// Already spent: return this exit code without running.
    Spent(u32),
}

impl Allowance {
    /// The run-end code for `exit` of a native run made under this allowance, where
    /// it ended the run rather than intercepting.
    pub(crate) fn end_code(&self, exit: Exit) -> Option<u32> {
        match (self, exit) {
            (Allowance::Run { sliced: true, .. }, Exit::Timeout) => Some(EXIT_SLICE),
            (_, Exit::Timeout) => Some(EXIT_TIMEOUT),
            (_, Exit::InstructionLimit) => Some(EXIT_INSTRUCTIONS),
            _ => None,
        }
    }
}

/// One run's limits, shared by every native run of it.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    max_instructions: Option<u64>,
    timeout: Option<Duration>,
    slice: Option<Duration>,
    guest_deadline: Option<u64>,
    block_on_halt: bool,
    yield_on_pause: bool,
    idle_sleeps: bool,
    ends: Mutex<Option<Ends>>,
}

/// A whole or fractional number of milliseconds from 0 to 2^53 - 1, as a duration.
fn millis(v: Option<f64>, what: &str) -> Result<Option<Duration>> {
    v.map(|ms| {
        if ms.is_finite() && (0.0..=MAX).contains(&ms) {
            Ok(Duration::from_secs_f64(ms / 1000.0))
        } else {
            Err(invalid(format!(
                "{what} must be a number of milliseconds from 0 to 2^53-1, got {ms}"
            )))
        }
    })
    .transpose()
}

/// A whole number from 0 to 2^53 - 1.
fn whole(v: Option<f64>, what: &str) -> Result<Option<u64>> {
    v.map(|n| {
        if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= MAX {
            Ok(n as u64)
        } else {
            Err(invalid(format!(
                "{what} must be a whole number from 0 to 2^53-1, got {n}"
            )))
        }
    })
    .transpose()
}

impl Budget {
    /// Checks `options` (counts and durations are whole/finite, non-negative, and at
    /// most 2^53 - 1) before anything uses them.
    pub(crate) fn new(options: Option<RunOptions>) -> Result<Self> {
        let o = options.unwrap_or_default();
        Ok(Budget {
            max_instructions: whole(o.max_instructions, "maxInstructions")?,
            guest_deadline: whole(o.guest_deadline_ns, "guestDeadlineNs")?,
            block_on_halt: o.block_on_halt.unwrap_or(false),
            yield_on_pause: o.yield_on_pause.unwrap_or(false),
            idle_sleeps: o.idle_sleeps.unwrap_or(false),
            timeout: millis(o.timeout_ms, "timeoutMs")?,
            slice: millis(o.slice_ms, "sliceMs")?,
            ends: Mutex::default(),
        })
    }

    fn limits(&self, max_instructions: Option<u64>, deadline: Option<Instant>) -> RunLimits {
        RunLimits {
            max_instructions,
            deadline,
            guest_deadline: self.guest_deadline,
            block_on_halt: self.block_on_halt,
            yield_on_pause: self.yield_on_pause,
            idle_sleeps: self.idle_sleeps,
        }
    }

    /// The limits of the next native run of a vCPU that has retired `retired`
    /// instructions; the first call fixes where the budget ends.
    pub(crate) fn allowance(&self, retired: u64) -> Allowance {
        if self.max_instructions.is_none() && self.timeout.is_none() && self.slice.is_none() {
            // The per-exit path of an unlimited run: no lock, no clock.
            return Allowance::Run {
                limits: self.limits(None, None),
                sliced: false,
            };
        }
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        let e = *ends.get_or_insert_with(|| Ends {
            instructions: self.max_instructions.map(|n| retired.saturating_add(n)),
            // A timeout too long to represent never fires.
            deadline: self.timeout.and_then(|t| Instant::now().checked_add(t)),
        });
        let left = e.instructions.map(|end| end.saturating_sub(retired));
        if left == Some(0) {
            return Allowance::Spent(EXIT_INSTRUCTIONS);
        }
        if e.deadline.is_none() && self.slice.is_none() {
            return Allowance::Run {
                limits: self.limits(left, None),
                sliced: false,
            };
        }
        let now = Instant::now();
        if e.deadline.is_some_and(|d| now >= d) {
            return Allowance::Spent(EXIT_TIMEOUT);
        }
        let slice_end = self.slice.and_then(|s| now.checked_add(s));
        let sliced = match (slice_end, e.deadline) {
            (Some(s), Some(d)) => s < d,
            (Some(_), None) => true,
            _ => false,
        };
        Allowance::Run {
            limits: self.limits(left, if sliced { slice_end } else { e.deadline }),
            sliced,
        }
    }
}

/// The limits of one whole run (`maxInstructions`, `timeoutMs`), for `Vcpu.runnerHandle()`
/// and `Vcpu.run()`: the clock starts at the first native run that uses it.
#[napi]
pub struct RunBudget {
    pub(crate) inner: Arc<Budget>,
}

#[napi]
impl RunBudget {
    #[napi(constructor)]
    pub fn new(options: Option<RunOptions>) -> Result<Self> {
        guard("new RunBudget", || {
            Ok(RunBudget {
                inner: Arc::new(Budget::new(options)?),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_instructions: Option<f64>, timeout_ms: Option<f64>) -> Result<Budget> {
        Budget::new(Some(RunOptions {
            max_instructions,
            timeout_ms,
            ..RunOptions::default()
        }))
    }

    fn limits(a: Allowance) -> RunLimits {
        match a {
            Allowance::Run { limits, .. } => limits,
            Allowance::Spent(code) => panic!("spent: {code:#x}"),
        }
    }

    #[test]
    fn bad_counts_and_durations_are_einval_never_a_panic() {
        for bad in [-1.0, 1.5, f64::NAN, f64::INFINITY, 1e300, 1e22] {
            assert_eq!(budget(Some(bad), None).unwrap_err().status, "EINVAL");
        }
        for bad in [
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            1e22,
        ] {
            let e = budget(None, Some(bad)).unwrap_err();
            assert_eq!(e.status, "EINVAL");
            assert!(e.reason.contains("timeoutMs"), "{}", e.reason);
        }
        // The longest accepted timeout is representable; its deadline may not be.
        let b = budget(None, Some(MAX)).unwrap();
        assert!(matches!(b.allowance(0), Allowance::Run { .. }));
    }

    #[test]
    fn instructions_count_across_native_runs_from_the_first() {
        let b = budget(Some(100.0), None).unwrap();
        assert_eq!(limits(b.allowance(1000)).max_instructions, Some(100));
        assert_eq!(limits(b.allowance(1060)).max_instructions, Some(40));
        assert!(matches!(
            b.allowance(1100),
            Allowance::Spent(EXIT_INSTRUCTIONS)
        ));
    }

    #[test]
    fn the_deadline_is_fixed_by_the_first_run() {
        let b = budget(None, Some(0.0)).unwrap();
        assert!(matches!(b.allowance(0), Allowance::Spent(EXIT_TIMEOUT)));
        let b = budget(None, Some(60_000.0)).unwrap();
        let first = limits(b.allowance(0));
        let second = limits(b.allowance(5));
        assert_eq!(first.deadline, second.deadline);
    }

    #[test]
    fn a_slice_ends_one_native_run_early_and_says_so() {
        let b = Budget::new(Some(RunOptions {
            max_instructions: None,
            timeout_ms: Some(60_000.0),
            slice_ms: Some(10.0),
            ..RunOptions::default()
        }))
        .unwrap();
        let a = b.allowance(0);
        let Allowance::Run { limits, sliced } = &a else {
            panic!("nothing spent")
        };
        assert!(*sliced);
        let d = limits.deadline.unwrap();
        assert!(d <= Instant::now() + Duration::from_millis(10));
        assert_eq!(a.end_code(Exit::Timeout), Some(EXIT_SLICE));
        // A slice longer than what is left of the run: the run's deadline rules.
        let short = Budget::new(Some(RunOptions {
            max_instructions: None,
            timeout_ms: Some(5.0),
            slice_ms: Some(60_000.0),
            ..RunOptions::default()
        }))
        .unwrap();
        assert_eq!(
            short.allowance(0).end_code(Exit::Timeout),
            Some(EXIT_TIMEOUT)
        );
        assert_eq!(a.end_code(Exit::InstructionLimit), Some(EXIT_INSTRUCTIONS));
        assert_eq!(a.end_code(Exit::Message), None);
    }

    #[test]
    fn a_guest_deadline_and_halt_blocking_reach_every_native_run() {
        let b = Budget::new(Some(RunOptions {
            guest_deadline_ns: Some(5_000.0),
            block_on_halt: Some(true),
            ..RunOptions::default()
        }))
        .unwrap();
        let l = limits(b.allowance(0));
        assert_eq!((l.guest_deadline, l.block_on_halt), (Some(5_000), true));
        let l = limits(budget(None, None).unwrap().allowance(0));
        assert_eq!((l.guest_deadline, l.block_on_halt), (None, false));
        let e = Budget::new(Some(RunOptions {
            guest_deadline_ns: Some(-1.0),
            ..RunOptions::default()
        }))
        .err()
        .unwrap();
        assert!(e.reason.contains("guestDeadlineNs"), "{}", e.reason);
    }
}
