//! A small real-mode guest on any backend, and the VMM-side steps the checks share:
//! run to an expected intercept, read and write registers, complete an instruction.

use crate::CheckError;
use hv_core::message::{ExitMessage, TYPES};
use hv_core::regs::{pack_segment, RegisterValue};
use hv_core::{
    Exit, HostRegion, HvBackend, MemoryMapping, RunLimits, VcpuBackend, VmBackend, VmConfig,
};
use mshv_bindings::*;
use std::sync::Arc;
use std::time::Duration;

/// Where guest code starts (CS:IP = 0:0x1000).
pub const CODE: u64 = 0x1000;
/// The initial stack pointer (SS = 0): exception delivery pushes below it.
pub const STACK: u64 = 0x7000;
/// How long a check lets a guest run before calling it hung: far longer than any
/// check's guest needs, short enough that a hang reads as a failure, not a stall.
pub const RUN_LIMIT: Duration = Duration::from_secs(10);
/// How long [`Guest::run_to_halt`] lets a halted vCPU wait on mshv before it looks.
pub const HALT_WAIT: Duration = Duration::from_millis(50);
/// `HvInternalActivityRegister` bit 1: halt suspend (OpenVMM hvdef).
pub const HALT_SUSPEND: u64 = 1 << 1;

/// The name of an `hv_message_type`, for failure messages.
pub fn message_name(message_type: u32) -> String {
    TYPES
        .iter()
        .find(|(_, v)| *v == message_type)
        .map_or_else(|| format!("{message_type:#x}"), |(n, _)| (*n).to_string())
}

/// One VM with RAM at GPA 0 and vCPU 0 in real mode at [`CODE`].
pub struct Guest {
    pub vm: Box<dyn VmBackend>,
    pub vcpu: Box<dyn VcpuBackend>,
    pub ram: Arc<HostRegion>,
    pub msg: ExitMessage,
}

impl Guest {
    /// `ram_size` bytes of RAM at GPA 0 holding `code` at [`CODE`].
    pub fn real_mode(
        hv: &dyn HvBackend,
        config: &VmConfig,
        ram_size: usize,
        code: &[u8],
    ) -> Result<Guest, CheckError> {
        let mut vm = hv.create_vm(config)?;
        let ram = Arc::new(HostRegion::new(ram_size)?);
        ram.write(CODE as usize, code)?;
        vm.map_memory(MemoryMapping {
            gpa: 0,
            region: Arc::clone(&ram),
            writable: true,
            executable: true,
        })?;
        let mut vcpu = vm.create_vcpu(0)?;
        enter_real_mode(vcpu.as_mut())?;
        Ok(Guest {
            vm,
            vcpu,
            ram,
            msg: ExitMessage::default(),
        })
    }

    /// Runs for at most [`RUN_LIMIT`].
    pub fn run(&mut self) -> Result<Exit, CheckError> {
        let limits = RunLimits::with_timeout(None, Some(RUN_LIMIT));
        Ok(self.vcpu.run(&mut self.msg, &limits)?)
    }

    /// Runs and requires an intercept of `message_type`.
    pub fn run_to(&mut self, message_type: u32) -> Result<(), CheckError> {
        match self.run()? {
            Exit::Message if self.msg.message_type() == message_type => Ok(()),
            Exit::Message => Err(CheckError::Mismatch(format!(
                "expected a {} intercept, got {} at rip {:#x}",
                message_name(message_type),
                message_name(self.msg.message_type()),
                { self.header().rip }
            ))),
            other => Err(CheckError::Mismatch(format!(
                "expected a {} intercept, the run ended with {other:?}",
                message_name(message_type)
            ))),
        }
    }

