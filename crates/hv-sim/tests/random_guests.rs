//! Random guests across every mode never panic, hang or touch host memory outside
//! their RAM: guest RAM sits between inaccessible guard pages (`HostRegion`), so a
//! stray access outside it kills the test process instead of passing unnoticed. The
//! test builds in debug, so an arithmetic overflow on a guest value panics here too.
//!
//! Each guest is a page of random bytes for code, random registers and random
//! descriptor and page tables (half of them pointing at RAM). `MSHV_RANDOM_GUESTS`
//! sets how many (the default suits CI).

mod common;

use common::*;
use hv_core::regs::{pack_segment, pack_table};
use hv_core::{Exit, HvError, RunLimits};
use mshv_bindings::*;

/// Room for the tables `long_mode` writes at 1 MiB, and no more: each guest fills all of it.
const RAM_SIZE: usize = 0x14_0000;

impl Rng {
    /// Mostly an address inside RAM, sometimes anywhere.
    fn address(&mut self) -> u64 {
        match self.below(4) {
            0 => self.next(),
            1 => self.next() & 0xffff_ffff,
            _ => self.below(RAM_SIZE as u64),
        }
    }
}

/// A descriptor with random fields, mostly present and plausible.
fn descriptor(r: &mut Rng) -> u64 {
    let base = r.address() & 0xffff_ffff;
    let limit = r.next() & 0xf_ffff;
    let access = [
        0x9b, 0x93, 0x9a, 0x92, 0xfb, 0xf3, 0x89, 0x8b, 0x82, 0x8e, 0x8c, 0x85,
    ][r.below(12) as usize] as u64;
    let access = if r.below(8) == 0 {
        r.next() & 0xff
    } else {
        access
    };
    let flags = r.next() & 0xf;
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | access << 40
        | ((limit >> 16) & 0xf) << 48
        | flags << 52
        | ((base >> 24) & 0xff) << 56
}

/// A page-table entry: present and pointing into RAM most of the time.
fn pte(r: &mut Rng) -> u64 {
    let target = r.below(RAM_SIZE as u64 / 4096) << 12;
    let bits = r.next() & 0x1ff;
    let nx = if r.below(4) == 0 { 1u64 << 63 } else { 0 };
    match r.below(6) {
        0 => r.next(),
        _ => target | bits | 1 | nx,
    }
}

