//! The VMM's side of a vCPU's local APIC registers: read the LAPIC state page, change
//! it, write it back (MSHV's `MSHV_GET_VP_STATE`/`MSHV_SET_VP_STATE` with
//! `MSHV_VP_STATE_LAPIC`, KVM's `KVM_GET_LAPIC`/`KVM_SET_LAPIC`), and the one change
//! every VMM makes at vCPU creation: LINT0 and LINT1's delivery modes (`set_lint`).
//!
//! Sources: Cloud Hypervisor `arch/src/x86_64/interrupts.rs` `set_lint` (called for
//! every vCPU by `arch/src/x86_64/mod.rs` `configure_vcpu`; its test `test_setlint` in
//! `vmm/src/cpu.rs`), QEMU `target/i386/mshv/mshv-cpu.c` `set_lint` (called for every
//! vCPU by `mshv_configure_vcpu`): both read the LAPIC state, set LVT LINT0's delivery
//! mode to ExtINT and LVT LINT1's to NMI, keep every other bit (the mask among them),
//! and write the state back. KVM's `kvm_lapic_reset` (arch/x86/kvm/lapic.c) leaves the
//! BSP's LINT0 unmasked in ExtINT mode, where the SDM's reset state masks it, under
//! `KVM_X86_QUIRK_LINT0_REENABLED` (on by default): the virtual-wire mode a BIOS sets up
//! (SeaBIOS `src/fw/smp.c` `smp_setup`: LINT0 = 0x8700), which CH and Firecracker,
//! booting without firmware, rely on for the 8259's interrupts. [`set_lint`] does both,
//! so the BSP gets the same LINT0 on either backend whatever the hypervisor's reset
//! value (MSHV documents none). LVT layout: Intel SDM vol 3 11.5.1, Figure 11-8.

use crate::error::{HvError, Result};

/// LVT LINT0 and LINT1's offsets in the APIC page (SDM vol 3 Table 11-1).
pub const LVT_LINT0: usize = 0x350;
pub const LVT_LINT1: usize = 0x360;
/// The delivery-mode field of an LVT entry, bits 10:8 (SDM vol 3 Figure 11-8).
pub const LVT_DELIVERY_MODE: u32 = 0x700;
/// Delivery modes (SDM vol 3 11.5.1): NMI 100b, ExtINT 111b.
pub const DELIVERY_NMI: u32 = 0x4;
pub const DELIVERY_EXTINT: u32 = 0x7;
/// An LVT entry's mask bit (bit 16).
pub const LVT_MASKED: u32 = 1 << 16;

/// Reads and writes a vCPU's LAPIC state page ([`crate::state::LAPIC_STATE_SIZE`] bytes in the APIC's
/// MMIO layout). Every [`crate::VcpuBackend`] has it.
pub trait LapicAccess {
    fn lapic(&mut self) -> Result<Vec<u8>>;
    fn set_lapic(&mut self, lapic: &[u8]) -> Result<()>;
}

impl<T: crate::VcpuBackend + ?Sized> LapicAccess for T {
    fn lapic(&mut self) -> Result<Vec<u8>> {
        crate::VcpuBackend::lapic(self)
    }

    fn set_lapic(&mut self, lapic: &[u8]) -> Result<()> {
        crate::VcpuBackend::set_lapic(self, lapic)
    }
}

/// The 32-bit register at `offset` of a LAPIC state page.
pub fn register(lapic: &[u8], offset: usize) -> Result<u32> {
    lapic
        .get(offset..offset + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| {
            HvError::InvalidArgument(format!(
                "the local APIC state is {} bytes: it has no register at {offset:#x}",
                lapic.len()
            ))
        })
}

/// Writes the 32-bit register at `offset` of a LAPIC state page.
pub fn set_register(lapic: &mut [u8], offset: usize, value: u32) -> Result<()> {
    let len = lapic.len();
    let slot = lapic.get_mut(offset..offset + 4).ok_or_else(|| {
        HvError::InvalidArgument(format!(
            "the local APIC state is {len} bytes: it has no register at {offset:#x}"
        ))
    })?;
    slot.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// `reg` with its delivery mode replaced by `mode` (CH's `set_apic_delivery_mode`).
pub fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !LVT_DELIVERY_MODE) | (mode << 8)
}

