//! A simulated partition: the memory map and the vCPUs it made.

use crate::apic::bus::ApicBus;
use crate::clock::Clock;
use crate::exec_lock::ExecLock;
use crate::vcpu::SimVcpu;
use crate::SimConfig;
use hv_core::backend::check_mapping;
use hv_core::{HvError, MemoryMapping, Result, VcpuBackend, VmBackend};
use sim_cpu::phys::{DirtyLog, PhysMap};
use std::sync::{Arc, Mutex};

/// The partition's memory map as the vCPUs share it: the current copy, and its
/// generation, which a vCPU compares before each run instead of taking the lock.
#[derive(Default)]
pub struct SharedMap {
    pub map: Mutex<Arc<PhysMap>>,
    pub generation: std::sync::atomic::AtomicU64,
}

pub struct SimVm {
    config: Arc<SimConfig>,
    memory: Arc<SharedMap>,
    vcpus: Vec<u8>,
    bus: Arc<ApicBus>,
    clock: Arc<Clock>,
    exec: Arc<ExecLock>,
}

impl SimVm {
    pub(crate) fn new(config: SimConfig) -> Self {
        let clock = Arc::new(Clock::new(config.clock));
        SimVm {
            config: Arc::new(config),
            memory: Arc::default(),
            vcpus: Vec::new(),
            bus: Arc::new(ApicBus::new(Arc::clone(&clock))),
            clock,
            exec: Arc::default(),
        }
    }

    /// Publishes a changed copy of the memory map.
    fn update(&self, f: impl FnOnce(&mut PhysMap) -> Result<()>) -> Result<()> {
        let mut guard = self
            .memory
            .map
            .lock()
            .map_err(|_| HvError::Unsupported("the memory map lock is poisoned".into()))?;
        let mut next = PhysMap::clone(&guard);
        f(&mut next)?;
        next.generation += 1;
        let generation = next.generation;
        *guard = Arc::new(next);
        self.memory
            .generation
            .store(generation, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

impl VmBackend for SimVm {
    fn map_memory(&mut self, mapping: MemoryMapping) -> Result<()> {
        self.update(|m| {
            check_mapping(&mapping, &m.slots)?;
            m.slots.push(mapping);
            m.slots.sort_by_key(|s| s.gpa);
            Ok(())
        })
    }

    fn unmap_memory(&mut self, gpa: u64) -> Result<MemoryMapping> {
        let mut removed = None;
        self.update(|m| {
            let i = m
                .slots
                .iter()
                .position(|s| s.gpa == gpa)
                .ok_or(HvError::NotMapped(gpa))?;
            removed = Some(m.slots.remove(i));
            Ok(())
        })?;
        removed.ok_or(HvError::NotMapped(gpa))
    }

    fn intercept_range(&mut self, gpa: u64, size: u64) -> Result<()> {
        let end = gpa
            .checked_add(size)
            .filter(|&e| size > 0 && e <= hv_core::backend::MAX_GPA)
            .ok_or_else(|| {
                HvError::InvalidArgument(format!(
                    "intercept range {gpa:#x} (+{size:#x}) is empty or too large"
                ))
            })?;
        self.update(|m| {
            m.intercepts.push((gpa, end));
            Ok(())
        })
    }

    fn create_vcpu(&mut self, index: u8) -> Result<Box<dyn VcpuBackend>> {
        if self.vcpus.contains(&index) {
            return Err(HvError::InvalidArgument(format!(
                "vCPU {index} already exists"
            )));
        }
        let vcpu = SimVcpu::new(
            index as u32,
            Arc::clone(&self.config),
            Arc::clone(&self.memory),
            Arc::clone(&self.bus),
            Arc::clone(&self.clock),
            Arc::clone(&self.exec),
        )?;
        self.clock.add_vcpu(index as u32);
        self.vcpus.push(index);
        Ok(Box::new(vcpu))
    }

    fn interrupts(&self) -> Arc<dyn hv_core::Interrupts> {
        Arc::clone(&self.bus) as Arc<dyn hv_core::Interrupts>
    }

    /// A new map carries the log: every vCPU takes it (and flushes its TLB) at its next
    /// run, so each write fills the TLB again and marks its page.
    fn start_dirty_log(&mut self) -> Result<()> {
        self.update(|m| {
            m.dirty = Some(Arc::new(DirtyLog::new(&m.slots)));
            Ok(())
        })
    }

    fn take_dirty_log(&mut self, gpa: u64) -> Result<Vec<u64>> {
        let log = self
            .memory
            .map
            .lock()
            .map_err(|_| HvError::Unsupported("the memory map lock is poisoned".into()))?
            .dirty
            .clone()
            .ok_or_else(|| {
                HvError::InvalidArgument(
                    "dirty pages are not being logged (start the log first)".into(),
                )
            })?;
        let bits = log.take(gpa).ok_or(HvError::NotMapped(gpa))?;
        // A new generation flushes the TLBs: a page written again is marked again.
        self.update(|_| Ok(()))?;
        Ok(bits)
    }

    fn stop_dirty_log(&mut self) -> Result<()> {
        self.update(|m| {
            m.dirty = None;
            Ok(())
        })
    }
}
