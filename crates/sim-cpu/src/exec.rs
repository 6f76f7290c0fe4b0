//! The execution context of one processor while it runs: registers by encoding,
//! segmented and linear memory access through the TLB, and the slow paths behind it
//! (page walks, faults, MMIO exits, writes to pages holding translated code).

use crate::cache::CodeCache;
use crate::fault::{Exit, Fault, Stop, GP, SS as SS_VECTOR};
use crate::flags::{mask, AC};
use crate::paging::{self, canonical, Access, PageFault, Privilege};
use crate::phys::{PhysMap, Target};
use crate::state::*;
use crate::tlb::{need, FillRules, Keys, Tlb};
use crate::Env;

/// Register encodings of 8-bit operands 16..19: AH, CH, DH, BH.
pub const AH: u8 = 16;
/// "No register" in an operand field.
pub const NONE: u8 = 0xff;

/// One processor while it runs.
pub struct Exec<'a> {
    pub cpu: &'a mut Cpu,
    pub tlb: &'a mut Tlb,
    pub mem: &'a PhysMap,
    pub env: &'a mut dyn Env,
    pub cache: &'a mut CodeCache,
    /// The exception a [`Stop::Fault`] raises.
    pub fault: Fault,
    /// Why a [`Stop::Exit`] exits.
    pub exit: Exit,
    /// String iterations done since the run loop last looked (work between its checks).
    pub work: u64,
    /// The current block must end after this instruction (its code may have changed,
    /// or the processor's mode did).
    pub end_block: bool,
    /// The hypervisor's watched ranges: their pages stay out of the TLB, so every access
    /// to them comes through the checked paths below.
    pub watches: &'a [hv_core::state::Watchpoint],
    /// The slot of a watchpoint the current instruction hit: the run stops after it.
    pub watch_hit: Option<usize>,
    /// The exit in `exit` came from an access made while delivering an event (see
    /// `interrupt::deliver`), not from the instruction's own.
    pub exit_in_delivery: bool,
    /// The guest's breakpoints (its DR0-DR3 and DR7), decoded.
    pub bps: crate::dr::Breakpoints,
    /// DR6 bits (B0-B3, BS) of debug traps owed: the data breakpoints the current
    /// instruction hit, or traps of an instruction the VMM completes, due when the
    /// run resumes at `db_at`.
    pub db_traps: u64,
    /// Where the traps in `db_traps` of an instruction that exited are due: the RIP
    /// after it, which the VMM sets when it completes the instruction (None: RIP).
    pub db_at: Option<u64>,
    /// The event the current instruction delivered itself (INT n, INT1): looked at
    /// only by the run loop's one-instruction path, which clears it before each.
    pub gate: crate::dr::Gate,
    /// Blocks must be looked at for breakpoints before they run (the hypervisor's
    /// debugger is on, or the guest has instruction breakpoints).
    pub debug_blocks: bool,
}

