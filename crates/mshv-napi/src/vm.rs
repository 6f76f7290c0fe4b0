//! `Vm`: a partition's memory map and vCPUs.

use crate::errors::{closed, guard, invalid, to_js, u64_arg, Result};
use crate::interrupts::InterruptOptions;
use crate::live::{Kind, Live};
use crate::memory::{GuestMemory, Ram};
use crate::vcpu::{Core, Vcpu};
use hv_core::memory::admit;
use hv_core::{HostRegion, InterruptRequest, Interrupts, MemoryMapping, RegionOptions, VmBackend};
use napi::bindgen_prelude::{BigInt, BigUint64Array, Uint32Array};
use napi::Env;
use napi_derive::napi;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Options for `Vm.mapMemory`.
#[napi(object)]
pub struct MapOptions {
    pub writable: Option<bool>,
    pub executable: Option<bool>,
}

/// Memory settings of one VM, fixed when it is created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryPolicy {
    /// The most guest RAM this VM may map, in bytes.
    pub limit: u64,
    /// Commit each region's memory when it is mapped.
    pub reserve: bool,
}

/// A partition and what it owns until it closes.
struct Open {
    backend: Live<Box<dyn VmBackend>>,
    ram: Vec<Arc<Ram>>,
    vcpus: Vec<Weak<Core>>,
    policy: MemoryPolicy,
    interrupts: Arc<dyn Interrupts>,
}

impl Open {
    fn mapped_bytes(&self) -> u64 {
        self.ram.iter().map(|r| r.len as u64).sum()
    }
}

/// A virtual machine (partition).
#[napi]
pub struct Vm {
    state: Mutex<Option<Open>>,
}

/// One snapshot of a chain for `Vm.loadSnapshot`.
#[napi(object)]
pub struct NativeLayer {
    pub path: String,
    /// (first page, page count, byte offset) triplets.
    pub runs: BigUint64Array,
    /// (first page, page count) pairs of pages that are zero in this snapshot.
    pub zero: BigUint64Array,
}

impl Vm {
    /// One call on the open VM's backend.
    fn with_backend<T>(
        &self,
        f: impl FnOnce(&mut dyn VmBackend) -> hv_core::Result<T>,
    ) -> Result<T> {
        let mut state = self.lock();
        let open = state.as_mut().ok_or_else(|| closed("VM"))?;
        f(open.backend.get_mut().as_mut()).map_err(to_js)
    }

