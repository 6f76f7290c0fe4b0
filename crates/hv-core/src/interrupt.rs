//! Interrupts a VMM asks the hypervisor to deliver: MSHV's `HVCALL_ASSERT_VIRTUAL_INTERRUPT`
//! (mshv-ioctls `VmFd::request_virtual_interrupt`, `InterruptRequest`), whose local APIC
//! the hypervisor emulates, and the MSI address/data pairs devices send (Intel SDM vol 3
//! 11.11). Both backends take the same requests through [`Interrupts`].

use crate::error::{HvError, Result};

/// The delivery mode of a request (`hv_interrupt_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    Fixed,
    LowestPriority,
    Nmi,
    Init,
    /// Start-up IPI: `vector` is the start page (CS = vector << 8, IP = 0).
    Sipi,
    /// An interrupt from an external controller (the 8259 PIC through LINT0).
    ExtInt,
}

impl InterruptKind {
    /// The `hv_interrupt_type` value (mshv-bindings `hv_interrupt_type_HV_X64_INTERRUPT_TYPE_*`).
    pub fn hv_type(self) -> u32 {
        use mshv_bindings::*;
        match self {
            InterruptKind::Fixed => hv_interrupt_type_HV_X64_INTERRUPT_TYPE_FIXED,
            InterruptKind::LowestPriority => hv_interrupt_type_HV_X64_INTERRUPT_TYPE_LOWESTPRIORITY,
            InterruptKind::Nmi => hv_interrupt_type_HV_X64_INTERRUPT_TYPE_NMI,
            InterruptKind::Init => hv_interrupt_type_HV_X64_INTERRUPT_TYPE_INIT,
            InterruptKind::Sipi => hv_interrupt_type_HV_X64_INTERRUPT_TYPE_SIPI,
            InterruptKind::ExtInt => hv_interrupt_type_HV_X64_INTERRUPT_TYPE_EXTINT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InterruptKind::Fixed => "fixed",
            InterruptKind::LowestPriority => "lowest-priority",
            InterruptKind::Nmi => "nmi",
            InterruptKind::Init => "init",
            InterruptKind::Sipi => "sipi",
            InterruptKind::ExtInt => "extint",
        }
    }

    /// The kind of a name [`InterruptKind::name`] gives.
    pub fn from_name(name: &str) -> Option<InterruptKind> {
        Some(match name {
            "fixed" => InterruptKind::Fixed,
            "lowest-priority" => InterruptKind::LowestPriority,
            "nmi" => InterruptKind::Nmi,
            "init" => InterruptKind::Init,
            "sipi" => InterruptKind::Sipi,
            "extint" => InterruptKind::ExtInt,
            _ => return None,
        })
    }
}

/// One interrupt request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptRequest {
    pub kind: InterruptKind,
    /// The destination: an APIC id (physical), or a logical destination (a bit mask in
    /// flat mode, cluster and mask in cluster mode) when `logical`.
    pub destination: u32,
    pub logical: bool,
    pub vector: u8,
    /// Level-triggered: the local APIC sets the vector's TMR bit, and its EOI is
    /// reported to the VMM (`HVMSG_X64_APIC_EOI`) so an I/O APIC can re-assert.
    pub level: bool,
}

impl InterruptRequest {
    /// Refuses what no local APIC accepts: vectors 0-15 for fixed and lowest-priority
    /// interrupts (SDM vol 3 11.5.2, "Valid Interrupt Vectors": the APIC reports them
    /// as illegal vectors), and an APIC id beyond the xAPIC's 8 bits. An ExtINT's
    /// vector comes from the 8259 through INTA and may be any (a real-mode BIOS puts
    /// IRQ 0 at vector 8).
    pub fn check(&self) -> Result<()> {
        let needs_vector = matches!(
            self.kind,
            InterruptKind::Fixed | InterruptKind::LowestPriority
        );
        if needs_vector && self.vector < 16 {
            return Err(HvError::InvalidArgument(format!(
                "vector {} is reserved for exceptions: a {} interrupt needs 16..255",
                self.vector,
                self.kind.name()
            )));
        }
        if !self.logical && self.destination > 0xff {
            return Err(HvError::InvalidArgument(format!(
                "APIC id {} is beyond the xAPIC's 0..255",
                self.destination
            )));
        }
        Ok(())
    }

