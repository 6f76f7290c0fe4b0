//! Linear-to-physical translation: 32-bit, PAE and 4-level paging with every check
//! of the SDM (vol 3 chapter 4): present, reserved bits (RSVD), read/write with CR0.WP,
//! user/supervisor, NX with EFER.NXE, SMEP and SMAP, protection keys (PKRU with
//! CR4.PKE, IA32_PKRS with CR4.PKS), and the accessed and dirty bits.

use crate::phys::PhysMap;
use crate::state::*;

/// Physical address width (CPUID 0x80000008 EAX[7:0]); bits at and above it are
/// reserved in paging-structure entries (SDM vol 3 4.1.4).
pub const MAXPHYADDR: u32 = 40;
/// Linear address width in 4-level paging.
pub const LINEAR_BITS: u32 = 48;

/// What an access is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Execute,
}

/// Who makes an access, for the user/supervisor and SMAP rules (SDM vol 3 4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// CPL 3.
    User,
    /// CPL 0-2 with EFLAGS.AC as given (SMAP lets such a data access reach a user page
    /// when AC is set).
    Supervisor { ac: bool },
    /// An implicit supervisor access (descriptor tables, the TSS) at any CPL: SMAP always applies.
    Implicit,
}

/// A page fault: the faulting linear address and the #PF error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    pub address: u64,
    pub error_code: u32,
}

pub const PF_P: u32 = 1;
pub const PF_W: u32 = 1 << 1;
pub const PF_U: u32 = 1 << 2;
pub const PF_RSVD: u32 = 1 << 3;
pub const PF_I: u32 = 1 << 4;
/// A protection key denied a data access (SDM vol 3 4.7, "PK flag (bit 5)").
pub const PF_PK: u32 = 1 << 5;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const NX: u64 = 1 << 63;
/// Address bits of an entry below MAXPHYADDR.
const ADDR: u64 = ((1u64 << MAXPHYADDR) - 1) & !0xfff;
/// Bits MAXPHYADDR..51, reserved in PAE and 4-level entries.
const HIGH_RSVD_4LEVEL: u64 = ((1u64 << 52) - 1) & !((1u64 << MAXPHYADDR) - 1);
/// Bits MAXPHYADDR..62, reserved in PAE paging-structure entries (Tables 4-8..4-11).
const HIGH_RSVD_PAE: u64 = ((1u64 << 63) - 1) & !((1u64 << MAXPHYADDR) - 1);

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub gpa: u64,
    /// U/S set at every level: a user page.
    pub user: bool,
    /// R/W set at every level.
    pub writable: bool,
    /// XD set at some level with EFER.NXE.
    pub no_exec: bool,
    /// The leaf's dirty bit is set (a write through a cached entry needs no walk).
    pub dirty: bool,
    pub global: bool,
    /// The protection key in force on the page ([`NO_KEY`] where none is): bits 62:59
    /// of the entry that maps it (SDM vol 3 4.5) in bits 3:0, and [`KEY_USER`] for a
    /// user page (ruled by PKRU, with CR4.PKE) rather than a supervisor one (IA32_PKRS,
    /// with CR4.PKS), in 4-level paging only (4.6.2).
    pub key: u8,
}

/// [`Translation::key`]: no protection key rules the page.
pub const NO_KEY: u8 = 0xff;
/// [`Translation::key`]: the key is a user page's, ruled by PKRU.
pub const KEY_USER: u8 = 0x10;

/// The protection-key rights that rule a page, AD in bit 0 and WD in bit 1 (SDM vol 3
/// 4.6.2): key `key`'s pair of PKRU for a user-mode page (U/S set at every level) with
/// CR4.PKE, of IA32_PKRS for a supervisor-mode one with CR4.PKS; 0 (no restriction)
/// when that control is clear or 4-level paging is not active ("If CR4.PKE = 0, or if
/// IA-32e paging is not active, the processor does not associate linear addresses
/// with protection keys").
#[inline]
pub fn key_rights(cpu: &Cpu, user_page: bool, key: u8) -> u32 {
    if !cpu.long_mode_active() {
        return 0;
    }
    let rights = if user_page {
        if cpu.cr4 & CR4_PKE == 0 {
            return 0;
        }
        cpu.pkru
    } else {
        if cpu.cr4 & CR4_PKS == 0 {
            return 0;
        }
        cpu.msr.pkrs as u32
    };
    (rights >> (2 * u32::from(key & 15))) & 3
}

