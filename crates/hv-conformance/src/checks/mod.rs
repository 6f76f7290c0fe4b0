//! The checks, one module per area; [`ALL`] is the order reports use.

mod cpu;
mod interrupts;
mod io;
mod lifecycle;
mod memory;
mod registers;
mod state;

use crate::Check;

pub static ALL: &[Check] = &[
    memory::PARTITION,
    memory::MAP_UNMAP,
    io::PIO_OUT,
    io::PIO_IN,
    io::STRING_IO,
    memory::MMIO,
    cpu::CPUID_RESULTS,
    cpu::MSR_INTERCEPT,
    cpu::HLT,
    cpu::EXCEPTION_INJECTION,
    cpu::PENDING_EXT_INT,
    interrupts::INTERRUPT_REQUEST,
    interrupts::LINT0_EXTINT,
    registers::REGISTER_PAGE,
    registers::NO_REGISTER_PAGE,
    registers::BAD_REGISTER_IDS,
    state::VCPU_STATE,
    state::DEBUG_STOPS,
    state::DIRTY_LOG,
    lifecycle::CANCEL,
    lifecycle::DEADLINE,
    lifecycle::CLOSE,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<_> = super::ALL.iter().map(|c| c.name).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), super::ALL.len());
    }
}
