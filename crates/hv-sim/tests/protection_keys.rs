//! Protection keys in the sim's vCPU state (SDM vol 3 2.7, 4.6.2): PKRU and IA32_PKRS
//! are carried as the internal values `cpu.pkru` and `cpu.pkrs` (MSHV keeps PKRU in the
//! XSAVE area and names neither with a register), so a snapshot round-trips them.

mod common;

use common::*;
use iced_x86::code_asm::*;
use mshv_bindings::*;

const PKRU: u64 = 0x5555_5554;
const PKRS: u64 = 0xaaaa_aaa8;

fn internal(state: &hv_core::VcpuState, name: &str) -> Option<u64> {
    state
        .internal
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
}

/// SDM vol 3 4.6.2: PKRU and IA32_PKRS are the vCPU's, so its state carries them: a
/// guest that set them (CR4.PKE and CR4.PKS on, WRPKRU, WRMSR 0x6E1) is saved, and a
/// fresh vCPU restored from the state reads them back with RDPKRU and RDMSR.
#[test]
fn sdm_4_6_2_pkru_and_ia32_pkrs_round_trip_through_a_vcpu_state() {
    let mut g = guest();
    let code = assemble(64, CASE_CODE, |a| {
        a.mov(rax, cr4).unwrap();
        a.or(eax, (1 << 22) | (1 << 24)).unwrap();
        a.mov(cr4, rax).unwrap();
        a.mov(eax, PKRU as u32).unwrap();
        a.xor(ecx, ecx).unwrap();
        a.xor(edx, edx).unwrap();
        a.wrpkru().unwrap();
        a.mov(ecx, 0x6e1).unwrap();
        a.mov(eax, PKRS as u32).unwrap();
        a.wrmsr().unwrap();
        a.out(0x80, al).unwrap();
        // After the restore.
        a.xor(ecx, ecx).unwrap();
        a.rdpkru().unwrap();
        a.mov(esi, eax).unwrap();
        a.mov(ecx, 0x6e1).unwrap();
        a.rdmsr().unwrap();
        a.out(0x80, al).unwrap();
        a.hlt().unwrap();
    });
    g.load(CASE_CODE, &code);
    g.long_mode(CASE_CODE);
    assert_eq!(g.run(), hv_core::Exit::Message);
    let state = g.vcpu.state().unwrap();
    assert_eq!(internal(&state, "cpu.pkru"), Some(PKRU));
    assert_eq!(internal(&state, "cpu.pkrs"), Some(PKRS));
    let mut h = guest();
    h.ram
        .write(0, &{
            let mut all = vec![0u8; RAM];
            g.ram.read(0, &mut all).unwrap();
            all
        })
        .unwrap();
    h.vcpu.set_state(&state).unwrap();
    let rip = h.get(hv_register_name_HV_X64_REGISTER_RIP);
    h.set(hv_register_name_HV_X64_REGISTER_RIP, rip + 2);
    assert_eq!(h.run(), hv_core::Exit::Message);
    assert_eq!(h.get(hv_register_name_HV_X64_REGISTER_RSI), PKRU, "RDPKRU");
    assert_eq!(h.get(hv_register_name_HV_X64_REGISTER_RAX), PKRS, "RDMSR");
    let again = h.vcpu.state().unwrap();
    assert_eq!(internal(&again, "cpu.pkru"), Some(PKRU));
    assert_eq!(internal(&again, "cpu.pkrs"), Some(PKRS));
}

/// A state whose PKRU does not fit its 32 bits, or whose IA32_PKRS sets a reserved bit
/// (63:32, SDM vol 3 4.6.2), is refused, and changes nothing.
#[test]
fn a_state_with_pkru_beyond_32_bits_or_pkrs_reserved_bits_is_refused() {
    let mut g = guest();
    g.long_mode(CASE_CODE);
    let state = g.vcpu.state().unwrap();
    for name in ["cpu.pkru", "cpu.pkrs"] {
        let mut bad = state.clone();
        for (n, v) in bad.internal.iter_mut() {
            if n == name {
                *v = 1 << 32;
            }
        }
        assert!(g.vcpu.set_state(&bad).is_err(), "{name}");
        assert_eq!(g.vcpu.state().unwrap(), state, "{name}: nothing changed");
    }
}