/// What [`set_lint`] writes into a LAPIC state page: LINT0's delivery mode ExtINT and
/// LINT1's NMI, the rest of each entry kept (CH's and QEMU's `set_lint`); and on the
/// BSP, LINT0 unmasked (KVM's LINT0_REENABLED reset, a BIOS's virtual wire).
pub fn lint_page(lapic: &mut [u8], bsp: bool) -> Result<()> {
    crate::state::check_lapic(lapic)?;
    let mut lint0 = with_delivery_mode(register(lapic, LVT_LINT0)?, DELIVERY_EXTINT);
    if bsp {
        lint0 &= !LVT_MASKED;
    }
    set_register(lapic, LVT_LINT0, lint0)?;
    let lint1 = with_delivery_mode(register(lapic, LVT_LINT1)?, DELIVERY_NMI);
    set_register(lapic, LVT_LINT1, lint1)
}

/// Programs LINT0 and LINT1 of a new vCPU as CH's and QEMU's `set_lint` do, in their
/// order: one read of the LAPIC state, one write of the changed page. `bsp`: the
/// bootstrap processor (vCPU 0, KVM's `kvm_vcpu_is_reset_bsp`), whose LINT0 is
/// also unmasked so the 8259's interrupts reach it as on a PC after its BIOS.
pub fn set_lint<V: LapicAccess + ?Sized>(vcpu: &mut V, bsp: bool) -> Result<()> {
    let mut lapic = vcpu.lapic()?;
    lint_page(&mut lapic, bsp)?;
    vcpu.set_lapic(&lapic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LAPIC_STATE_SIZE;

    /// A LAPIC in the SDM's reset state (vol 3 11.4.7.1: every LVT entry masked), with
    /// bits beside the delivery mode set to see that they are kept.
    struct Page(Vec<u8>, Vec<&'static str>);

    impl LapicAccess for Page {
        fn lapic(&mut self) -> Result<Vec<u8>> {
            self.1.push("get");
            Ok(self.0.clone())
        }
        fn set_lapic(&mut self, lapic: &[u8]) -> Result<()> {
            self.1.push("set");
            self.0 = lapic.to_vec();
            Ok(())
        }
    }

    fn reset_page() -> Page {
        let mut p = vec![0u8; LAPIC_STATE_SIZE];
        set_register(&mut p, LVT_LINT0, LVT_MASKED | 1 << 15 | 0x30).unwrap();
        set_register(&mut p, LVT_LINT1, LVT_MASKED).unwrap();
        Page(p, Vec::new())
    }

    /// CH `vmm/src/cpu.rs` `test_setlint`: after `set_lint`, LVT0 is the old value with
    /// delivery mode ExtINT and LVT1 the old value with delivery mode NMI.
    #[test]
    fn ch_set_lint_sets_delivery_modes_and_keeps_the_rest_on_an_ap() {
        let mut ap = reset_page();
        set_lint(&mut ap, false).unwrap();
        assert_eq!(
            ap.1,
            ["get", "set"],
            "one read, then one write (CH's order)"
        );
        assert_eq!(
            register(&ap.0, LVT_LINT0).unwrap(),
            LVT_MASKED | 1 << 15 | 0x700 | 0x30
        );
        assert_eq!(register(&ap.0, LVT_LINT1).unwrap(), LVT_MASKED | 0x400);
    }

    /// KVM `kvm_lapic_reset` under KVM_X86_QUIRK_LINT0_REENABLED: the BSP's LVT0 is
    /// unmasked ExtINT (0x700 from a zeroed entry); LINT1 stays masked, as there.
    #[test]
    fn kvm_lint0_reenabled_unmasks_the_bsps_lint0_only() {
        let mut bsp = reset_page();
        set_lint(&mut bsp, true).unwrap();
        assert_eq!(register(&bsp.0, LVT_LINT0).unwrap(), 1 << 15 | 0x700 | 0x30);
        assert_eq!(register(&bsp.0, LVT_LINT1).unwrap(), LVT_MASKED | 0x400);
    }

    #[test]
    fn a_short_page_is_an_error_and_is_not_written() {
        let mut p = Page(vec![0u8; 16], Vec::new());
        let e = set_lint(&mut p, true).unwrap_err();
        assert!(e.to_string().contains("1024"), "{e}");
        assert_eq!(p.1, ["get"]);
    }
}