/// Rights bit: access-disable (ADi).
pub const KEY_AD: u32 = 1;
/// Rights bit: write-disable (WDi).
pub const KEY_WD: u32 = 2;

/// Whether key rights `rights` ([`key_rights`]) deny a data access (SDM vol 3 4.6.2):
/// ADi denies every data access, reads and writes, user-mode and supervisor-mode,
/// explicit and implicit; WDi denies user-mode writes, and supervisor-mode writes only
/// while CR0.WP = 1. Instruction fetches are never checked.
#[inline]
pub fn key_denies(rights: u32, access: Access, user_access: bool, wp: bool) -> bool {
    match access {
        Access::Execute => false,
        Access::Read => rights & KEY_AD != 0,
        Access::Write => rights & KEY_AD != 0 || rights & KEY_WD != 0 && (user_access || wp),
    }
}

/// The paging mode CR0, CR4 and EFER select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    None,
    Bits32,
    Pae,
    Level4,
}

pub fn mode(cpu: &Cpu) -> Mode {
    if cpu.cr0 & CR0_PG == 0 || cpu.cr0 & CR0_PE == 0 {
        Mode::None
    } else if cpu.long_mode_active() {
        Mode::Level4
    } else if cpu.cr4 & CR4_PAE != 0 {
        Mode::Pae
    } else {
        Mode::Bits32
    }
}

/// Whether 1 GiB pages are supported (CPUID.80000001H:EDX.Page1GB).
pub const PAGE_1G: bool = true;