    pub(crate) fn new(inner: Box<dyn VmBackend>, policy: MemoryPolicy) -> Self {
        let interrupts = inner.interrupts();
        Vm {
            state: Mutex::new(Some(Open {
                interrupts,
                backend: Live::new(inner, Kind::Vm),
                ram: Vec::new(),
                vcpus: Vec::new(),
                policy,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Open>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM's interrupt path, while it is open.
    fn interrupts(&self) -> Result<Arc<dyn Interrupts>> {
        let state = self.lock();
        let open = state.as_ref().ok_or_else(|| closed("VM"))?;
        Ok(Arc::clone(&open.interrupts))
    }

    fn deliver(&self, request: &InterruptRequest) -> Result<()> {
        self.interrupts()?.request(request).map_err(to_js)
    }
}

/// The largest region one call maps: 2^40 bytes (a guest may have several). A bound on
/// the argument only: the memory limits (the host's memory by default) bound what is
/// committed, and on mshv that is the whole region at once, since the kernel pins every
/// page when it is mapped (`mshv_region_populate_pages`, drivers/hv/mshv_root_main.c).
const MAX_REGION: f64 = (1u64 << 40) as f64;

#[napi]
impl Vm {
    /// Allocates `size` bytes of zeroed host memory and maps it at `gpa`. The VM's and
    /// the process's memory limits apply (`ENOMEM` naming them).
    #[napi]
    pub fn map_memory(
        &self,
        gpa: BigInt,
        size: f64,
        options: Option<MapOptions>,
    ) -> Result<GuestMemory> {
        guard("Vm.mapMemory", || {
            let gpa = u64_arg(&gpa, "gpa")?;
            if !(size.is_finite() && size > 0.0 && size.fract() == 0.0 && size <= MAX_REGION) {
                return Err(invalid(format!(
                    "size must be a whole number of bytes from 1 to 2^40, got {size}"
                )));
            }
            let mut state = self.lock();
            let open = state.as_mut().ok_or_else(|| closed("VM"))?;
            admit(
                "this VM (its memoryLimit)",
                open.mapped_bytes(),
                size as u64,
                open.policy.limit,
            )
            .map_err(to_js)?;
            let region = Arc::new(
                HostRegion::with_options(
                    size as usize,
                    RegionOptions {
                        reserve: open.policy.reserve,
                    },
                )
                .map_err(to_js)?,
            );
            let o = options.unwrap_or(MapOptions {
                writable: None,
                executable: None,
            });
            open.backend
                .get_mut()
                .map_memory(MemoryMapping {
                    gpa,
                    region: Arc::clone(&region),
                    writable: o.writable.unwrap_or(true),
                    executable: o.executable.unwrap_or(true),
                })
                .map_err(to_js)?;
            let ram = Ram::new(region, gpa);
            open.ram.push(Arc::clone(&ram));
            Ok(GuestMemory::new(ram))
        })
    }

    /// Unmaps a region and gives its memory back at once; its ArrayBuffers are detached.
    #[napi]
    pub fn unmap_memory(&self, env: Env, memory: &GuestMemory) -> Result<()> {
        guard("Vm.unmapMemory", || {
            let mut state = self.lock();
            let open = state.as_mut().ok_or_else(|| closed("VM"))?;
            let i = open
                .ram
                .iter()
                .position(|r| Arc::ptr_eq(r, memory.ram()))
                .ok_or_else(|| closed("guest memory region"))?;
            open.backend
                .get_mut()
                .unmap_memory(memory.ram().gpa)
                .map_err(to_js)?;
            open.ram.remove(i).retire(&env);
            Ok(())
        })
    }

    /// Makes a region's contents a chain of snapshots (`layers`, the full one first):
    /// each layer's `runs` of its file at `path` as (first page, page count, byte
    /// offset) triplets, mapped private (copy-on-write: nothing is copied now), and its
    /// `zero` (first page, count) pairs zeroed, each layer over the ones before; zero
    /// elsewhere. The region leaves the partition and comes back at the same address
    /// with the same access (MSHV pins a region's pages when it is mapped, so new pages
    /// reach the guest only through a new mapping); views over it stay valid.
    #[napi]
    pub fn load_snapshot(&self, memory: &GuestMemory, layers: Vec<NativeLayer>) -> Result<()> {
        guard("Vm.loadSnapshot", || {
            use hv_core::page_runs::{map_layers, FileRun, Layer, PageRun};
            let mut parsed = Vec::with_capacity(layers.len());
            for l in &layers {
                if !l.runs.len().is_multiple_of(3) || !l.zero.len().is_multiple_of(2) {
                    return Err(invalid(format!(
                        "a layer's runs are (first page, count, offset) triplets and its zero pages (first, count) pairs, got {} and {} numbers",
                        l.runs.len(),
                        l.zero.len()
                    )));
                }
                let runs: Vec<FileRun> = l
                    .runs
                    .chunks_exact(3)
                    .map(|t| FileRun {
                        pages: PageRun {
                            first: t[0],
                            count: t[1],
                        },
                        offset: t[2],
                    })
                    .collect();
                let zero: Vec<PageRun> = l
                    .zero
                    .chunks_exact(2)
                    .map(|p| PageRun {
                        first: p[0],
                        count: p[1],
                    })
                    .collect();
                let file = std::fs::File::open(&l.path).map_err(|e| {
                    napi::Error::new(
                        "ENOENT".to_string(),
                        format!("cannot open the snapshot '{}': {e}", l.path),
                    )
                })?;
                parsed.push((file, runs, zero));
            }
            let views: Vec<Layer> = parsed
                .iter()
                .map(|(file, runs, zero)| Layer { file, runs, zero })
                .collect();
            let mut state = self.lock();
            let open = state.as_mut().ok_or_else(|| closed("VM"))?;
            let ram = memory.ram();
            let region = match ram.region() {
                Some(r) if open.ram.iter().any(|x| Arc::ptr_eq(x, ram)) => r,
                _ => return Err(closed("guest memory region")),
            };
            let backend = open.backend.get_mut();
            let mapping = backend.unmap_memory(ram.gpa).map_err(to_js)?;
            let loaded = map_layers(&region, &views);
            // Mapped back whatever happened: the region's pages are its own either way.
            backend.map_memory(mapping).map_err(to_js)?;
            loaded.map_err(to_js)
        })
    }

    /// Starts logging the pages guest writes reach (every page of every region clean).
    #[napi]
    pub fn start_dirty_log(&self) -> Result<()> {
        guard("Vm.startDirtyLog", || {
            self.with_backend(|b| b.start_dirty_log())
        })
    }

    /// The pages of `memory` guest writes reached since the log started or was last
    /// taken for it, as (first page, count) pairs; they are clean again.
    #[napi]
    pub fn take_dirty_log(&self, memory: &GuestMemory) -> Result<Uint32Array> {
        guard("Vm.takeDirtyLog", || {
            let ram = memory.ram();
            let bits = {
                let mut state = self.lock();
                let open = state.as_mut().ok_or_else(|| closed("VM"))?;
                if !open.ram.iter().any(|x| Arc::ptr_eq(x, ram)) {
                    return Err(closed("guest memory region (of this VM)"));
                }
                open.backend
                    .get_mut()
                    .take_dirty_log(ram.gpa)
                    .map_err(to_js)?
            };
            let pages = (ram.len / hv_core::PAGE_SIZE) as u64;
            Ok(crate::memory::runs_to_js(&hv_core::page_runs::bitmap_runs(
                &bits, pages,
            )))
        })
    }

    /// Stops logging dirty pages.
    #[napi]
    pub fn stop_dirty_log(&self) -> Result<()> {
        guard("Vm.stopDirtyLog", || {
            self.with_backend(|b| b.stop_dirty_log())
        })
    }

    /// Makes guest accesses to `[gpa, gpa + size)` exit, even over RAM (sim).
    #[napi]
    pub fn intercept_range(&self, gpa: BigInt, size: BigInt) -> Result<()> {
        guard("Vm.interceptRange", || {
            let gpa = u64_arg(&gpa, "gpa")?;
            let size = u64_arg(&size, "size")?;
            let mut state = self.lock();
            let open = state.as_mut().ok_or_else(|| closed("VM"))?;
            open.backend
                .get_mut()
                .intercept_range(gpa, size)
                .map_err(to_js)
        })
    }

    /// Creates vCPU `index` (0..=255), its LINT0 and LINT1 programmed as a VMM does
    /// ([`hv_core::lapic::set_lint`]): LINT0 ExtINT (unmasked on vCPU 0), LINT1 NMI.
    #[napi]
    pub fn create_vcpu(&self, env: Env, index: u32) -> Result<Vcpu> {
        guard("Vm.createVcpu", || {
            let i = u8::try_from(index)
                .map_err(|_| invalid(format!("vCPU index must be 0..=255, got {index}")))?;
            let mut state = self.lock();
            let open = state.as_mut().ok_or_else(|| closed("VM"))?;
            let mut backend = open.backend.get_mut().create_vcpu(i).map_err(to_js)?;
            // LINT0 ExtINT and LINT1 NMI on every vCPU, as CH's and QEMU's `set_lint`
            // program them at creation; the BSP's LINT0 unmasked (KVM's reset,
            // a BIOS's virtual wire), so the 8259 reaches vCPU 0 (hv_core::lapic).
            hv_core::lapic::set_lint(backend.as_mut(), i == 0).map_err(to_js)?;
            let vcpu = Vcpu::new(&env, backend);
            open.vcpus.retain(|c| c.strong_count() > 0);
            open.vcpus.push(Arc::downgrade(vcpu.core()));
            Ok(vcpu)
        })
    }

    /// Closes the VM: each of its vCPUs is closed (a run in flight is cancelled and
    /// waited for), every RAM region is unmapped and its memory given back at once
    /// (views detached first), and the partition released. Calling it twice is harmless.
    #[napi]
    pub fn close(&self, env: Env) -> Result<()> {
        guard("Vm.close", || {
            let Some(open) = self.lock().take() else {
                return Ok(());
            };
            for core in open.vcpus.iter().filter_map(Weak::upgrade) {
                core.close(&env);
            }
            drop(open.backend);
            for ram in &open.ram {
                ram.retire(&env);
            }
            Ok(())
        })
    }

    /// Asks the hypervisor's local APICs for an interrupt, from any state of the vCPUs:
    /// a halted vCPU wakes, a running one takes it at its next instruction boundary
    /// with interrupts enabled. A vector 0-15 for a fixed interrupt or an APIC id no
    /// vCPU has is `EINVAL`.
    #[napi]
    pub fn request_interrupt(&self, options: InterruptOptions) -> Result<()> {
        guard("Vm.requestInterrupt", || self.deliver(&options.request()?))
    }

    /// Delivers a message-signalled interrupt by its address (0xFEExxxxx) and data, as
    /// a PCI device writes them (SDM vol 3 11.11).
    #[napi]
    pub fn signal_msi(&self, address: BigInt, data: u32) -> Result<()> {
        guard("Vm.signalMsi", || {
            let address = u64_arg(&address, "address")?;
            let request = InterruptRequest::from_msi(address, data).map_err(to_js)?;
            self.deliver(&request)
        })
    }

    /// Guest time in nanoseconds since the VM was made: the clock of the guest's TSC
    /// and APIC timer (on the deterministic sim it moves only as the guest runs), on
    /// which device timers run.
    #[napi]
    pub fn guest_time_ns(&self) -> Result<f64> {
        guard("Vm.guestTimeNs", || {
            Ok(self.interrupts()?.guest_time() as f64)
        })
    }

    /// When every vCPU waits in a halt: the guest time (ns) the first of them wakes at
    /// by itself (Infinity: none will); undefined while one executes, or on mshv.
    #[napi]
    pub fn next_wake_ns(&self) -> Result<Option<f64>> {
        guard("Vm.nextWakeNs", || {
            Ok(self.interrupts()?.next_wake().map(|t| {
                if t == u64::MAX {
                    f64::INFINITY
                } else {
                    t as f64
                }
            }))
        })
    }

    /// Sets guest time (a restored snapshot's); deterministic time only moves forward.
    #[napi]
    pub fn set_guest_time_ns(&self, ns: f64) -> Result<()> {
        guard("Vm.setGuestTimeNs", || {
            let t = crate::errors::whole(ns, "ns", 9_007_199_254_740_991.0)?;
            self.interrupts()?.set_guest_time(t);
            Ok(())
        })
    }

    /// Sets when the VMM's next device timer is due (guest ns; undefined: none): on the
    /// sim every vCPU run ends with `layout().exits.clock` when guest time reaches it.
    #[napi]
    pub fn set_device_deadline(&self, deadline_ns: Option<f64>) -> Result<()> {
        guard("Vm.setDeviceDeadline", || {
            let d = deadline_ns
                .map(|n| crate::errors::whole(n, "deadlineNs", 9_007_199_254_740_991.0))
                .transpose()?;
            self.interrupts()?.set_device_deadline(d);
            Ok(())
        })
    }

    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.lock().is_none()
    }
}
