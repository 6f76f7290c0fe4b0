//! An MSHV virtual processor.

use crate::errors::map_error;
use crate::kick::RunningThread;
use hv_core::backend::check_batch;
use hv_core::{
    Canceller, Counters, Exit, ExitMessage, HvError, RegisterPageMode, RegisterPagePtr,
    RegisterValue, Result, RunLimits, VcpuBackend,
};
use mshv_bindings::*;
use mshv_ioctls::VcpuFd;
use std::ptr::NonNull;
use std::sync::{Arc, Once};

pub struct MshvVcpu {
    index: u32,
    fd: VcpuFd,
    page: Option<RegisterPagePtr>,
    counters: Counters,
    canceller: Canceller,
    running: RunningThread,
}

/// Refuses the limits the hypervisor cannot honour, rather than running without them.
pub fn check_limits(limits: &RunLimits) -> Result<()> {
    if limits.max_instructions.is_some() {
        return Err(HvError::Unsupported(
            "maxInstructions (an instruction budget) needs the sim backend: MSHV does not count guest instructions".into(),
        ));
    }
    if limits.timeout.is_some() {
        return Err(HvError::Unsupported(
            "timeoutMs is not supported on the mshv backend; call cancel() from a timer instead"
                .into(),
        ));
    }
    Ok(())
}

/// Builds the `hv_register_assoc` array for a batch.
pub fn assocs(ids: &[u32], values: Option<&[RegisterValue]>) -> Vec<hv_register_assoc> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let v = values.map_or([0, 0], |v| v[i]);
            hv_register_assoc {
                name: *id,
                value: hv_register_value {
                    reg128: hv_u128 {
                        low_part: v[0],
                        high_part: v[1],
                    },
                },
                ..Default::default()
            }
        })
        .collect()
}

impl MshvVcpu {
    pub fn new(index: u32, fd: VcpuFd, mode: RegisterPageMode) -> Self {
        let page = match (mode, fd.get_vp_reg_page()) {
            (RegisterPageMode::Off, _) => None,
            // SAFETY: mshv-ioctls mapped a 4 KiB page for this fd and unmaps it only when
            // the VcpuFd drops, which is after this struct (and the pointer) goes away.
            (_, Some(p)) => {
                NonNull::new(p.0.cast::<u8>()).map(|p| unsafe { RegisterPagePtr::new(p) })
            }
            (_, None) => {
                static WARN: Once = Once::new();
                WARN.call_once(|| {
                    eprintln!(
                        "mshv: the VP register page could not be mapped; using register hypercalls"
                    );
                });
                None
            }
        };
        let running = RunningThread::default();
        let kick_target = running.clone();
        MshvVcpu {
            index,
            fd,
            page,
            counters: Counters::default(),
            canceller: Canceller::with_kick(Arc::new(move || kick_target.kick())),
            running,
        }
    }
}

impl VcpuBackend for MshvVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn run(&mut self, msg: &mut ExitMessage, limits: &RunLimits) -> Result<Exit> {
        check_limits(limits)?;
        self.counters.runs += 1;
        if self.canceller.take() {
            return Ok(Exit::Cancelled);
        }
        self.running.enter();
        let result = self.fd.run();
        self.running.leave();
        match result {
            Ok(m) => {
                msg.set(&m);
                self.counters.count_exit(msg.message_type());
                Ok(Exit::Message)
            }
            Err(e) if e.errno() == libc::EINTR && self.canceller.take() => Ok(Exit::Cancelled),
            Err(e) => Err(map_error("run vCPU", e)),
        }
    }

    fn get_registers(&mut self, ids: &[u32], out: &mut [RegisterValue]) -> Result<()> {
        check_batch(ids, out.len())?;
        let mut a = assocs(ids, None);
        self.counters.get_registers += 1;
        self.fd
            .get_reg(&mut a)
            .map_err(|e| map_error("get registers", e))?;
        for (slot, assoc) in out.iter_mut().zip(&a) {
            // SAFETY: the hypervisor filled the value; the u128 view is valid for any bits.
            let v = unsafe { assoc.value.reg128 };
            *slot = [v.low_part, v.high_part];
        }
        self.counters.registers_read += ids.len() as u64;
        Ok(())
    }

    fn set_registers(&mut self, ids: &[u32], values: &[RegisterValue]) -> Result<()> {
        check_batch(ids, values.len())?;
        self.counters.set_registers += 1;
        self.fd
            .set_reg(&assocs(ids, Some(values)))
            .map_err(|e| map_error("set registers", e))?;
        self.counters.registers_written += ids.len() as u64;
        Ok(())
    }

    fn translate_gva(&mut self, gva: u64, flags: u64) -> Result<(u64, u32)> {
        self.counters.translate_gva += 1;
        let (gpa, result) = self
            .fd
            .translate_gva(gva, flags)
            .map_err(|e| map_error("translate GVA", e))?;
        // SAFETY: the hypervisor filled the result; the code is a plain u32 view of it.
        Ok((gpa, unsafe { result.__bindgen_anon_1.result_code }))
    }

    fn register_page(&self) -> Option<RegisterPagePtr> {
        self.page
    }

    fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn reset_counters(&mut self) {
        self.counters = Counters::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_mshv_cannot_honour_are_refused() {
        assert!(check_limits(&RunLimits::default()).is_ok());
        let budget = RunLimits {
            max_instructions: Some(1),
            timeout: None,
        };
        let e = check_limits(&budget).unwrap_err();
        assert_eq!(e.code(), "ENOTSUP");
        assert!(e.to_string().contains("maxInstructions"), "{e}");
        let timeout = RunLimits {
            max_instructions: None,
            timeout: Some(std::time::Duration::from_millis(5)),
        };
        assert!(check_limits(&timeout)
            .unwrap_err()
            .to_string()
            .contains("timeoutMs"));
    }

    #[test]
    fn assocs_carry_ids_and_both_halves() {
        let a = assocs(&[hv_register_name_HV_X64_REGISTER_XMM0], Some(&[[1, 2]]));
        assert_eq!({ a[0].name }, hv_register_name_HV_X64_REGISTER_XMM0);
        // SAFETY: reading the u128 view written above.
        let v = unsafe { a[0].value.reg128 };
        assert_eq!((v.low_part, v.high_part), (1, 2));
    }

    #[test]
    fn user_regions_carry_pfn_flags_and_host_address() {
        let region = std::sync::Arc::new(hv_core::HostRegion::new(8192).unwrap());
        let m = hv_core::MemoryMapping {
            gpa: 0x10_0000,
            region: region.clone(),
            writable: true,
            executable: false,
        };
        let r = crate::vm::user_region(&m, false);
        assert_eq!(({ r.guest_pfn }, { r.size }), (0x100, 8192));
        assert_eq!(r.flags, 1 << MSHV_SET_MEM_BIT_WRITABLE);
        assert_eq!({ r.userspace_addr }, region.as_ptr() as u64);
        let u = crate::vm::user_region(&m, true);
        assert_eq!(
            u.flags & (1 << MSHV_SET_MEM_BIT_UNMAP),
            1 << MSHV_SET_MEM_BIT_UNMAP
        );
    }
}