/// Walks the page tables for `lin`. `set_bits`: update the accessed and dirty bits as
/// the processor does (a VMM's translation hypercall may leave them alone).
pub fn walk(
    cpu: &Cpu,
    mem: &PhysMap,
    lin: u64,
    access: Access,
    who: Privilege,
    set_bits: bool,
) -> Result<Translation, PageFault> {
    let m = mode(cpu);
    if m == Mode::None {
        let gpa = if cpu.long_mode_active() {
            lin
        } else {
            lin & 0xffff_ffff
        };
        return Ok(Translation {
            gpa,
            user: true,
            writable: true,
            no_exec: false,
            dirty: true,
            global: false,
            key: NO_KEY,
        });
    }
    let user_access = who == Privilege::User;
    let nxe = cpu.efer & EFER_NXE != 0;
    // I/D is reported for fetches only where NX or SMEP exist to cause them (SDM vol 3 4.7).
    let report_fetch =
        access == Access::Execute && (nxe && m != Mode::Bits32 || cpu.cr4 & CR4_SMEP != 0);
    let code = |bits: u32| -> PageFault {
        PageFault {
            address: lin,
            error_code: bits
                | if access == Access::Write { PF_W } else { 0 }
                | if user_access { PF_U } else { 0 }
                | if report_fetch { PF_I } else { 0 },
        }
    };
    let read = |gpa: u64, wide: bool| -> Option<u64> {
        if wide {
            mem.read_u64(gpa)
        } else {
            mem.read_u32(gpa).map(u64::from)
        }
    };
    // Entries visited, to set their accessed bits once the translation succeeds.
    let mut visited: [(u64, u64, bool); 4] = [(0, 0, false); 4];
    let mut depth = 0usize;
    let mut writable = true;
    let mut user = true;
    let mut no_exec = false;
    let (gpa, leaf_entry, leaf_at, wide) = match m {
        Mode::Bits32 => {
            let pde_at = (cpu.cr3 & 0xffff_f000) + ((lin >> 22) & 0x3ff) * 4;
            let pde = read(pde_at, false).ok_or(code(0))?;
            if pde & P == 0 {
                return Err(code(0));
            }
            writable &= pde & RW != 0;
            user &= pde & US != 0;
            if pde & PS != 0 && cpu.cr4 & CR4_PSE != 0 {
                // PSE-36: PDE bits 20:13 are physical address bits 39:32; bit 21 is
                // reserved with MAXPHYADDR = 40 (SDM vol 3 Table 4-4).
                if pde & (1 << 21) != 0 {
                    return Err(code(PF_P | PF_RSVD));
                }
                let base = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
                (base | (lin & 0x3f_ffff), pde, pde_at, false)
            } else {
                visited[depth] = (pde_at, pde, false);
                depth += 1;
                let pte_at = (pde & 0xffff_f000) + ((lin >> 12) & 0x3ff) * 4;
                let pte = read(pte_at, false).ok_or(code(0))?;
                if pte & P == 0 {
                    return Err(code(0));
                }
                writable &= pte & RW != 0;
                user &= pte & US != 0;
                ((pte & 0xffff_f000) | (lin & 0xfff), pte, pte_at, false)
            }
        }
        Mode::Pae | Mode::Level4 => {
            let level4 = m == Mode::Level4;
            let high = if level4 {
                HIGH_RSVD_4LEVEL
            } else {
                HIGH_RSVD_PAE
            };
            let nx_rsvd = if nxe { 0 } else { NX };
            let mut table;
            let levels: &[u32] = if level4 {
                table = cpu.cr3 & ADDR;
                &[39, 30, 21, 12]
            } else {
                // The PDPTEs were loaded with CR3 and checked then (SDM vol 3 4.4.1).
                let pdpte = cpu.pdpte[((lin >> 30) & 3) as usize];
                if pdpte & P == 0 {
                    return Err(code(0));
                }
                table = pdpte & ADDR;
                &[21, 12]
            };
            let mut result = None;
            for (i, &shift) in levels.iter().enumerate() {
                let at = table + ((lin >> shift) & 0x1ff) * 8;
                let e = read(at, true).ok_or(code(0))?;
                if e & P == 0 {
                    return Err(code(0));
                }
                let last = i == levels.len() - 1;
                let large = !last && e & PS != 0;
                let mut rsvd = e & (high | nx_rsvd);
                if large {
                    // PS in a PML4E is reserved; a PDPTE maps 1 GiB only where supported.
                    if shift == 39 || shift == 30 && !PAGE_1G {
                        rsvd |= PS;
                    }
                    // Bits 12 (PAT) .. page size - 1 above it are reserved, except PAT.
                    let low_rsvd = ((1u64 << shift) - 1) & !0x1fff;
                    rsvd |= e & low_rsvd;
                }
                if rsvd != 0 {
                    return Err(code(PF_P | PF_RSVD));
                }
                writable &= e & RW != 0;
                user &= e & US != 0;
                no_exec |= nxe && e & NX != 0;
                if last || large {
                    let page = (1u64 << shift) - 1;
                    result = Some(((e & ADDR & !page) | (lin & page), e, at));
                    break;
                }
                visited[depth] = (at, e, true);
                depth += 1;
                table = e & ADDR;
            }
            let (gpa, e, at) = result.ok_or(code(0))?;
            (gpa, e, at, true)
        }
        Mode::None => unreachable!("handled above"),
    };
    // Protection (SDM vol 3 4.6).
    let smap = cpu.cr4 & CR4_SMAP != 0;
    let smep = cpu.cr4 & CR4_SMEP != 0;
    let wp = cpu.cr0 & CR0_WP != 0;
    let allowed = match (access, who) {
        (Access::Execute, Privilege::User) => user && !no_exec,
        (Access::Execute, _) => !(no_exec || smep && user),
        (Access::Read, Privilege::User) => user,
        (Access::Write, Privilege::User) => user && writable,
        (Access::Read, Privilege::Supervisor { ac }) => !(smap && user && !ac),
        (Access::Read, Privilege::Implicit) => !(smap && user),
        (Access::Write, Privilege::Supervisor { ac }) => {
            !(smap && user && !ac) && (writable || !wp)
        }
        (Access::Write, Privilege::Implicit) => !(smap && user) && (writable || !wp),
    };
    // Protection keys (SDM vol 3 4.6.2), 4-level paging only: data accesses to a page
    // whose key's rights deny them fault with PK set, whether or not the other rights
    // deny them too (4.7: PK is 1 when the key's rights deny the access; as hardware
    // reports it, which Xen found experimentally and KVM's permission_fault computes).
    // With CR4.PKE and CR4.PKS clear one test passes over it all.
    let (key, keyed) = if cpu.cr4 & (CR4_PKE | CR4_PKS) != 0 {
        key_check(cpu, leaf_entry, user, access, who)
    } else {
        (NO_KEY, false)
    };
    if !allowed || keyed {
        return Err(code(PF_P | if keyed { PF_PK } else { 0 }));
    }
    let mut dirty = leaf_entry & D != 0;
    if set_bits {
        for &(at, e, wide) in &visited[..depth] {
            if e & A == 0 && !write_entry(mem, at, e | A, wide) {
                return Err(code(PF_P));
            }
        }
        let mut updated = leaf_entry | A;
        if access == Access::Write {
            updated |= D;
            dirty = true;
        }
        if updated != leaf_entry && !write_entry(mem, leaf_at, updated, wide) {
            return Err(code(PF_P));
        }
    }
    Ok(Translation {
        gpa,
        user,
        writable,
        no_exec,
        dirty,
        global: leaf_entry & G != 0 && cpu.cr4 & CR4_PGE != 0,
        key,
    })
}

