//! The local APIC's acceptance, arbitration and EOI against a small model written from
//! the SDM's words (vol 3 11.8.3 "Interrupt, Task, and Processor Priority", 11.8.4
//! "Interrupt Acceptance for Fixed Interrupts", 11.8.5 "Signaling Interrupt
//! Servicing Completion"), over random sequences of operations: sets of vectors, no
//! bitmaps.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
enum Op {
    /// The VMM or a device raises a fixed interrupt.
    Raise { vector: u8, level: bool },
    /// The processor reaches an instruction boundary with IF = `interruptible`.
    Boundary { interruptible: bool },
    /// The guest writes EOI.
    Eoi,
    /// The guest writes TPR.
    Tpr(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (16u8..=255, any::<bool>()).prop_map(|(vector, level)| Op::Raise { vector, level }),
        4 => any::<bool>().prop_map(|interruptible| Op::Boundary { interruptible }),
        2 => Just(Op::Eoi),
        1 => any::<u8>().prop_map(Op::Tpr),
    ]
}

#[derive(Default)]
struct Model {
    requested: BTreeSet<u8>,
    in_service: BTreeSet<u8>,
    level: BTreeSet<u8>,
    tpr: u8,
}

impl Model {
    /// 11.8.3.1: PPR is TPR when TPR's class is at least the highest in-service
    /// vector's class; otherwise that class (low nibble zero).
    fn ppr(&self) -> u8 {
        let isrv = self.in_service.last().copied().unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// 11.8.4: the highest requested vector is dispatched when its class is above
    /// PPR's class; it moves from requested to in service.
    fn boundary(&mut self, interruptible: bool) -> Option<u8> {
        if !interruptible {
            return None;
        }
        let v = *self.requested.last()?;
        if v >> 4 <= self.ppr() >> 4 {
            return None;
        }
        self.requested.remove(&v);
        self.in_service.insert(v);
        Some(v)
    }

    /// 11.8.5: EOI retires the highest in-service vector; a level-triggered one is
    /// broadcast (here: reported to the VMM). Its TMR bit stays: 11.8.4 changes it only
    /// at acceptance.
    fn eoi(&mut self) -> Option<u8> {
        let v = self.in_service.pop_last()?;
        self.level.contains(&v).then_some(v)
    }

    fn raise(&mut self, vector: u8, level: bool) {
        self.requested.insert(vector);
        if level {
            self.level.insert(vector);
        } else {
            self.level.remove(&vector);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitration_and_eoi_follow_the_sdm(ops in proptest::collection::vec(op(), 1..60)) {
        let mut apic = ApicState::reset(0);
        apic.write(SVR, 0x1ff, 0);
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Raise { vector, level } => {
                    apic.accept(InterruptKind::Fixed, vector, level);
                    model.raise(vector, level);
                }
                Op::Boundary { interruptible } => {
                    let got = match apic.take(interruptible, false) {
                        Some(Event::Interrupt(v)) => Some(v),
                        None => None,
                        Some(other) => panic!("{other:?} from fixed interrupts alone"),
                    };
                    prop_assert_eq!(got, model.boundary(interruptible));
                }
                Op::Eoi => {
                    let (_, reported) = apic.write(EOI, 0, 0);
                    prop_assert_eq!(reported, model.eoi());
                }
                Op::Tpr(t) => {
                    apic.write(TPR, t as u32, 0);
                    model.tpr = t;
                }
            }
            prop_assert_eq!(apic.read(PPR, 0), model.ppr() as u32);
            let tmr: BTreeSet<u8> = (0..=255u8)
                .filter(|&v| apic.read(TMR + 16 * (v as u32 >> 5), 0) & (1 << (v & 31)) != 0)
                .collect();
            prop_assert_eq!(&tmr, &model.level);
            let pending = model.requested.last().is_some_and(|&v| v >> 4 > model.ppr() >> 4);
            prop_assert_eq!(apic.events() & EVENT_MASKABLE != 0, pending);
        }
    }
}