impl Exec<'_> {
    /// An access of `size` bytes at `lin` completed: a watchpoint it hits stops the run
    /// after this instruction.
    #[inline(always)]
    fn watch(&mut self, lin: u64, size: usize, write: bool) {
        if self.watches.is_empty() && !self.bps.data() {
            return;
        }
        self.watch_slow(lin, size, write);
    }

    #[inline(never)]
    fn watch_slow(&mut self, lin: u64, size: usize, write: bool) {
        if let Some(i) = self
            .watches
            .iter()
            .position(|w| w.hit(lin, size as u64, write))
        {
            self.watch_hit.get_or_insert(i);
            self.end_block = true;
        }
        // The guest's data breakpoints: a trap after the instruction (SDM vol 3
        // 18.2.5), delivered by the run loop.
        let hits = self.bps.data_hits(lin, size, write);
        if hits != 0 {
            self.db_traps |= hits;
            self.end_block = true;
        }
    }

    /// Whether the page of `lin` holds a watched byte, the hypervisor's or a guest data
    /// breakpoint's (kept out of the TLB).
    fn watched_page(&self, lin: u64) -> bool {
        let page = lin & !0xfff;
        self.watches
            .iter()
            .any(|w| w.hit(page, 0x1000, true) || w.hit(page, 0x1000, false))
            || self.bps.on_page(lin)
    }

    /// DR0-DR3 or DR7 changed (MOV DR): the guest's breakpoints are decoded again. A
    /// page that now holds a data breakpoint must leave the TLB.
    pub fn breakpoints_changed(&mut self) {
        let bps = crate::dr::Breakpoints::new(&self.cpu.dr);
        if bps != self.bps {
            if bps.data() {
                self.tlb.flush();
            }
            self.bps = bps;
            self.debug_blocks |= bps.exec != 0;
        }
    }

    // ---- faults --------------------------------------------------------------------

    /// Raises exception `vector` with `error_code`.
    #[inline(never)]
    #[cold]
    pub fn raise(&mut self, vector: u8, error_code: Option<u32>) -> Stop {
        self.fault = Fault {
            vector,
            error_code,
            cr2: None,
        };
        Stop::Fault
    }

    #[cold]
    pub fn gp(&mut self, error_code: u32) -> Stop {
        self.raise(GP, Some(error_code))
    }

    #[cold]
    pub fn ud(&mut self) -> Stop {
        self.raise(crate::fault::UD, None)
    }

    #[cold]
    pub fn page_fault(&mut self, pf: PageFault) -> Stop {
        self.fault = Fault {
            vector: crate::fault::PF,
            error_code: Some(pf.error_code),
            cr2: Some(pf.address),
        };
        Stop::Fault
    }

    #[cold]
    pub fn exit_with(&mut self, exit: Exit) -> Stop {
        self.exit = exit;
        Stop::Exit
    }

    /// An instruction this processor lacks: #UD, as hardware without it.
    #[cold]
    pub fn unsupported(&mut self) -> Stop {
        self.exit_with(Exit::Unsupported)
    }

    // ---- registers -------------------------------------------------------------------

    /// Reads register `r` (an encoding: 0..15, or 16..19 for AH..BH at size 1) as a
    /// `size`-byte value.
    #[inline(always)]
    pub fn reg(&self, r: u8, size: usize) -> u64 {
        if size == 1 && r >= AH {
            (self.cpu.gpr[(r - AH) as usize] >> 8) & 0xff
        } else {
            self.cpu.gpr[r as usize & 15] & mask(size)
        }
    }

    /// Writes register `r` as x86 does: 8- and 16-bit writes keep the rest, 32-bit
    /// writes clear bits 63:32 (SDM vol 1 3.4.1.1).
    #[inline(always)]
    pub fn set_reg(&mut self, r: u8, size: usize, v: u64) {
        match size {
            1 => {
                if r >= AH {
                    let g = &mut self.cpu.gpr[(r - AH) as usize];
                    *g = (*g & !0xff00) | ((v & 0xff) << 8);
                } else {
                    let g = &mut self.cpu.gpr[r as usize & 15];
                    *g = (*g & !0xff) | (v & 0xff);
                }
            }
            2 => {
                let g = &mut self.cpu.gpr[r as usize & 15];
                *g = (*g & !0xffff) | (v & 0xffff);
            }
            4 => self.cpu.gpr[r as usize & 15] = v & 0xffff_ffff,
            _ => self.cpu.gpr[r as usize & 15] = v,
        }
    }

    // ---- segmentation ----------------------------------------------------------------

    /// The linear address of `seg:offset` for a `size`-byte access, with the checks
    /// of SDM vol 3 5.3 (limits, expand-down, unusable segments) and 5.4 (types) in
    /// legacy modes and the canonical check of vol 1 3.3.7.1 in 64-bit mode. A stack
    /// segment fault is #SS(0), any other #GP(0).
    #[inline(always)]
    pub fn linear(&mut self, seg: usize, off: u64, size: usize, write: bool) -> Result<u64, Stop> {
        let cpu = &*self.cpu;
        if cpu.mode64() {
            let lin = cpu.linear_of(seg, off);
            if !canonical(lin) || !canonical(lin.wrapping_add(size as u64 - 1)) {
                return Err(self.segment_fault(seg));
            }
            return Ok(lin);
        }
        self.linear_legacy(seg, off, size, write)
    }

    /// [`Exec::linear`] outside 64-bit mode: out of line, so the handlers that inline
    /// the 64-bit path stay small.
    #[inline(never)]
    fn linear_legacy(
        &mut self,
        seg: usize,
        off: u64,
        size: usize,
        write: bool,
    ) -> Result<u64, Stop> {
        let cpu = &*self.cpu;
        let s = &cpu.seg[seg];
        let last = off.wrapping_add(size as u64 - 1);
        if cpu.cr0 & CR0_PE != 0 && cpu.flags.bits & crate::flags::VM == 0 {
            // Protected mode: an unusable (null) segment, then the type, then the limit.
            let a = s.attributes;
            if a & ATTR_P == 0 {
                return Err(self.segment_fault(seg));
            }
            if a & ATTR_S != 0 {
                let code = a & 8 != 0;
                let ok_type = if write {
                    !code && a & 2 != 0
                } else {
                    !code || a & 2 != 0
                };
                if !ok_type {
                    return Err(self.segment_fault(seg));
                }
                if !code && a & 4 != 0 {
                    // Expand-down: valid offsets are (limit, upper].
                    let upper = if a & ATTR_DB != 0 {
                        0xffff_ffff
                    } else {
                        0xffff
                    };
                    if off <= s.limit as u64 || last > upper || last < off {
                        return Err(self.segment_fault(seg));
                    }
                    return Ok(cpu.linear_of(seg, off));
                }
            }
        }
        if last > s.limit as u64 || last < off {
            return Err(self.segment_fault(seg));
        }
        Ok(cpu.linear_of(seg, off))
    }

    #[cold]
    fn segment_fault(&mut self, seg: usize) -> Stop {
        if seg == SS {
            self.raise(SS_VECTOR, Some(0))
        } else {
            self.gp(0)
        }
    }

    /// Who makes an ordinary data access now.
    #[inline(always)]
    pub fn privilege(&self) -> Privilege {
        if self.cpu.cpl() == 3 {
            Privilege::User
        } else {
            Privilege::Supervisor {
                ac: self.cpu.flags.bits & AC != 0,
            }
        }
    }

    // ---- memory ----------------------------------------------------------------------

    /// Reads `size` bytes (1, 2, 4 or 8) at `seg:off`.
    #[inline(always)]
    pub fn read(&mut self, seg: usize, off: u64, size: usize) -> Result<u64, Stop> {
        let lin = self.linear(seg, off, size, false)?;
        self.read_lin(lin, size, Access::Read)
    }

    /// Writes the low `size` bytes of `v` at `seg:off`.
    #[inline(always)]
    pub fn write(&mut self, seg: usize, off: u64, size: usize, v: u64) -> Result<(), Stop> {
        let lin = self.linear(seg, off, size, true)?;
        self.write_lin(lin, size, v)
    }

    /// Reads at a linear address, with the current privilege.
    #[inline(always)]
    pub fn read_lin(&mut self, lin: u64, size: usize, access: Access) -> Result<u64, Stop> {
        let user = self.cpu.cpl() == 3;
        self.read_lin_as(lin, size, access, user)
    }

    /// [`Exec::read_lin`] for a caller that knows whether CPL is 3.
    #[inline(always)]
    fn read_lin_as(
        &mut self,
        lin: u64,
        size: usize,
        access: Access,
        user: bool,
    ) -> Result<u64, Stop> {
        if (lin & 0xfff) as usize + size <= 0x1000 {
            if let Some(p) = self.tlb.lookup(lin, need(access, user)) {
                // SAFETY: the TLB maps the whole page to RAM; the access stays inside it.
                return Ok(unsafe { hv_core::shared::load(p, size) });
            }
        }
        let who = self.privilege();
        self.read_slow(lin, size, access, who)
    }

    /// Writes at a linear address, with the current privilege.
    #[inline(always)]
    pub fn write_lin(&mut self, lin: u64, size: usize, v: u64) -> Result<(), Stop> {
        let user = self.cpu.cpl() == 3;
        self.write_lin_as(lin, size, v, user)
    }

    /// [`Exec::write_lin`] for a caller that knows whether CPL is 3.
    #[inline(always)]
    fn write_lin_as(&mut self, lin: u64, size: usize, v: u64, user: bool) -> Result<(), Stop> {
        if (lin & 0xfff) as usize + size <= 0x1000 {
            if let Some(p) = self.tlb.lookup(lin, need(Access::Write, user)) {
                // SAFETY: the TLB grants writes to the whole page of RAM.
                unsafe { hv_core::shared::store(p, size, v) };
                return Ok(());
            }
        }
        let who = self.privilege();
        self.write_slow(lin, size, v, who)
    }

    /// An implicit supervisor read (descriptor tables, the TSS, the IDT).
    pub fn read_system(&mut self, lin: u64, size: usize) -> Result<u64, Stop> {
        self.read_slow(lin, size, Access::Read, Privilege::Implicit)
    }

    /// An implicit supervisor write (descriptor accessed and busy bits, the TSS).
    pub fn write_system(&mut self, lin: u64, size: usize, v: u64) -> Result<(), Stop> {
        self.write_slow(lin, size, v, Privilege::Implicit)
    }

    /// Translates one byte's page for `access`: the host pointer for `lin` and the
    /// bytes of plain RAM from it to the page's end, or the stop.
    pub fn translate(
        &mut self,
        lin: u64,
        access: Access,
        who: Privilege,
    ) -> Result<(*mut u8, usize), Stop> {
        let lin = if self.cpu.long_mode_active() {
            lin
        } else {
            lin & 0xffff_ffff
        };
        if let Some(gpa) = self
            .tlb
            .device(lin, need(access, matches!(who, Privilege::User)))
        {
            return Err(self.exit_with(Exit::Mmio {
                gpa,
                gva: lin,
                access,
                intercepted: false,
            }));
        }
        let t = match paging::walk(self.cpu, self.mem, lin, access, who, true) {
            Ok(t) => t,
            Err(pf) => return Err(self.page_fault(pf)),
        };
        let gpa = t.gpa;
        let rules = FillRules {
            paging: self.cpu.paging(),
            wp: self.cpu.cr0 & CR0_WP != 0,
            smep: self.cpu.cr4 & CR4_SMEP != 0,
            smap: self.cpu.cr4 & CR4_SMAP != 0,
        };
        match self.mem.lookup(gpa) {
            Target::Ram {
                host,
                writable,
                left,
            } => {
                if access == Access::Write && !writable {
                    return Err(self.exit_with(Exit::Mmio {
                        gpa,
                        gva: lin,
                        access,
                        intercepted: true,
                    }));
                }
                let page = gpa & !0xfff;
                let off = (gpa & 0xfff) as usize;
                if access == Access::Write {
                    // A write reaches the page now, or through the TLB entry made here.
                    if let Some(d) = &self.mem.dirty {
                        d.mark(gpa);
                    }
                }
                if access == Access::Write && self.cache.holds_page(page) {
                    // Self-modifying code: the blocks made from this page go, and the
                    // block running now ends after this instruction.
                    self.cache.invalidate_page(page);
                    self.end_block = true;
                }
                if left as usize >= 0x1000 - off
                    && self.mem.page_is_plain_ram(page)
                    && (self.watches.is_empty() && !self.bps.data() || !self.watched_page(lin))
                {
                    let code = self.cache.holds_page(page);
                    // SAFETY: the page start is `off` bytes before `host`, inside the region.
                    let start = unsafe { host.sub(off) };
                    // Logging dirty pages, only a write makes a writable entry: it has
                    // marked its page above.
                    let fill_writable =
                        writable && (self.mem.dirty.is_none() || access == Access::Write);
                    self.tlb.fill(lin, &t, start, fill_writable, code, rules);
                    self.key_filled(lin, &t);
                }
                Ok((host, (0x1000 - off).min(left as usize)))
            }
            target @ (Target::Unmapped | Target::Intercepted) => {
                let intercepted = matches!(target, Target::Intercepted);
                // Only a page that is all device: a page with RAM or an intercepted range
                // in it gives each byte its own answer.
                if !intercepted && self.mem.page_is_unmapped(gpa & !0xfff) {
                    self.tlb.fill_device(lin, &t, rules);
                    self.key_filled(lin, &t);
                }
                Err(self.exit_with(Exit::Mmio {
                    gpa,
                    gva: lin,
                    access,
                    intercepted,
                }))
            }
        }
    }

    /// The TLB entry just filled for `lin` takes the page's protection key, where one is
    /// in force (SDM vol 3 4.6.2, [`Tlb::key_filled`]); with none, this is one test.
    #[inline(always)]
    fn key_filled(&mut self, lin: u64, t: &paging::Translation) {
        if t.key != paging::NO_KEY {
            self.key_filled_slow(lin, t);
        }
    }

    #[cold]
    #[inline(never)]
    fn key_filled_slow(&mut self, lin: u64, t: &paging::Translation) {
        let keys = self.keys();
        self.tlb.key_filled(lin, t, keys);
    }

    /// The protection-key rights the TLB applies now (SDM vol 3 4.6.2).
    pub fn keys(&self) -> Keys {
        let cpu = &*self.cpu;
        Keys {
            pkru: cpu.pkru,
            pkrs: cpu.msr.pkrs as u32,
            wp: cpu.cr0 & CR0_WP != 0,
        }
    }

    /// Host pointers for each byte of an access that leaves its page or its RAM, all
    /// translated before any is touched (a fault or an exit changes nothing).
    fn bytewise(
        &mut self,
        lin: u64,
        size: usize,
        access: Access,
        who: Privilege,
    ) -> Result<[*mut u8; 8], Stop> {
        let mut ptrs = [std::ptr::null_mut(); 8];
        let mut k = 0;
        while k < size {
            let (p, left) = self.translate(lin.wrapping_add(k as u64), access, who)?;
            let n = left.min(size - k);
            for (j, slot) in ptrs[k..k + n].iter_mut().enumerate() {
                // SAFETY: `p` starts `left` >= `n` bytes of plain RAM.
                *slot = unsafe { p.add(j) };
            }
            k += n;
        }
        Ok(ptrs)
    }

    /// The APIC register offset an exit to `gpa` would have hit, when the hypervisor's
    /// local APIC decodes it (enabled in IA32_APIC_BASE in xAPIC mode, SDM vol 3
    /// 11.4.4): the access goes there instead. In x2APIC mode the page is not the APIC's:
    /// "any access to the MMIO interface will behave similar to that of a legacy xAPIC in
    /// globally disabled state" (11.12.2), so it goes where it would with the APIC
    /// disabled, to the VMM (as MSHV's unmapped-GPA intercept; KVM with its
    /// LAPIC_MMIO_HOLE quirk reads all ones and drops writes).
    fn apic_offset(&mut self, r: &Result<(*mut u8, usize), Stop>) -> Option<u32> {
        let Err(Stop::Exit) = r else { return None };
        let Exit::Mmio { gpa, .. } = self.exit else {
            return None;
        };
        let base = self.cpu.apic_base;
        if base & (3 << 10) != 1 << 11
            || !self.env.has_apic()
            || gpa & !0xfff != base & 0xf_ffff_f000
        {
            return None;
        }
        self.exit = Exit::None;
        Some((gpa & 0xfff) as u32)
    }

    #[inline(never)]
    pub fn read_slow(
        &mut self,
        lin: u64,
        size: usize,
        access: Access,
        who: Privilege,
    ) -> Result<u64, Stop> {
        let r = self.translate(lin, access, who);
        if let Some(off) = self.apic_offset(&r) {
            // 32-bit registers at 16-byte strides; a narrower read takes its bytes.
            let reg = self.env.apic_read(off & !0xf, self.cpu.tsc) as u64;
            let v = reg >> (8 * (off & 3));
            return Ok(if size >= 8 {
                v
            } else {
                v & ((1 << (8 * size)) - 1)
            });
        }
        let (p, left) = r?;
        if access != Access::Execute {
            self.watch(lin, size, false);
        }
        if left >= size {
            // SAFETY: `p` starts `left` >= `size` bytes of plain RAM.
            return Ok(unsafe { hv_core::shared::load(p, size) });
        }
        let ptrs = self.bytewise(lin, size, access, who)?;
        let mut v = 0u64;
        for (k, p) in ptrs.iter().enumerate().take(size) {
            // SAFETY: each pointer addresses one translated byte of RAM.
            v |= unsafe { hv_core::shared::load(*p, 1) } << (8 * k);
        }
        Ok(v)
    }

    #[inline(never)]
    pub fn write_slow(
        &mut self,
        lin: u64,
        size: usize,
        v: u64,
        who: Privilege,
    ) -> Result<(), Stop> {
        let r = self.translate(lin, Access::Write, who);
        if let Some(off) = self.apic_offset(&r) {
            // Only a write of the whole 32-bit register counts (SDM vol 3 11.4.1).
            self.end_block = true;
            if size >= 4 && off & 0xf == 0 {
                if let Some(vector) = self.env.apic_write(off, v as u32, self.cpu.tsc) {
                    return Err(self.exit_with(Exit::ApicEoi(vector)));
                }
            }
            return Ok(());
        }
        let (p, left) = r?;
        self.watch(lin, size, true);
        if left >= size {
            // SAFETY: `p` starts `left` >= `size` writable bytes of plain RAM.
            unsafe { hv_core::shared::store(p, size, v) };
            return Ok(());
        }
        let ptrs = self.bytewise(lin, size, Access::Write, who)?;
        for (k, p) in ptrs.iter().enumerate().take(size) {
            // SAFETY: each pointer addresses one translated, writable byte of RAM.
            unsafe { hv_core::shared::store(*p, 1, v >> (8 * k)) };
        }
        Ok(())
    }

    /// Translates every page of `size` bytes at `lin` for `access` (any size).
    fn check_range(
        &mut self,
        lin: u64,
        size: usize,
        access: Access,
        who: Privilege,
    ) -> Result<(), Stop> {
        let mut k = 0;
        while k < size {
            let (_, left) = self.translate(lin.wrapping_add(k as u64), access, who)?;
            k += left.max(1);
        }
        Ok(())
    }

    /// Checks that a write of `size` bytes at `seg:off` would succeed, without writing
    /// (instructions that must not change anything unless all their writes can land).
    pub fn probe_write(&mut self, seg: usize, off: u64, size: usize) -> Result<u64, Stop> {
        let lin = self.linear(seg, off, size, true)?;
        let who = self.privilege();
        self.check_range(lin, size, Access::Write, who)?;
        Ok(lin)
    }

    /// Reads `buf.len()` bytes at `seg:off`: the x87's 10-byte, environment and state
    /// operands and SSE's 16-byte ones. The segment checks cover the whole operand;
    /// the pieces go through paging one by one.
    pub fn read_bytes(&mut self, seg: usize, off: u64, buf: &mut [u8]) -> Result<(), Stop> {
        let lin = self.linear(seg, off, buf.len(), false)?;
        let wrap = if self.cpu.mode64() {
            u64::MAX
        } else {
            0xffff_ffff
        };
        let mut k = 0;
        while k < buf.len() {
            let n = piece(buf.len() - k);
            let v = self.read_lin(lin.wrapping_add(k as u64) & wrap, n, Access::Read)?;
            buf[k..k + n].copy_from_slice(&v.to_le_bytes()[..n]);
            k += n;
        }
        Ok(())
    }

    /// Writes `data` at `seg:off` if all of it can be written (checked first, so a
    /// fault leaves memory unchanged).
    pub fn write_bytes(&mut self, seg: usize, off: u64, data: &[u8]) -> Result<(), Stop> {
        let lin = self.probe_write(seg, off, data.len())?;
        let wrap = if self.cpu.mode64() {
            u64::MAX
        } else {
            0xffff_ffff
        };
        let mut k = 0;
        while k < data.len() {
            let n = piece(data.len() - k);
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&data[k..k + n]);
            self.write_lin(lin.wrapping_add(k as u64) & wrap, n, u64::from_le_bytes(b))?;
            k += n;
        }
        Ok(())
    }

    // ---- the stack -------------------------------------------------------------------

    /// The stack pointer's width: all 64 bits in 64-bit mode, else SS.B.
    #[inline(always)]
    pub fn stack_mask(&self) -> u64 {
        if self.cpu.mode64() {
            u64::MAX
        } else if self.cpu.seg[SS].default_big() {
            0xffff_ffff
        } else {
            0xffff
        }
    }

    #[inline(always)]
    pub fn set_sp(&mut self, v: u64) {
        let m = self.stack_mask();
        let sp = &mut self.cpu.gpr[4];
        *sp = (*sp & !m) | (v & m);
    }

    /// Pushes `size` bytes; memory is written before RSP changes.
    #[inline(always)]
    pub fn push(&mut self, v: u64, size: usize) -> Result<(), Stop> {
        let m = self.stack_mask();
        let sp = self.cpu.gpr[4].wrapping_sub(size as u64) & m;
        self.write(SS, sp, size, v)?;
        self.set_sp(sp);
        Ok(())
    }

    /// Reads `size` bytes at `skip` bytes above the top of the stack.
    #[inline(always)]
    pub fn peek(&mut self, size: usize, skip: u64) -> Result<u64, Stop> {
        let m = self.stack_mask();
        let sp = self.cpu.gpr[4].wrapping_add(skip) & m;
        self.read(SS, sp, size)
    }

    /// Pops `size` bytes.
    #[inline(always)]
    pub fn pop(&mut self, size: usize) -> Result<u64, Stop> {
        let v = self.peek(size, 0)?;
        let m = self.stack_mask();
        self.set_sp(self.cpu.gpr[4].wrapping_add(size as u64) & m);
        Ok(v)
    }

    // ---- the stack in 64-bit mode ---------------------------------------------------
    //
    // Handlers compiled for a block of 64-bit code know the mode: a block runs only
    // while CS and EFER.LMA are what it was made under (`crate::cache`). There the
    // stack is flat and 64 bits wide, only the canonical check applies (SDM vol 1
    // 3.3.7.1; a fault on the stack is #SS(0), vol 3 6.15), and CPL is SS.DPL (CR0.PE
    // is set and RFLAGS.VM clear in long mode).

    /// Whether the current (64-bit mode) access is a user one.
    #[inline(always)]
    fn user64(&self) -> bool {
        debug_assert!(self.cpu.mode64());
        self.cpu.seg[SS].dpl() == 3
    }

    /// PUSH in 64-bit mode: memory is written before RSP changes.
    #[inline(always)]
    pub fn push64(&mut self, v: u64, size: usize) -> Result<(), Stop> {
        let sp = self.cpu.gpr[4].wrapping_sub(size as u64);
        if !canonical(sp) || !canonical(sp.wrapping_add(size as u64 - 1)) {
            return Err(self.segment_fault(SS));
        }
        self.write_lin_as(sp, size, v, self.user64())?;
        self.cpu.gpr[4] = sp;
        Ok(())
    }

    /// POP in 64-bit mode.
    #[inline(always)]
    pub fn pop64(&mut self, size: usize) -> Result<u64, Stop> {
        let sp = self.cpu.gpr[4];
        if !canonical(sp) || !canonical(sp.wrapping_add(size as u64 - 1)) {
            return Err(self.segment_fault(SS));
        }
        let v = self.read_lin_as(sp, size, Access::Read, self.user64())?;
        self.cpu.gpr[4] = sp.wrapping_add(size as u64);
        Ok(v)
    }

    /// PUSH, for handlers compiled knowing whether the code is 64-bit (`M64`).
    #[inline(always)]
    pub fn push_in<const M64: bool>(&mut self, v: u64, size: usize) -> Result<(), Stop> {
        if M64 {
            self.push64(v, size)
        } else {
            self.push(v, size)
        }
    }

    /// POP, for handlers compiled knowing whether the code is 64-bit (`M64`).
    #[inline(always)]
    pub fn pop_in<const M64: bool>(&mut self, size: usize) -> Result<u64, Stop> {
        if M64 {
            self.pop64(size)
        } else {
            self.pop(size)
        }
    }

    /// The width of RIP: 64 bits in 64-bit mode, else the code segment's operand size
    /// decides what a branch truncates to; callers mask with the operand size.
    #[inline(always)]
    pub fn ip_mask(&self) -> u64 {
        if self.cpu.mode64() {
            u64::MAX
        } else {
            0xffff_ffff
        }
    }

    /// A near branch to `target` (already truncated to the operand size): outside CS's
    /// limit (legacy modes) or non-canonical (64-bit mode) is #GP(0) with RIP at the
    /// branch (SDM vol 2 JMP: "If the target operand is beyond the code segment limits").
    #[inline(always)]
    pub fn branch(&mut self, target: u64) -> Result<(), Stop> {
        if self.cpu.mode64() {
            if !canonical(target) {
                return Err(self.gp(0));
            }
        } else if target > self.cpu.seg[CS].limit as u64 {
            return Err(self.gp(0));
        }
        self.cpu.rip = target;
        Ok(())
    }
}

/// The largest access size (8, 4, 2 or 1) that fits in `left` bytes.
fn piece(left: usize) -> usize {
    if left >= 8 {
        8
    } else if left >= 4 {
        4
    } else if left >= 2 {
        2
    } else {
        1
    }
}
