//! Builds the prologue/epilogue around a snippet and calls it.

use crate::fault;
use iced_x86::code_asm::*;
use thiserror::Error;

/// RFLAGS bits a snippet may start with: the arithmetic flags and DF. TF would trap
/// and AC would fault unaligned accesses, so they are never loaded.
pub const FLAGS_IN: u64 = 0x8d5 | 0x400;

/// The FXSAVE image of the x87, MMX and SSE state (SDM vol 1 10.5.1, Table 10-2): FCW
/// at 0, FSW at 2, the abridged tag byte at 4, FOP at 6, MXCSR at 24, ST0..7/MM0..7 at
/// 32 + 16 * i, XMM0..15 at 160 + 16 * i.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct FxImage(pub [u8; 512]);

impl Default for FxImage {
    /// The state after FNINIT with MXCSR at its reset value: FCW 0x037F, every register
    /// empty, MXCSR 0x1F80.
    fn default() -> Self {
        let mut b = [0u8; 512];
        b[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        FxImage(b)
    }
}

impl FxImage {
    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes([self.0[0], self.0[1]])
    }
    pub fn fsw(&self) -> u16 {
        u16::from_le_bytes([self.0[2], self.0[3]])
    }
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(self.0[24..28].try_into().unwrap_or_default())
    }
    pub fn set_mxcsr(&mut self, v: u32) {
        self.0[24..28].copy_from_slice(&v.to_le_bytes());
    }
    /// XMM register `i` (0..15).
    pub fn xmm(&self, i: usize) -> u128 {
        u128::from_le_bytes(
            self.0[160 + 16 * i..176 + 16 * i]
                .try_into()
                .unwrap_or_default(),
        )
    }
    pub fn set_xmm(&mut self, i: usize, v: u128) {
        self.0[160 + 16 * i..176 + 16 * i].copy_from_slice(&v.to_le_bytes());
    }
}

/// The register state before and after a snippet. `gpr` is in the hardware's
/// encoding order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15); RSP is ignored.
/// `fx` is loaded with FXRSTOR before the snippet and saved with FXSAVE after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct HostState {
    pub gpr: [u64; 16],
    pub rflags: u64,
    /// The vector of the exception the snippet raised, if it raised one the wrapper
    /// catches (those Linux reports as SIGFPE): 0 (#DE), 16 (#MF, an unmasked x87
    /// exception) or 19 (#XM, an unmasked SIMD one). The registers are then those at
    /// the faulting instruction, which did not retire.
    pub fault: Option<u8>,
    pub fx: FxImage,
}

#[derive(Debug, Error)]
pub enum HostExecError {
    #[error("cannot assemble the wrapper: {0}")]
    Assemble(#[from] IcedError),
    #[error("cannot map executable memory: {0}")]
    Map(std::io::Error),
    #[error("base register {0} is not a GPR other than RSP")]
    BaseRegister(usize),
}

const GPRS: [AsmRegister64; 16] = [
    rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
];
const CALLEE_SAVED: [AsmRegister64; 6] = [rbx, rbp, r12, r13, r14, r15];

/// Runs `code` natively from `state`. The registers named in `bases` hold offsets
/// into `mem` on the way in and out, so the same state is meaningful in a guest
/// whose buffer lives at another address. The host's own x87/SSE state is saved
/// around the snippet. A #DE, #MF or #XM the snippet raises ends it: `state.fault`
/// names the vector and the state is the one at the fault.
///
/// # Safety
/// `code` must be a complete x86-64 snippet that does not fault (but for the
/// exceptions above), keeps RSP balanced, touches memory only through `mem`
/// (addressed via `bases`) or its own stack pushes, and whose branches stay inside it.
pub unsafe fn run(
    code: &[u8],
    state: &mut HostState,
    mem: &mut [u8],
    bases: &[usize],
) -> Result<(), HostExecError> {
    if let Some(&b) = bases.iter().find(|&&b| b >= 16 || b == 4) {
        return Err(HostExecError::BaseRegister(b));
    }
    for &b in bases {
        state.gpr[b] = state.gpr[b].wrapping_add(mem.as_mut_ptr() as u64);
    }
    state.rflags = (state.rflags & FLAGS_IN) | 2;
    state.fault = None;
    let mut host_fx = FxImage::default();
    let ptr = state as *mut HostState as u64;
    let (prologue, epilogue) = wrapper(ptr, &mut host_fx as *mut FxImage as u64)?;
    let len = prologue.len() + code.len() + epilogue.len();
    let page = ExecPage::new(len)?;
    page.write(&[&prologue, code, &epilogue]);
    let start = page.addr as usize;
    let resume = start + prologue.len() + code.len();
    fault::arm(start + prologue.len(), resume, resume);
    // SAFETY: the page holds a complete function (prologue saves the callee-saved
    // registers and the host's FPU state, epilogue restores them with DF clear before
    // RET); the caller vouches for the snippet in between, and a SIGFPE inside it
    // resumes at the epilogue (`fault`).
    unsafe {
        let f: extern "sysv64" fn() = std::mem::transmute(page.addr);
        f();
    }
    state.fault = fault::disarm();
    for &b in bases {
        state.gpr[b] = state.gpr[b].wrapping_sub(mem.as_mut_ptr() as u64);
    }
    Ok(())
}

fn wrapper(state: u64, host_fx: u64) -> Result<(Vec<u8>, Vec<u8>), IcedError> {
    let fx = std::mem::offset_of!(HostState, fx);
    let mut a = CodeAssembler::new(64)?;
    for r in CALLEE_SAVED {
        a.push(r)?;
    }
    a.mov(rax, host_fx)?;
    a.fxsave(ptr(rax))?;
    a.mov(rax, state)?;
    a.fxrstor(ptr(rax + fx))?;
    a.push(qword_ptr(rax + 128))?;
    a.popfq()?;
    for (i, r) in GPRS.iter().enumerate().rev() {
        if i != 4 {
            a.mov(*r, qword_ptr(rax + i * 8))?;
        }
    }
    let prologue = a.assemble(0)?;

    let mut a = CodeAssembler::new(64)?;
    a.push(rax)?;
    a.pushfq()?;
    a.mov(rax, state)?;
    a.pop(qword_ptr(rax + 128))?;
    a.fxsave(ptr(rax + fx))?;
    for (i, r) in GPRS.iter().enumerate().skip(1) {
        if i != 4 {
            a.mov(qword_ptr(rax + i * 8), *r)?;
        }
    }
    a.pop(qword_ptr(rax))?;
    a.mov(rax, host_fx)?;
    a.fxrstor(ptr(rax))?;
    a.cld()?;
    for r in CALLEE_SAVED.iter().rev() {
        a.pop(*r)?;
    }
    a.ret()?;
    Ok((prologue, a.assemble(0)?))
}

/// An anonymous read-write-execute mapping, unmapped on drop.
struct ExecPage {
    addr: *mut libc::c_void,
    len: usize,
}

impl ExecPage {
    fn new(len: usize) -> Result<Self, HostExecError> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(HostExecError::Map(std::io::Error::last_os_error()));
        }
        Ok(Self { addr, len })
    }

    fn write(&self, parts: &[&[u8]]) {
        let mut at = 0;
        for p in parts {
            // SAFETY: the mapping is `len` bytes, the sum of the parts' lengths.
            unsafe {
                std::ptr::copy_nonoverlapping(p.as_ptr(), (self.addr as *mut u8).add(at), p.len())
            };
            at += p.len();
        }
    }
}

