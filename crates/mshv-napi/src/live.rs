//! Counts of live native resources (partitions, vCPUs, guest memory regions), so that
//! tests and users can check that closing or garbage-collecting releases each once.

use napi_derive::napi;
use std::sync::atomic::{AtomicI64, Ordering};

static VMS: AtomicI64 = AtomicI64::new(0);
static VCPUS: AtomicI64 = AtomicI64::new(0);

/// Which counter a resource belongs to.
#[derive(Clone, Copy)]
pub enum Kind {
    Vm,
    Vcpu,
}

fn counter(kind: Kind) -> &'static AtomicI64 {
    match kind {
        Kind::Vm => &VMS,
        Kind::Vcpu => &VCPUS,
    }
}

/// A native resource counted from creation to drop.
pub struct Live<T> {
    value: T,
    kind: Kind,
}

impl<T> Live<T> {
    pub fn new(value: T, kind: Kind) -> Self {
        counter(kind).fetch_add(1, Ordering::SeqCst);
        Live { value, kind }
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for Live<T> {
    fn drop(&mut self) {
        counter(self.kind).fetch_sub(1, Ordering::SeqCst);
    }
}

/// Native resources alive in this process.
#[napi(object)]
pub struct LiveResources {
    /// Partitions not yet closed or collected.
    pub vms: i64,
    /// vCPUs not yet closed or collected.
    pub vcpus: i64,
    /// Host memory regions still mapped in this process (guest RAM).
    pub memory_regions: i64,
}

/// Counts of native resources alive now: each close or garbage collection releases
/// its resource exactly once, so these return to their earlier values.
#[napi]
pub fn live_resources() -> LiveResources {
    LiveResources {
        vms: VMS.load(Ordering::SeqCst),
        vcpus: VCPUS.load(Ordering::SeqCst),
        memory_regions: hv_core::memory::live_regions() as i64,
    }
}