    /// Runs and requires the vCPU to wait in a halt. MSHV has no HLT intercept for a
    /// partition with a local APIC (`hv_intercept_type` in the kernel's
    /// `hvgdk_mini.h` has none; a `cli; hlt` "will just hang the guest", qemu-devel,
    /// "[PATCH v2 25/27] target/i386/mshv: Handle HVMSG_X64_HALT vm exit", 2025): the
    /// VP waits in the hypervisor, halt-suspended, and the run ioctl does not return.
    /// So the run is given [`HALT_WAIT`] and the halt is read where OpenVMM reads it,
    /// in `HV_REGISTER_INTERNAL_ACTIVITY_STATE` (`HvInternalActivityRegister`: bit 1,
    /// halt suspend). The sim's run, which may not block, ends with `Exit::Halted` or
    /// `Exit::Idle` (interrupts enabled) instead of the timeout.
    pub fn run_to_halt(&mut self) -> Result<(), CheckError> {
        let limits = RunLimits::with_timeout(None, Some(HALT_WAIT));
        match self.vcpu.run(&mut self.msg, &limits)? {
            Exit::Halted | Exit::Idle | Exit::Timeout => {}
            Exit::Message => {
                return Err(CheckError::Mismatch(format!(
                    "expected the vCPU to wait in its HLT, got a {} intercept at rip {:#x}",
                    message_name(self.msg.message_type()),
                    { self.header().rip }
                )))
            }
            other => {
                return Err(CheckError::Mismatch(format!(
                    "expected the vCPU to wait in its HLT, the run ended with {other:?}"
                )))
            }
        }
        let activity = self.get(hv_register_name_HV_REGISTER_INTERNAL_ACTIVITY_STATE)?;
        if activity & HALT_SUSPEND == 0 {
            return Err(CheckError::Mismatch(format!(
                "the run ended, but the vCPU is not halted (internal activity state {activity:#x}, rip {:#x})",
                self.get(hv_register_name_HV_X64_REGISTER_RIP)?
            )));
        }
        Ok(())
    }

    /// The intercept header every x64 intercept message starts with.
    pub fn header(&self) -> hv_x64_intercept_message_header {
        self.msg.payload()
    }

    /// One register, by hypercall.
    pub fn get(&mut self, id: u32) -> Result<u64, CheckError> {
        let mut out = [[0u64; 2]];
        self.vcpu.get_registers(&[id], &mut out)?;
        Ok(out[0][0])
    }

    /// One 64-bit register, by hypercall.
    pub fn set(&mut self, id: u32, value: u64) -> Result<(), CheckError> {
        Ok(self.vcpu.set_registers(&[id], &[[value, 0]])?)
    }

    /// Moves RIP past the intercepted instruction, by the length the header gives:
    /// MSHV leaves RIP on it (Hyperlight's mshv driver: "mshv, unlike kvm, does not
    /// automatically increment RIP").
    pub fn complete(&mut self) -> Result<(), CheckError> {
        let h = self.header();
        self.set(
            hv_register_name_HV_X64_REGISTER_RIP,
            h.rip + h.instruction_length() as u64,
        )
    }

    /// A little-endian u16 of guest RAM.
    pub fn ram_u16(&self, gpa: usize) -> Result<u16, CheckError> {
        let mut b = [0u8; 2];
        self.ram.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
}

/// Real mode with every segment at 0 (64 KiB limits), IP = [`CODE`], SP = [`STACK`],
/// interrupts off.
pub fn enter_real_mode(vcpu: &mut dyn VcpuBackend) -> Result<(), CheckError> {
    let code = pack_segment(0, 0xffff, 0, 0x9b);
    let data = pack_segment(0, 0xffff, 0, 0x93);
    let ids = [
        hv_register_name_HV_X64_REGISTER_CS,
        hv_register_name_HV_X64_REGISTER_DS,
        hv_register_name_HV_X64_REGISTER_ES,
        hv_register_name_HV_X64_REGISTER_SS,
        hv_register_name_HV_X64_REGISTER_FS,
        hv_register_name_HV_X64_REGISTER_GS,
        hv_register_name_HV_X64_REGISTER_RIP,
        hv_register_name_HV_X64_REGISTER_RSP,
        hv_register_name_HV_X64_REGISTER_RFLAGS,
    ];
    let values: [RegisterValue; 9] = [
        code,
        data,
        data,
        data,
        data,
        data,
        [CODE, 0],
        [STACK, 0],
        [2, 0],
    ];
    Ok(vcpu.set_registers(&ids, &values)?)
}

/// Fails with `what: got .., expected ..` unless the two are equal.
pub fn expect_eq<T: PartialEq + std::fmt::LowerHex>(
    what: &str,
    got: T,
    expected: T,
) -> Result<(), CheckError> {
    if got == expected {
        Ok(())
    } else {
        Err(CheckError::Mismatch(format!(
            "{what}: got {got:#x}, expected {expected:#x}"
        )))
    }
}

/// Fails with `message` unless `condition` holds.
pub fn expect(condition: bool, message: impl FnOnce() -> String) -> Result<(), CheckError> {
    if condition {
        Ok(())
    } else {
        Err(CheckError::Mismatch(message()))
    }
}