/// The [`Translation::key`] of a page whose leaf entry is `leaf` (a user page: `user`),
/// and whether that key denies `access` by `who` ([`key_rights`], [`key_denies`]).
/// The key is bits 62:59 of the leaf in 4-level paging: a key in force needs EFER.LMA
/// (PAE entries have those bits reserved, 32-bit ones have none). Out of line, so the
/// walk of a processor with CR4.PKE and CR4.PKS clear carries none of it.
#[cold]
#[inline(never)]
fn key_check(cpu: &Cpu, leaf: u64, user: bool, access: Access, who: Privilege) -> (u8, bool) {
    let in_force = cpu.long_mode_active() && cpu.cr4 & if user { CR4_PKE } else { CR4_PKS } != 0;
    if !in_force {
        return (NO_KEY, false);
    }
    let key = ((leaf >> 59) & 15) as u8;
    let denied = key_denies(
        key_rights(cpu, user, key),
        access,
        who == Privilege::User,
        cpu.cr0 & CR0_WP != 0,
    );
    (if user { key | KEY_USER } else { key }, denied)
}

fn write_entry(mem: &PhysMap, at: u64, v: u64, wide: bool) -> bool {
    if wide {
        mem.write_u64(at, v)
    } else {
        mem.write_u32(at, v as u32)
    }
}

/// Loads the four PAE PDPTEs for CR3 (MOV CR3, and CR0/CR4 writes that enter PAE
/// paging): `false` when one that is present has reserved bits set, which is #GP(0)
/// (SDM vol 3 4.4.1).
pub fn load_pdptes(cpu: &mut Cpu, mem: &PhysMap) -> bool {
    let base = cpu.cr3 & 0xffff_ffe0;
    let mut out = [0u64; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let v = mem.read_u64(base + i as u64 * 8).unwrap_or(0);
        // Bits 2:1, 8:5 and 63:MAXPHYADDR are reserved.
        let rsvd = 0x1e6 | !((1u64 << MAXPHYADDR) - 1);
        if v & P != 0 && v & rsvd != 0 {
            return false;
        }
        *e = v;
    }
    cpu.pdpte = out;
    true
}

/// Whether `lin` is canonical: bits 63..47 all equal (SDM vol 1 3.3.7.1).
#[inline(always)]
pub fn canonical(lin: u64) -> bool {
    ((lin as i64) << (64 - LINEAR_BITS) >> (64 - LINEAR_BITS)) as u64 == lin
}