impl Drop for ExecPage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_an_add_and_reports_flags_and_memory() {
        let mut a = CodeAssembler::new(64).unwrap();
        a.add(rax, rcx).unwrap();
        a.mov(dword_ptr(rbx + 4), eax).unwrap();
        let code = a.assemble(0).unwrap();
        let mut s = HostState::default();
        s.gpr[0] = u64::MAX;
        s.gpr[1] = 1;
        s.gpr[3] = 0;
        let mut mem = [0xaau8; 16];
        // SAFETY: the snippet writes 4 bytes at mem+4 and nothing else.
        unsafe { run(&code, &mut s, &mut mem, &[3]).unwrap() };
        assert_eq!(s.gpr[0], 0);
        assert_eq!(s.gpr[3], 0, "the base register is an offset again");
        assert_eq!(s.rflags & 0x41, 0x41, "CF and ZF");
        assert_eq!(&mem[..8], &[0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0]);
    }

    #[test]
    fn the_fpu_state_goes_in_and_out_and_the_hosts_own_survives() {
        let mut a = CodeAssembler::new(64).unwrap();
        a.addps(xmm0, xmm1).unwrap();
        a.fld1().unwrap();
        let code = a.assemble(0).unwrap();
        let mut s = HostState::default();
        s.fx.set_xmm(0, u128::from(1.5f32.to_bits()));
        s.fx.set_xmm(1, u128::from(2.25f32.to_bits()));
        s.fx.set_mxcsr(0x1f80 | (1 << 13)); // round down
        let before = std::hint::black_box(0.1f64) + 0.2;
        // SAFETY: register-only instructions.
        unsafe { run(&code, &mut s, &mut [], &[]).unwrap() };
        assert_eq!(s.fx.xmm(0) as u32, 3.75f32.to_bits());
        assert_eq!((s.fx.fsw() >> 11) & 7, 7, "FLD1 pushed: TOP 7");
        assert_eq!(s.fault, None);
        assert_eq!(
            std::hint::black_box(0.1f64) + 0.2,
            before,
            "the host rounds to nearest again"
        );
    }

    #[test]
    fn an_unmasked_simd_exception_is_caught_as_xm_with_the_state_at_the_fault() {
        let mut a = CodeAssembler::new(64).unwrap();
        a.divss(xmm0, xmm1).unwrap();
        a.mov(eax, 7).unwrap();
        let code = a.assemble(0).unwrap();
        let mut s = HostState::default();
        s.fx.set_xmm(0, u128::from(1.0f32.to_bits()));
        s.fx.set_mxcsr(0x1f80 & !(1 << 9)); // divide-by-zero unmasked
                                            // SAFETY: register-only instructions; the #XM is caught.
        unsafe { run(&code, &mut s, &mut [], &[]).unwrap() };
        assert_eq!(s.fault, Some(19));
        assert_eq!(s.fx.mxcsr() & 4, 4, "ZE set");
        assert_eq!(
            s.fx.xmm(0) as u32,
            1.0f32.to_bits(),
            "the destination is unchanged"
        );
        assert_ne!(s.gpr[0], 7, "nothing after the fault ran");
    }

    #[test]
    fn rsp_cannot_be_the_base() {
        let mut s = HostState::default();
        // SAFETY: rejected before anything runs.
        let e = unsafe { run(&[], &mut s, &mut [], &[4]) }.unwrap_err();
        assert!(e.to_string().contains("base register 4"));
    }
}
