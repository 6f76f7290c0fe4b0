//! The VP register page (`hv_vp_register_page`): layout and raw access.
//!
//! Offsets are computed with `offset_of!` on the `mshv-bindings` struct, never typed by
//! hand, and exported to TypeScript through [`FIELDS`].

use mshv_bindings::{
    hv_vp_register_page, hv_vp_register_page__bindgen_ty_1,
    hv_vp_register_page__bindgen_ty_1__bindgen_ty_1, hv_vp_register_page__bindgen_ty_2,
    hv_vp_register_page__bindgen_ty_3, hv_x64_segment_register, HV_X64_REGISTER_CLASS_FLAGS,
    HV_X64_REGISTER_CLASS_GENERAL, HV_X64_REGISTER_CLASS_IP, HV_X64_REGISTER_CLASS_SEGMENT,
    HV_X64_REGISTER_CLASS_XMM,
};
use std::mem::offset_of;
use std::ptr::NonNull;

/// Size of the page mapped from the vCPU fd.
pub const PAGE_SIZE: usize = 4096;

pub const VERSION: usize = offset_of!(hv_vp_register_page, version);
pub const ISVALID: usize = offset_of!(hv_vp_register_page, isvalid);
pub const DIRTY: usize = offset_of!(hv_vp_register_page, dirty);
/// rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15: 16 × u64, in `hv_register_name` order.
pub const GP_REGISTERS: usize = offset_of!(hv_vp_register_page, __bindgen_anon_1)
    + offset_of!(hv_vp_register_page__bindgen_ty_1, registers);
pub const RIP: usize = offset_of!(hv_vp_register_page, __bindgen_anon_1)
    + offset_of!(hv_vp_register_page__bindgen_ty_1__bindgen_ty_1, rip);
pub const RFLAGS: usize = offset_of!(hv_vp_register_page, __bindgen_anon_1)
    + offset_of!(hv_vp_register_page__bindgen_ty_1__bindgen_ty_1, rflags);
/// xmm0..xmm5, 16 bytes each.
pub const XMM: usize = offset_of!(hv_vp_register_page, __bindgen_anon_2)
    + offset_of!(hv_vp_register_page__bindgen_ty_2, xmm_registers);
/// es, cs, ss, ds, fs, gs, each an `hv_x64_segment_register`.
pub const SEGMENTS: usize = offset_of!(hv_vp_register_page, __bindgen_anon_3)
    + offset_of!(hv_vp_register_page__bindgen_ty_3, segment_registers);
pub const CR0: usize = offset_of!(hv_vp_register_page, cr0);
pub const CR3: usize = offset_of!(hv_vp_register_page, cr3);
pub const CR4: usize = offset_of!(hv_vp_register_page, cr4);
pub const CR8: usize = offset_of!(hv_vp_register_page, cr8);
pub const EFER: usize = offset_of!(hv_vp_register_page, efer);
pub const DR7: usize = offset_of!(hv_vp_register_page, dr7);
pub const PENDING_INTERRUPTION: usize = offset_of!(hv_vp_register_page, pending_interruption);
pub const INTERRUPT_STATE: usize = offset_of!(hv_vp_register_page, interrupt_state);
pub const INSTRUCTION_EMULATION_HINTS: usize =
    offset_of!(hv_vp_register_page, instruction_emulation_hints);
pub const XFEM: usize = offset_of!(hv_vp_register_page, xfem);

/// Number of XMM registers on the page.
pub const XMM_COUNT: usize = 6;
/// Size of one XMM slot.
pub const XMM_SIZE: usize = 16;
/// Number of segment registers on the page.
pub const SEGMENT_COUNT: usize = 6;
/// Size of one `hv_x64_segment_register`.
pub const SEGMENT_SIZE: usize = std::mem::size_of::<hv_x64_segment_register>();
pub const SEGMENT_BASE: usize = offset_of!(hv_x64_segment_register, base);
pub const SEGMENT_LIMIT: usize = offset_of!(hv_x64_segment_register, limit);
pub const SEGMENT_SELECTOR: usize = offset_of!(hv_x64_segment_register, selector);
pub const SEGMENT_ATTRIBUTES: usize = offset_of!(hv_x64_segment_register, __bindgen_anon_1);

