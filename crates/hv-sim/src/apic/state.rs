//! The local APIC's state as data: its register page in the APIC's MMIO layout (what
//! MSHV's `HV_GET_SET_VP_STATE_LAPIC_STATE` and KVM's `kvm_lapic_state` carry) and, by
//! name, what the page cannot say exactly (the timer's deadline in guest nanoseconds,
//! interrupts accepted but not yet taken). Both directions destructure every field of
//! [`ApicState`], so a field added to it does not compile until it is saved.
//!
//! In x2APIC mode the page's ID register holds the 32-bit x2APIC ID and its LDR the
//! logical ID derived from it, as KVM's `kvm_lapic_state` does with 32-bit x2APIC IDs
//! (`kvm_apic_state_fixup`); the mode itself is IA32_APIC_BASE's, which the vCPU's
//! registers carry (`apicBase`), and the vCPU's state restores it before the page.

use super::timer::{Timer, TimerState};
use super::*;
use hv_core::state::LAPIC_STATE_SIZE;
use hv_core::Result;

/// Names of the internal values (a vCPU state's `internal`).
const TIMER_START: &str = "apic.timerStart";
const TIMER_DEADLINE: &str = "apic.timerDeadline";
const TSC_DEADLINE: &str = "apic.tscDeadline";
const TIMER_MODE: &str = "apic.timerMode";
const NMI_PENDING: &str = "apic.nmiPending";
const INIT_PENDING: &str = "apic.initPending";
const SIPI_PENDING: &str = "apic.sipiPending";
const EXTINT_PENDING: &str = "apic.extintPending";
/// The internal values of the timer the page's timer registers also describe (less
/// exactly): a page that changes those registers goes without them.
pub(crate) const TIMER_VALUES: [&str; 3] = [TIMER_START, TIMER_DEADLINE, TIMER_MODE];

/// A pending vector as a value: bit 8 says it is there.
fn vector_value(v: Option<u8>) -> u64 {
    v.map_or(0, |v| 0x100 | v as u64)
}

fn value_vector(v: u64) -> Option<u8> {
    (v & 0x100 != 0).then_some(v as u8)
}

fn put(page: &mut [u8], offset: u32, value: u32) {
    let o = offset as usize;
    page[o..o + 4].copy_from_slice(&value.to_le_bytes());
}

fn get(page: &[u8], offset: u32) -> u32 {
    let o = offset as usize;
    u32::from_le_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]])
}

impl ApicState {
    /// The register page at guest time `now` (`x2apic`: in x2APIC mode), and the
    /// internal values.
    pub fn save(&self, now: u64, x2apic: bool) -> (Vec<u8>, Vec<(String, u64)>) {
        let ApicState {
            id,
            tpr,
            ldr,
            dfr,
            svr,
            isr,
            tmr,
            irr,
            esr,
            icr,
            lvt,
            timer,
            nmi_pending,
            init_pending,
            sipi_pending,
            extint_pending,
            // In the vCPU's IA32_APIC_BASE register.
            apic_enabled: _,
            // In the vCPU's activity state register.
            startup_suspend: _,
            // Work for the run loop, not state: a restore sets it.
            reslice: _,
        } = self;
        let mut page = vec![0u8; LAPIC_STATE_SIZE];
        if x2apic {
            put(&mut page, ID, *id);
            put(&mut page, LDR, self.x2apic_ldr());
        } else {
            put(&mut page, ID, id << 24);
            put(&mut page, LDR, *ldr);
        }
        put(&mut page, VERSION, VERSION_VALUE);
        put(&mut page, TPR, *tpr);
        put(&mut page, PPR, self.ppr());
        put(&mut page, DFR, *dfr);
        put(&mut page, SVR, *svr);
        for i in 0..8 {
            put(&mut page, ISR + 16 * i as u32, isr[i]);
            put(&mut page, TMR + 16 * i as u32, tmr[i]);
            put(&mut page, IRR + 16 * i as u32, irr[i]);
        }
        put(&mut page, ESR, *esr);
        put(&mut page, ICR_LOW, *icr as u32);
        put(&mut page, ICR_HIGH, (*icr >> 32) as u32);
        for (offset, value) in LVT_OFFSETS.iter().zip(lvt) {
            put(&mut page, *offset, *value);
        }
        put(&mut page, TIMER_INITIAL, timer.initial);
        put(&mut page, TIMER_CURRENT, timer.current(now));
        put(&mut page, TIMER_DIVIDE, timer.divide_config);
        let TimerState {
            start,
            deadline,
            tsc_deadline,
            mode,
            initial: _,
            divide_config: _,
        } = timer.save();
        let internal = vec![
            (TIMER_START.into(), start),
            (TIMER_DEADLINE.into(), deadline.unwrap_or(u64::MAX)),
            (TSC_DEADLINE.into(), tsc_deadline),
            (TIMER_MODE.into(), mode as u64),
            (NMI_PENDING.into(), *nmi_pending as u64),
            (INIT_PENDING.into(), *init_pending as u64),
            (SIPI_PENDING.into(), vector_value(*sipi_pending)),
            (EXTINT_PENDING.into(), vector_value(*extint_pending)),
        ];
        (page, internal)
    }

