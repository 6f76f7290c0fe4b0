//! The local APIC timer (SDM vol 3 11.5.4): one-shot and periodic modes counting the
//! initial count down at the core crystal clock divided by the divide configuration,
//! and TSC-deadline mode (IA32_TSC_DEADLINE). Time is the guest's TSC, which runs at
//! 1 GHz here, so one tick of it is a nanosecond of guest time.

/// The core crystal clock, which is also the APIC timer's input: 25 MHz, one tick per
/// 40 ns. CPUID leaf 0x15 reports it (TSC = crystal × 40 / 1 = 1 GHz).
pub const CRYSTAL_HZ: u64 = sim_cpu::cpuid::CRYSTAL_HZ as u64;
pub const NS_PER_TICK: u64 = 1_000_000_000 / CRYSTAL_HZ;

const ONE_SHOT: u32 = 0;
const PERIODIC: u32 = 1;
const TSC_DEADLINE: u32 = 2;

#[derive(Debug, Clone, Copy, Default)]
pub struct Timer {
    pub initial: u32,
    pub divide_config: u32,
    /// When the current count was loaded, and when it reaches zero.
    pub start: u64,
    pub deadline: Option<u64>,
    /// IA32_TSC_DEADLINE.
    pub tsc_deadline: u64,
    mode: u32,
}

impl Timer {
    /// The divisor the divide configuration register selects (bits 0, 1 and 3).
    fn divisor(&self) -> u64 {
        let v = (self.divide_config & 3) | (self.divide_config >> 1 & 4);
        if v == 7 {
            1
        } else {
            2 << v
        }
    }

    fn period(&self) -> u64 {
        self.initial as u64 * self.divisor() * NS_PER_TICK
    }

    /// The LVT timer entry was written. Only a switch to or from TSC-deadline mode
    /// disarms the timer (SDM vol 3 11.5.4.1); between one-shot and periodic the count
    /// in progress goes on from where it is (kvm-unit-tests' apic.c
    /// `test_apic_change_mode` checks TMICT and TMCCT across such a change), and the
    /// new mode decides what happens when it reaches zero.
    pub fn set_mode(&mut self, lvt: u32, _now: u64) {
        let mode = (lvt >> 17) & 3;
        if mode != self.mode && (mode == TSC_DEADLINE || self.mode == TSC_DEADLINE) {
            self.initial = 0;
            self.deadline = None;
            self.tsc_deadline = 0;
        }
        self.mode = mode;
    }

    /// A write of the initial count (re)starts the count; 0 stops it. Ignored in
    /// TSC-deadline mode.
    pub fn set_initial(&mut self, value: u32, _lvt: u32, now: u64) {
        if self.mode == TSC_DEADLINE {
            return;
        }
        self.initial = value;
        self.start = now;
        self.deadline = (value != 0).then(|| now + self.period());
    }

    pub fn set_divide(&mut self, value: u32, now: u64) {
        // The count in progress keeps its remaining ticks at the new rate.
        let remaining = self.current(now) as u64;
        self.divide_config = value & 0xb;
        let tick = self.divisor_of(value) * NS_PER_TICK;
        if self.mode != TSC_DEADLINE {
            if let Some(d) = self.deadline.as_mut() {
                *d = now + remaining * tick;
            }
        }
    }

    fn divisor_of(&self, config: u32) -> u64 {
        let v = (config & 3) | (config >> 1 & 4);
        if v == 7 {
            1
        } else {
            2 << v
        }
    }

    /// IA32_TSC_DEADLINE written: arms (or, with 0, disarms) the deadline; ignored
    /// outside TSC-deadline mode.
    pub fn set_tsc_deadline(&mut self, value: u64, now: u64) {
        if self.mode != TSC_DEADLINE {
            return;
        }
        self.tsc_deadline = value;
        self.deadline = (value != 0).then_some(value.max(now));
    }

    /// The current count register.
    pub fn current(&self, now: u64) -> u32 {
        match (self.mode, self.deadline) {
            (TSC_DEADLINE, _) | (_, None) => 0,
            (_, Some(d)) => {
                let left = d.saturating_sub(now);
                let tick = self.divisor() * NS_PER_TICK;
                left.div_ceil(tick).min(self.initial as u64) as u32
            }
        }
    }

    pub fn due(&self, now: u64) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// After the timer fired at `now`: a periodic count reloads, a one-shot one stops,
    /// a TSC deadline clears itself.
    pub fn fired(&mut self, now: u64, _lvt: u32) {
        match self.mode {
            PERIODIC if self.period() > 0 => {
                let p = self.period();
                let mut d = self.deadline.unwrap_or(now);
                while d <= now {
                    d += p;
                }
                self.start = d - p;
                self.deadline = Some(d);
            }
            ONE_SHOT | PERIODIC => self.deadline = None,
            _ => {
                self.tsc_deadline = 0;
                self.deadline = None;
            }
        }
    }
}

