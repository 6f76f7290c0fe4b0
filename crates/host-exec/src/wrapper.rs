//! Builds the prologue/epilogue around a snippet and calls it.

use iced_x86::code_asm::*;
use thiserror::Error;

/// RFLAGS bits a snippet may start with: the arithmetic flags and DF. TF would trap
/// and AC would fault unaligned accesses, so they are never loaded.
pub const FLAGS_IN: u64 = 0x8d5 | 0x400;

/// The register state before and after a snippet. `gpr` is in the hardware's
/// encoding order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15); RSP is ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HostState {
    pub gpr: [u64; 16],
    pub rflags: u64,
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
/// whose buffer lives at another address.
///
/// # Safety
/// `code` must be a complete x86-64 snippet that does not fault, keeps RSP balanced,
/// touches memory only through `mem` (addressed via `bases`) or its own stack pushes,
/// and whose branches stay inside it.
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
    let ptr = state as *mut HostState as u64;
    let (prologue, epilogue) = wrapper(ptr)?;
    let len = prologue.len() + code.len() + epilogue.len();
    let page = ExecPage::new(len)?;
    page.write(&[&prologue, code, &epilogue]);
    // SAFETY: the page holds a complete function (prologue saves the callee-saved
    // registers and restores them with DF clear before RET); the caller vouches for
    // the snippet in between.
    unsafe {
        let f: extern "sysv64" fn() = std::mem::transmute(page.addr);
        f();
    }
    for &b in bases {
        state.gpr[b] = state.gpr[b].wrapping_sub(mem.as_mut_ptr() as u64);
    }
    Ok(())
}

fn wrapper(state: u64) -> Result<(Vec<u8>, Vec<u8>), IcedError> {
    let mut a = CodeAssembler::new(64)?;
    for r in CALLEE_SAVED {
        a.push(r)?;
    }
    a.mov(rax, state)?;
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
    for (i, r) in GPRS.iter().enumerate().skip(1) {
        if i != 4 {
            a.mov(qword_ptr(rax + i * 8), *r)?;
        }
    }
    a.pop(qword_ptr(rax))?;
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
    fn rsp_cannot_be_the_base() {
        let mut s = HostState::default();
        // SAFETY: rejected before anything runs.
        let e = unsafe { run(&[], &mut s, &mut [], &[4]) }.unwrap_err();
        assert!(e.to_string().contains("base register 4"));
    }
}
