//! What the hypervisor decides for its processor: CPUID from the results the VMM
//! registered over the processor's own, and which MSRs exit.

use crate::SimConfig;
use hv_core::{CpuidResult, UnknownMsr};

pub struct SimEnv<'a> {
    pub config: &'a SimConfig,
    pub cpuid: &'a [CpuidResult],
    pub apic_id: u32,
}

impl sim_cpu::Env for SimEnv<'_> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32, native: [u32; 4]) -> [u32; 4] {
        hv_core::cpuid::apply(self.cpuid, leaf, subleaf, native)
    }

    fn msr_exits(&self, msr: u32) -> bool {
        self.config.intercept_msrs.contains(&msr)
    }

    fn unknown_msr(&self) -> UnknownMsr {
        self.config.unknown_msr
    }

    fn apic_id(&self) -> u32 {
        self.apic_id
    }
}