    /// The request an MSI's address and data make (SDM vol 3 11.11.1, 11.11.2): the
    /// address 0xFEEx_xxxx holds the destination id in bits 12-19 and the destination
    /// mode in bit 2; the data holds the vector, the delivery mode in bits 8-10 and the
    /// trigger mode in bit 15.
    pub fn from_msi(address: u64, data: u32) -> Result<InterruptRequest> {
        if address >> 20 != 0xfee {
            return Err(HvError::InvalidArgument(format!(
                "MSI address {address:#x} is not in the 0xFEE00000 window"
            )));
        }
        let kind = match (data >> 8) & 7 {
            0 => InterruptKind::Fixed,
            1 => InterruptKind::LowestPriority,
            4 => InterruptKind::Nmi,
            5 => InterruptKind::Init,
            7 => InterruptKind::ExtInt,
            m => {
                return Err(HvError::InvalidArgument(format!(
                    "MSI data {data:#x} has delivery mode {m}, which an MSI cannot use"
                )))
            }
        };
        let r = InterruptRequest {
            kind,
            destination: ((address >> 12) & 0xff) as u32,
            logical: address & (1 << 2) != 0,
            vector: data as u8,
            level: data & (1 << 15) != 0,
        };
        r.check()?;
        Ok(r)
    }
}

/// Where a VM takes interrupt requests: from any thread, while its vCPUs run.
pub trait Interrupts: Send + Sync {
    /// Asks for `request` to be delivered; an invalid request or a destination no vCPU
    /// has is `EINVAL`.
    fn request(&self, request: &InterruptRequest) -> Result<()>;
    /// Guest time now, in nanoseconds since the partition was made: the clock the
    /// guest's TSC and APIC timer follow, on which a VMM's device timers should run.
    fn guest_time(&self) -> u64;
    /// When the VMM's next device timer is due (guest ns), or none: on the sim every
    /// vCPU's run ends with [`crate::Exit::Clock`] when guest time reaches it, so the
    /// timer fires on time however long the guest runs or halts. MSHV's guest time is
    /// the host's: the VMM's event loop fires its timers, and this does nothing.
    fn set_device_deadline(&self, deadline: Option<u64>);
    /// Sets guest time (a restored snapshot's): it goes on from `ns`. Deterministic
    /// time never goes back: there, a vCPU's restored state carries its own time, and
    /// this only moves a partition's time forward.
    fn set_guest_time(&self, ns: u64);
    /// When every vCPU waits in a halt: the guest time (ns) the earliest of them wakes at
    /// by itself (a timer of its APIC, or the VMM's device deadline), `Some(u64::MAX)`
    /// when none will; `None` while a vCPU executes, or where the hypervisor does not
    /// say (MSHV).
    fn next_wake(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_address_and_data_decode_as_the_sdm_lays_them_out() {
        let r = InterruptRequest::from_msi(0xfee0_1000, 0x4031).unwrap();
        assert_eq!(r.kind, InterruptKind::Fixed);
        assert_eq!(
            (r.destination, r.logical, r.vector, r.level),
            (1, false, 0x31, false)
        );
        let r = InterruptRequest::from_msi(0xfee0_2004, 0x8141).unwrap();
        assert_eq!(r.kind, InterruptKind::LowestPriority);
        assert_eq!(
            (r.destination, r.logical, r.vector, r.level),
            (2, true, 0x41, true)
        );
        assert!(InterruptRequest::from_msi(0xfec0_0000, 0x41).is_err());
        assert!(InterruptRequest::from_msi(0xfee0_0000, 0x005)
            .unwrap_err()
            .to_string()
            .contains("vector 5"));
        assert!(InterruptRequest::from_msi(0xfee0_0000, 0x241)
            .unwrap_err()
            .to_string()
            .contains("delivery mode 2"));
    }

    #[test]
    fn the_hv_types_are_mshvs() {
        assert_eq!(InterruptKind::Fixed.hv_type(), 0);
        assert_eq!(InterruptKind::Nmi.hv_type(), 4);
        assert_eq!(InterruptKind::Sipi.hv_type(), 6);
        assert_eq!(InterruptKind::ExtInt.hv_type(), 7);
    }
}