fn random_guest(seed: u64) -> (Guest, &'static str) {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut g = guest_with_ram(RAM_SIZE);
    // Random bytes everywhere page tables and descriptor tables might point.
    let mut ram = vec![0u8; RAM_SIZE];
    for page in ram.chunks_mut(4096) {
        let tables = r.below(3) == 0;
        for word in page.chunks_mut(8) {
            let v = if tables { pte(&mut r) } else { r.next() };
            word.copy_from_slice(&v.to_le_bytes());
        }
    }
    g.load(0, &ram);
    // A GDT at 0x1000 of random descriptors; an IDT at 0x2000 of random gates.
    let gdt: Vec<u8> = (0..32)
        .flat_map(|_| descriptor(&mut r).to_le_bytes())
        .collect();
    g.load(0x1000, &gdt);
    let code_at = 0x10_000 + r.below(0x1000) * 16;
    let mut rflags_vm = 0;
    let mode = match r.below(8) {
        0 => {
            g.real_mode(code_at);
            "real"
        }
        1 | 2 => {
            g.long_mode(code_at);
            if r.below(2) == 0 {
                // Random 4-level tables: CR3 into the random PTE pages.
                g.set(
                    hv_register_name_HV_X64_REGISTER_CR3,
                    r.below(RAM_SIZE as u64 / 4096) << 12,
                );
            }
            "long"
        }
        3 => {
            // Compatibility mode: long mode with a 32-bit code segment (L = 0, D = 1).
            g.long_mode(code_at);
            g.set_raw(
                hv_register_name_HV_X64_REGISTER_CS,
                pack_segment(0, 0xffff_ffff, 8, 0xc09b),
            );
            "compat"
        }
        m => {
            // Protected mode, flat, with or without paging: 32-bit code, 16-bit code, or
            // V86 mode (RFLAGS.VM with real-mode style segments at CPL 3).
            let (code_attr, mode) = match m {
                4 | 5 => (0xc09b, "protected32"),
                6 => (0x009b, "protected16"),
                _ => (0xc09b, "v86"),
            };
            let flat = |attr| pack_segment(0, 0xffff_ffff, 8, attr);
            g.set_raw(hv_register_name_HV_X64_REGISTER_CS, flat(code_attr));
            for id in [
                hv_register_name_HV_X64_REGISTER_DS,
                hv_register_name_HV_X64_REGISTER_ES,
                hv_register_name_HV_X64_REGISTER_SS,
            ] {
                g.set_raw(id, flat(0xc093));
            }
            let paging = match r.below(3) {
                0 => 0,
                1 => 0x8000_0000,
                _ => {
                    g.set(hv_register_name_HV_X64_REGISTER_CR4, 1 << 5);
                    0x8000_0000
                }
            };
            g.set(
                hv_register_name_HV_X64_REGISTER_CR3,
                r.below(RAM_SIZE as u64 / 4096) << 12,
            );
            g.set(hv_register_name_HV_X64_REGISTER_CR0, 0x11 | paging);
            g.set(hv_register_name_HV_X64_REGISTER_RIP, code_at);
            if mode == "v86" {
                let seg = (code_at >> 4) & 0xf000;
                g.set_raw(
                    hv_register_name_HV_X64_REGISTER_CS,
                    pack_segment(seg << 4, 0xffff, seg as u16, 0xf3),
                );
                for id in [
                    hv_register_name_HV_X64_REGISTER_DS,
                    hv_register_name_HV_X64_REGISTER_ES,
                    hv_register_name_HV_X64_REGISTER_SS,
                ] {
                    g.set_raw(id, pack_segment(0, 0xffff, 0, 0xf3));
                }
                g.set(hv_register_name_HV_X64_REGISTER_RIP, code_at - (seg << 4));
                rflags_vm = (1 << 17) | (r.below(4) << 12);
            }
            mode
        }
    };
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_GDTR,
        pack_table(if r.below(4) == 0 { r.next() } else { 0x1000 }, 0xff),
    );
    g.set_raw(
        hv_register_name_HV_X64_REGISTER_IDTR,
        pack_table(r.address(), r.next() as u16),
    );
    for id in [
        hv_register_name_HV_X64_REGISTER_RAX,
        hv_register_name_HV_X64_REGISTER_RBX,
        hv_register_name_HV_X64_REGISTER_RCX,
        hv_register_name_HV_X64_REGISTER_RDX,
        hv_register_name_HV_X64_REGISTER_RSI,
        hv_register_name_HV_X64_REGISTER_RDI,
        hv_register_name_HV_X64_REGISTER_RBP,
        hv_register_name_HV_X64_REGISTER_RSP,
        hv_register_name_HV_X64_REGISTER_R8,
        hv_register_name_HV_X64_REGISTER_R15,
    ] {
        let v = r.address();
        g.set(id, v);
    }
    g.set(
        hv_register_name_HV_X64_REGISTER_RFLAGS,
        (r.next() & 0x0000_0cd5) | 2 | rflags_vm,
    );
    (g, mode)
}

#[test]
fn random_guests_in_every_mode_never_panic_hang_or_escape_their_ram() {
    let count: u64 = std::env::var("MSHV_RANDOM_GUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let mut modes = std::collections::BTreeMap::<&str, u64>::new();
    let mut exits = 0u64;
    let mut unsupported = std::collections::BTreeMap::<String, u64>::new();
    for seed in 0..count {
        let (mut g, mode) = random_guest(seed);
        *modes.entry(mode).or_default() += 1;
        // Resume after a few exits too, so guests get past their first port access.
        for _ in 0..4 {
            let limits = RunLimits {
                max_instructions: Some(2_000),
                deadline: None,
                ..RunLimits::default()
            };
            match g.vcpu.run(&mut g.msg, &limits) {
                Ok(Exit::Message) => {
                    exits += 1;
                    if g.msg.message_type() == hv_core::message::HVMSG_UNRECOVERABLE_EXCEPTION {
                        break;
                    }
                    // Step over the exiting instruction as a VMM would.
                    let hdr: hv_x64_intercept_message_header = g.msg.payload();
                    let rip = g.get(hv_register_name_HV_X64_REGISTER_RIP);
                    g.set(
                        hv_register_name_HV_X64_REGISTER_RIP,
                        rip.wrapping_add(hdr.instruction_length() as u64),
                    );
                }
                Ok(_) => break,
                Err(HvError::UnsupportedInstruction { text, .. }) => {
                    let mnemonic = text.split_whitespace().next().unwrap_or("?").to_string();
                    *unsupported.entry(mnemonic).or_default() += 1;
                    break;
                }
                Err(e) => panic!("guest {seed} ({mode}): {e}"),
            }
        }
    }
    let stopped: u64 = unsupported.values().sum();
    eprintln!(
        "{count} random guests ({modes:?}): {exits} exits, {stopped} stopped at an unsupported instruction: {unsupported:?}"
    );
}