/// The timer as named values, for a vCPU's state ([`Timer::save`] and
/// [`Timer::restore`] destructure every field, so a new one cannot be forgotten).
pub struct TimerState {
    pub initial: u32,
    pub divide_config: u32,
    pub start: u64,
    pub deadline: Option<u64>,
    pub tsc_deadline: u64,
    pub mode: u32,
}

impl Timer {
    pub fn save(&self) -> TimerState {
        let Timer {
            initial,
            divide_config,
            start,
            deadline,
            tsc_deadline,
            mode,
        } = *self;
        TimerState {
            initial,
            divide_config,
            start,
            deadline,
            tsc_deadline,
            mode,
        }
    }

    pub fn restore(s: TimerState) -> Timer {
        let TimerState {
            initial,
            divide_config,
            start,
            deadline,
            tsc_deadline,
            mode,
        } = s;
        Timer {
            initial,
            divide_config: divide_config & 0xb,
            start,
            deadline,
            tsc_deadline,
            mode: mode & 3,
        }
    }

    /// The deadline a count of `current` at `now` comes to (a state that has only the
    /// register page: MSHV's).
    pub fn deadline_from_count(&self, current: u32, now: u64) -> Option<u64> {
        (current != 0 && self.mode != TSC_DEADLINE)
            .then(|| now + current as u64 * self.divisor() * NS_PER_TICK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_periodic_and_tsc_deadline() {
        let mut t = Timer {
            divide_config: 0xb, // divide by 1
            ..Timer::default()
        };
        t.set_mode(0, 0);
        t.set_initial(100, 0, 1000);
        assert_eq!(t.deadline, Some(1000 + 100 * NS_PER_TICK));
        assert_eq!(t.current(1000 + 40 * NS_PER_TICK), 60);
        t.fired(1000 + 100 * NS_PER_TICK, 0);
        assert_eq!(t.deadline, None);
        t.set_mode(PERIODIC << 17, 0);
        t.set_initial(10, 0, 0);
        t.fired(10 * NS_PER_TICK, 0);
        assert_eq!(t.deadline, Some(20 * NS_PER_TICK));
        t.set_mode(TSC_DEADLINE << 17, 0);
        assert_eq!(t.deadline, None, "a mode change stops the timer");
        t.set_tsc_deadline(5_000, 100);
        assert!(t.due(5_000) && !t.due(4_999));
        t.fired(5_000, 0);
        assert_eq!((t.tsc_deadline, t.deadline), (0, None));
    }

    #[test]
    fn only_a_switch_to_or_from_tsc_deadline_mode_disarms_the_timer_sdm_11_5_4_1() {
        let tick = NS_PER_TICK; // divide by 1
        let mut t = Timer {
            divide_config: 0xb,
            ..Timer::default()
        };
        t.set_initial(100, 0, 0);
        t.set_mode(PERIODIC << 17, 10 * tick);
        assert_eq!(t.initial, 100, "one-shot to periodic keeps TMICT");
        assert_eq!(t.current(10 * tick), 90, "and the count in progress");
        // The count reaches zero in periodic mode: it reloads.
        t.fired(100 * tick, 0);
        assert_eq!(t.deadline, Some(200 * tick));
        t.set_mode(ONE_SHOT << 17, 150 * tick);
        assert_eq!(
            t.current(150 * tick),
            50,
            "periodic to one-shot keeps counting"
        );
        t.fired(200 * tick, 0);
        assert_eq!(
            (t.deadline, t.current(200 * tick)),
            (None, 0),
            "and stops at zero"
        );
        // At zero with TMICT still set, periodic mode does not restart it.
        t.set_mode(PERIODIC << 17, 210 * tick);
        assert_eq!((t.initial, t.current(210 * tick)), (100, 0));
        // To TSC-deadline mode and back: disarmed, TMICT cleared.
        t.set_initial(100, 0, 300 * tick);
        t.set_mode(TSC_DEADLINE << 17, 310 * tick);
        assert_eq!((t.initial, t.deadline), (0, None));
        t.set_tsc_deadline(1_000 * tick, 310 * tick);
        t.set_mode(ONE_SHOT << 17, 320 * tick);
        assert_eq!((t.initial, t.deadline, t.tsc_deadline), (0, None, 0));
    }

    #[test]
    fn the_divide_configuration_encodes_powers_of_two() {
        let mut t = Timer::default();
        for (config, div) in [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ] {
            t.divide_config = config;
            assert_eq!(t.divisor(), div, "config {config:#b}");
        }
    }
}