    /// The state a page (and the internal values, where the sim made the state) at
    /// guest time `now` describes; `startup_suspend` comes from the activity state,
    /// `x2apic` (the page is an x2APIC-mode one) from IA32_APIC_BASE.
    pub fn restore(
        page: &[u8],
        internal: impl Fn(&str) -> Option<u64>,
        startup_suspend: bool,
        now: u64,
        x2apic: bool,
    ) -> Result<ApicState> {
        hv_core::state::check_lapic(page)?;
        let mut lvt = [0u32; 7];
        for ((slot, offset), bits) in lvt.iter_mut().zip(LVT_OFFSETS).zip(LVT_BITS) {
            *slot = get(page, offset) & bits;
        }
        let regs =
            |base: u32| -> [u32; 8] { std::array::from_fn(|i| get(page, base + 16 * i as u32)) };
        let initial = get(page, TIMER_INITIAL);
        let divide_config = get(page, TIMER_DIVIDE);
        let mode = match internal(TIMER_MODE) {
            Some(m) => m as u32,
            None => (lvt[1] >> 17) & 3,
        };
        let mut timer = Timer::restore(TimerState {
            initial,
            divide_config,
            start: internal(TIMER_START).unwrap_or(now),
            deadline: None,
            tsc_deadline: internal(TSC_DEADLINE).unwrap_or(0),
            mode,
        });
        let deadline = match internal(TIMER_DEADLINE) {
            Some(u64::MAX) => None,
            Some(d) => Some(d),
            None => timer.deadline_from_count(get(page, TIMER_CURRENT), now),
        };
        let mut s = timer.save();
        s.deadline = deadline;
        timer = Timer::restore(s);
        Ok(ApicState {
            id: if x2apic {
                get(page, ID)
            } else {
                get(page, ID) >> 24
            },
            tpr: get(page, TPR) & 0xff,
            ldr: get(page, LDR) & 0xff00_0000,
            dfr: get(page, DFR) | 0x0fff_ffff,
            svr: get(page, SVR) & SVR_BITS,
            isr: regs(ISR),
            tmr: regs(TMR),
            irr: regs(IRR),
            esr: get(page, ESR),
            icr: get(page, ICR_LOW) as u64 | (get(page, ICR_HIGH) as u64) << 32,
            lvt,
            timer,
            nmi_pending: internal(NMI_PENDING).is_some_and(|v| v != 0),
            init_pending: internal(INIT_PENDING).is_some_and(|v| v != 0),
            sipi_pending: internal(SIPI_PENDING).and_then(value_vector),
            extint_pending: internal(EXTINT_PENDING).and_then(value_vector),
            apic_enabled: true,
            startup_suspend,
            // The run looks at the restored timer before its first slice.
            reslice: true,
        })
    }
}

/// The LVT entries in [`ApicState::lvt`]'s order: CMCI, timer, thermal, performance,
/// LINT0, LINT1, error.
const LVT_OFFSETS: [u32; 7] = [
    LVT_CMCI,
    LVT_TIMER,
    LVT_THERMAL,
    LVT_PERF,
    LVT_LINT0,
    LVT_LINT1,
    LVT_ERROR,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_apic_restores_to_the_same_state() {
        let mut a = ApicState::reset(3);
        a.write(SVR, 0x1ff, 0);
        a.write(TPR, 0x20, 0);
        a.write(LVT_TIMER, 0x2_0030, 0); // periodic, vector 0x30
        a.write(TIMER_DIVIDE, 0xb, 0);
        a.write(TIMER_INITIAL, 1000, 100);
        a.accept(InterruptKind::Fixed, 0x41, true);
        a.accept(InterruptKind::Nmi, 0, false);
        let now = 12_345;
        let (page, internal) = a.save(now, false);
        let find = |n: &str| internal.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        let b = ApicState::restore(&page, find, false, now, false).unwrap();
        for offset in (0..0x400).step_by(0x10) {
            assert_eq!(
                a.read(offset, now),
                b.read(offset, now),
                "offset {offset:#x}"
            );
        }
        assert_eq!(a.timer.deadline, b.timer.deadline);
        assert_eq!(b.save(now, false), (page, internal.clone()));
        // The page alone (MSHV's state) still gives the timer's count.
        let c = ApicState::restore(&b.save(now, false).0, |_| None, false, now, false).unwrap();
        assert_eq!(c.read(TIMER_CURRENT, now), a.read(TIMER_CURRENT, now));
        assert!(!c.nmi_pending && b.nmi_pending);
        assert!(ApicState::restore(&[0; 16], find, false, now, false).is_err());
    }

    /// SDM vol 3 11.12.1.2, 11.12.10.2: an x2APIC-mode page holds the 32-bit x2APIC ID
    /// and the logical ID derived from it, and reads back as the same x2APIC registers.
    #[test]
    fn an_x2apic_mode_apic_restores_to_the_same_state_sdm_11_12() {
        let mut a = ApicState::reset(0x123);
        a.x2apic_write(SVR, 0x1ff, 0).unwrap();
        a.x2apic_write(TPR, 0x30, 0).unwrap();
        a.x2apic_write(ICR_LOW, 0x0000_0456_0000_40f0, 0).unwrap();
        let now = 77;
        let (page, internal) = a.save(now, true);
        assert_eq!(get(&page, ID), 0x123, "the 32-bit x2APIC ID");
        assert_eq!(get(&page, LDR), 0x12 << 16 | 1 << 3, "cluster 0x12, bit 3");
        let find = |n: &str| internal.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        let b = ApicState::restore(&page, find, false, now, true).unwrap();
        for offset in (0..0x400).step_by(0x10) {
            assert_eq!(
                a.x2apic_read(offset, now),
                b.x2apic_read(offset, now),
                "offset {offset:#x}"
            );
        }
        assert_eq!(b.save(now, true), (page, internal.clone()));
    }
}
