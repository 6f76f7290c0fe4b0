//! Hypercall and exit counters, kept identically by both backends so that a benchmark
//! reads the same figures whichever backend ran.

/// Per-vCPU counters. Plain integers: a vCPU is driven by one thread at a time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Batched get-register hypercalls.
    pub get_registers: u64,
    /// Batched set-register hypercalls.
    pub set_registers: u64,
    /// GVA translation hypercalls.
    pub translate_gva: u64,
    /// Registers fetched through get-register hypercalls.
    pub registers_read: u64,
    /// Registers written through set-register hypercalls.
    pub registers_written: u64,
    /// Calls into `run()`.
    pub runs: u64,
    /// Exits, by message type.
    pub exits: Vec<ExitCounter>,
}

/// Number of exits seen for one message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCounter {
    pub message_type: u32,
    pub count: u64,
}

impl Counters {
    /// Total hypercalls of every kind.
    pub fn hypercalls(&self) -> u64 {
        self.get_registers + self.set_registers + self.translate_gva
    }

    /// Counts one exit of `message_type`.
    pub fn count_exit(&mut self, message_type: u32) {
        match self
            .exits
            .iter_mut()
            .find(|e| e.message_type == message_type)
        {
            Some(e) => e.count += 1,
            None => self.exits.push(ExitCounter {
                message_type,
                count: 1,
            }),
        }
    }
}
