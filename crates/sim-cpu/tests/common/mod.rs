//! What the sim-cpu tests share: guest RAM from address 0 as a processor's physical map.

use hv_core::{HostRegion, MemoryMapping};
use sim_cpu::phys::PhysMap;
use std::sync::Arc;

/// `ram` mapped at GPA 0, writable and executable, with nothing intercepted.
pub fn ram_map(ram: &Arc<HostRegion>) -> PhysMap {
    PhysMap {
        slots: vec![MemoryMapping {
            gpa: 0,
            region: Arc::clone(ram),
            writable: true,
            executable: true,
        }],
        intercepts: vec![],
        generation: 1,
        dirty: None,
    }
}