/// Dirty bits, one per register class (`HV_X64_REGISTER_CLASS_*`).
pub const DIRTY_GENERAL: u32 = 1 << HV_X64_REGISTER_CLASS_GENERAL;
pub const DIRTY_IP: u32 = 1 << HV_X64_REGISTER_CLASS_IP;
pub const DIRTY_XMM: u32 = 1 << HV_X64_REGISTER_CLASS_XMM;
pub const DIRTY_SEGMENT: u32 = 1 << HV_X64_REGISTER_CLASS_SEGMENT;
pub const DIRTY_FLAGS: u32 = 1 << HV_X64_REGISTER_CLASS_FLAGS;

/// Every named offset and constant TypeScript needs, in one table.
pub const FIELDS: &[(&str, usize)] = &[
    ("pageSize", PAGE_SIZE),
    ("version", VERSION),
    ("isvalid", ISVALID),
    ("dirty", DIRTY),
    ("gpRegisters", GP_REGISTERS),
    ("rip", RIP),
    ("rflags", RFLAGS),
    ("xmm", XMM),
    ("xmmCount", XMM_COUNT),
    ("xmmSize", XMM_SIZE),
    ("segments", SEGMENTS),
    ("segmentCount", SEGMENT_COUNT),
    ("segmentSize", SEGMENT_SIZE),
    ("segmentBase", SEGMENT_BASE),
    ("segmentLimit", SEGMENT_LIMIT),
    ("segmentSelector", SEGMENT_SELECTOR),
    ("segmentAttributes", SEGMENT_ATTRIBUTES),
    ("cr0", CR0),
    ("cr3", CR3),
    ("cr4", CR4),
    ("cr8", CR8),
    ("efer", EFER),
    ("dr7", DR7),
    ("pendingInterruption", PENDING_INTERRUPTION),
    ("interruptState", INTERRUPT_STATE),
    ("instructionEmulationHints", INSTRUCTION_EMULATION_HINTS),
    ("xfem", XFEM),
    ("dirtyGeneral", DIRTY_GENERAL as usize),
    ("dirtyIp", DIRTY_IP as usize),
    ("dirtyXmm", DIRTY_XMM as usize),
    ("dirtySegment", DIRTY_SEGMENT as usize),
    ("dirtyFlags", DIRTY_FLAGS as usize),
];

/// A pointer to a live register page (mapped from the vCPU fd, or owned by the sim).
///
/// The page is shared with the hypervisor (or the sim's vCPU thread) and with
/// JavaScript, so it is only ever touched through volatile raw accesses.
#[derive(Debug, Clone, Copy)]
pub struct RegisterPagePtr(NonNull<u8>);

// SAFETY: the page is plain shared memory; all accesses are volatile raw reads/writes.
unsafe impl Send for RegisterPagePtr {}
// SAFETY: as above.
unsafe impl Sync for RegisterPagePtr {}

impl RegisterPagePtr {
    /// Wraps a pointer to a page of at least [`PAGE_SIZE`] bytes, 8-byte aligned.
    ///
    /// # Safety
    /// `ptr` must point to [`PAGE_SIZE`] readable and writable bytes, 8-byte aligned,
    /// that stay mapped for as long as this value or a copy of it is used.
    pub unsafe fn new(ptr: NonNull<u8>) -> Self {
        RegisterPagePtr(ptr)
    }

    /// The page's address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    /// The address of a `T` at `offset`. Checked in every build, not only in debug
    /// builds: the accessors are safe functions, so an offset outside the page or
    /// misaligned must stop here (a panic, which the binding's guard turns into an
    /// `EPANIC` error) rather than read or write beside the page. Offsets are this
    /// module's constants almost everywhere, where the check compiles away.
    #[inline]
    fn field<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset
                .checked_add(std::mem::size_of::<T>())
                .is_some_and(|end| end <= PAGE_SIZE),
            "register page offset {offset:#x} (+{}) is outside the page",
            std::mem::size_of::<T>()
        );
        assert!(
            offset.is_multiple_of(std::mem::align_of::<T>()),
            "register page offset {offset:#x} is not aligned to {}",
            std::mem::align_of::<T>()
        );
        // SAFETY: checked above: the field lies inside the page `new`'s contract keeps mapped.
        unsafe { self.0.as_ptr().add(offset).cast::<T>() }
    }

    /// Reads an aligned u64 at `offset`.
    pub fn read_u64(&self, offset: usize) -> u64 {
        // SAFETY: `new`'s contract keeps the page mapped; offsets are aligned and in bounds.
        unsafe { std::ptr::read_volatile(self.field::<u64>(offset)) }
    }

    /// Writes an aligned u64 at `offset`.
    pub fn write_u64(&self, offset: usize, value: u64) {
        // SAFETY: as for `read_u64`.
        unsafe { std::ptr::write_volatile(self.field::<u64>(offset), value) }
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: as for `read_u64`.
        unsafe { std::ptr::read_volatile(self.field::<u32>(offset)) }
    }

    pub fn write_u32(&self, offset: usize, value: u32) {
        // SAFETY: as for `read_u64`.
        unsafe { std::ptr::write_volatile(self.field::<u32>(offset), value) }
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: as for `read_u64`.
        unsafe { std::ptr::read_volatile(self.field::<u16>(offset)) }
    }

    pub fn read_u8(&self, offset: usize) -> u8 {
        // SAFETY: as for `read_u64`.
        unsafe { std::ptr::read_volatile(self.field::<u8>(offset)) }
    }

    pub fn write_u8(&self, offset: usize, value: u8) {
        // SAFETY: as for `read_u64`.
        unsafe { std::ptr::write_volatile(self.field::<u8>(offset), value) }
    }

    pub fn is_valid(&self) -> bool {
        self.read_u8(ISVALID) != 0
    }

    pub fn dirty(&self) -> u32 {
        self.read_u32(DIRTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mshv_bindings::hv_vp_register_page__bindgen_ty_1__bindgen_ty_1__bindgen_ty_1__bindgen_ty_1 as GpRegs;

    /// A page-sized, 8-byte aligned buffer and a pointer to it.
    fn page() -> (Box<[u64; PAGE_SIZE / 8]>, RegisterPagePtr) {
        let mut buf = Box::new([0u64; PAGE_SIZE / 8]);
        let ptr = NonNull::new(buf.as_mut_ptr().cast::<u8>()).expect("a box is not null");
        // SAFETY: the box is PAGE_SIZE bytes, 8-byte aligned, and outlives the pointer's uses here.
        (buf, unsafe { RegisterPagePtr::new(ptr) })
    }

    #[test]
    fn accessors_read_and_write_inside_the_page() {
        let (_buf, p) = page();
        p.write_u64(PAGE_SIZE - 8, 0x1122_3344_5566_7788);
        assert_eq!(p.read_u64(PAGE_SIZE - 8), 0x1122_3344_5566_7788);
        assert_eq!(p.read_u32(PAGE_SIZE - 8), 0x5566_7788);
        assert_eq!(p.read_u8(PAGE_SIZE - 1), 0x11);
    }

    /// The safe accessors check bounds in release builds too (vm-memory's accessors do).
    #[test]
    #[should_panic(expected = "outside the page")]
    fn an_offset_past_the_page_stops_instead_of_reading_beside_it() {
        let (_buf, p) = page();
        let offset = std::hint::black_box(PAGE_SIZE - 4);
        p.read_u64(offset);
    }

    #[test]
    #[should_panic(expected = "not aligned")]
    fn a_misaligned_offset_stops() {
        let (_buf, p) = page();
        p.write_u32(std::hint::black_box(2), 1);
    }

    /// Our exported offsets must match the binding's struct field by field.
    #[test]
    fn layout_matches_the_binding_field_by_field() {
        let anon1 = offset_of!(hv_vp_register_page, __bindgen_anon_1);
        let gp = anon1
            + offset_of!(
                hv_vp_register_page__bindgen_ty_1__bindgen_ty_1,
                __bindgen_anon_1
            );
        assert_eq!(GP_REGISTERS, gp);
        let names = [
            offset_of!(GpRegs, rax),
            offset_of!(GpRegs, rcx),
            offset_of!(GpRegs, rdx),
            offset_of!(GpRegs, rbx),
            offset_of!(GpRegs, rsp),
            offset_of!(GpRegs, rbp),
            offset_of!(GpRegs, rsi),
            offset_of!(GpRegs, rdi),
            offset_of!(GpRegs, r8),
            offset_of!(GpRegs, r9),
            offset_of!(GpRegs, r10),
            offset_of!(GpRegs, r11),
            offset_of!(GpRegs, r12),
            offset_of!(GpRegs, r13),
            offset_of!(GpRegs, r14),
            offset_of!(GpRegs, r15),
        ];
        for (i, off) in names.iter().enumerate() {
            assert_eq!(*off, i * 8, "gp register {i}");
        }
        assert_eq!(RIP, GP_REGISTERS + 128);
        assert_eq!(RFLAGS, RIP + 8);
        use mshv_bindings::hv_vp_register_page__bindgen_ty_2__bindgen_ty_1 as Xmm;
        let xmm = offset_of!(hv_vp_register_page, __bindgen_anon_2);
        assert_eq!(XMM, xmm + offset_of!(Xmm, xmm0));
        assert_eq!(XMM + 5 * XMM_SIZE, xmm + offset_of!(Xmm, xmm5));
        use mshv_bindings::hv_vp_register_page__bindgen_ty_3__bindgen_ty_1 as Segs;
        let seg = offset_of!(hv_vp_register_page, __bindgen_anon_3);
        let segs = [
            offset_of!(Segs, es),
            offset_of!(Segs, cs),
            offset_of!(Segs, ss),
            offset_of!(Segs, ds),
            offset_of!(Segs, fs),
            offset_of!(Segs, gs),
        ];
        for (i, off) in segs.iter().enumerate() {
            assert_eq!(SEGMENTS + i * SEGMENT_SIZE, seg + off, "segment {i}");
        }
        assert_eq!(SEGMENT_SIZE, 16);
        assert_eq!(
            (
                SEGMENT_BASE,
                SEGMENT_LIMIT,
                SEGMENT_SELECTOR,
                SEGMENT_ATTRIBUTES
            ),
            (0, 8, 12, 14)
        );
        assert!(std::mem::size_of::<hv_vp_register_page>() <= PAGE_SIZE);
    }

    /// The published kernel layout, for readers; the binding is the source of truth.
    #[test]
    fn layout_matches_the_kernel_header() {
        assert_eq!((VERSION, ISVALID, DIRTY), (0, 2, 4));
        assert_eq!((GP_REGISTERS, RIP, RFLAGS), (8, 136, 144));
        assert_eq!((XMM, SEGMENTS, CR0), (160, 256, 352));
        assert_eq!((CR3, CR4, CR8, EFER, DR7), (360, 368, 376, 384, 392));
        assert_eq!(
            (
                DIRTY_GENERAL,
                DIRTY_IP,
                DIRTY_XMM,
                DIRTY_SEGMENT,
                DIRTY_FLAGS
            ),
            (1, 2, 4, 8, 16)
        );
    }

    #[test]
    fn every_u64_field_is_aligned() {
        for off in [
            GP_REGISTERS,
            RIP,
            RFLAGS,
            XMM,
            SEGMENTS,
            CR0,
            CR3,
            CR4,
            CR8,
            EFER,
            DR7,
            XFEM,
        ] {
            assert_eq!(off % 8, 0, "offset {off}");
        }
    }
}
