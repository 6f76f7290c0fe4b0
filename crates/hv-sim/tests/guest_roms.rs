//! Whole guests on QEMU's TCG and on the sim: each `tests/guests/*.asm` (assembled
//! with NASM) boots from the reset vector, exercises mode switches, paging, privilege
//! changes, exceptions, task switches, V86 mode or glibc-style SSE2 string functions,
//! and reports its state as text on port 0xE9. Both must print the same lines. Where QEMU departs from the manuals the
//! manual wins: `DEVIATIONS` lists those lines, with the section, and the sim is held
//! to the manual's value there.
//!
//! Checks QEMU cannot judge (it accepts the write and the guest is lost) live in
//! `tests/guests/manual/`: each of those guests carries the lines it must print, as
//! `;=` comments that cite the manual, and the sim is held to them.
//!
//! NASM and `qemu-system-x86_64` are Debian packages `.ci/run` installs; where one is
//! missing the test says so and skips, except under CI, where it fails.

use hv_core::message::*;
use hv_core::{Exit, ExitMessage, HostRegion, HvBackend, MemoryMapping, RunLimits, VmConfig};
use hv_sim::SimHypervisor;
use mshv_bindings::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// QEMU's CPU: an Intel vendor (the sim is GenuineIntel) with the features the sim
/// advertises, so vendor-specific behaviour (SYSCALL outside 64-bit mode) agrees.
const QEMU_CPU: &str = "qemu64,vendor=GenuineIntel,+smep,+smap,+fsgsbase,+popcnt,+movbe,+lahf-lm,+pdpe1gb,+rdtscp,+abm";

/// Lines where QEMU's TCG departs from the SDM: (guest, QEMU's line, the SDM's line,
/// the section). The sim must print the SDM's.
const DEVIATIONS: &[(&str, &str, &str, &str)] = &[
    // QEMU's TCG does not check data-segment limits, types or null selectors.
    ("segment_limits", "dword-past no fault", "dword-past exc 0000000d 00000000 ", "SDM vol 3 5.3: an access past the limit is #GP(0)"),
    ("segment_limits", "offset-past no fault", "offset-past exc 0000000d 00000000 ", "SDM vol 3 5.3"),
    ("segment_limits", "xdown-low no fault", "xdown-low exc 0000000d 00000000 ", "SDM vol 3 5.3: expand-down offsets lie above the limit"),
    ("segment_limits", "xdown-top no fault", "xdown-top exc 0000000d 00000000 ", "SDM vol 3 5.3: B = 0 bounds expand-down segments at 0xFFFF"),
    ("segment_limits", "ro-write no fault", "ro-write exc 0000000d 00000000 ", "SDM vol 3 5.4: writing a read-only data segment is #GP(0)"),
    ("segment_limits", "cs-write no fault", "cs-write exc 0000000d 00000000 ", "SDM vol 3 5.4: code segments are never writable"),
    ("segment_limits", "ss-limit no fault", "ss-limit exc 0000000c 00000000 ", "SDM vol 3 5.3, vol 2 MOV: a stack-segment limit violation is #SS(0)"),
    ("segment_limits", "null-es no fault", "null-es exc 0000000d 00000000 ", "SDM vol 2 MOV: a memory operand through a null segment is #GP(0)"),
    ("real_mode", "limit-word no fault", "limit-word rexc 000d 06bc ", "SDM vol 2 MOV, real-address mode exceptions: #GP for an operand outside the segment limit"),
    ("string_pm", "fault-mid no fault", "fault-mid exc 0000000d 00000000 ", "SDM vol 3 5.3: the element past ES's limit faults"),
    ("string_pm", "00000000 00001006 ", "00000006 00001000 ", "SDM vol 2 REP: registers hold the elements done when a fault interrupts"),
    // QEMU reports every non-canonical address as #GP, and a reserved-bit #PF without P.
    ("long_mode", "noncanon-stack exc 000000000000000d 0000000000000000 ", "noncanon-stack exc 000000000000000c 0000000000000000 ", "SDM vol 1 3.3.7.1: a non-canonical stack reference (RSP or RBP based) is #SS"),
    ("long_mode", "rsvd exc 000000000000000e 0000000000000008 cr2 0000000000600000 ", "rsvd exc 000000000000000e 0000000000000009 cr2 0000000000600000 ", "SDM vol 3 4.7: RSVD is set only with P, as reserved bits are checked only in present entries"),
    ("paging_pae", "xd-reserved exc 0000000e 00000008 cr2 00402000 ", "xd-reserved exc 0000000e 00000009 cr2 00402000 ", "SDM vol 3 4.7: RSVD comes with P; I/D stays clear without NXE or SMEP"),
    ("paging_pae", "pd-rsvd exc 0000000e 00000008 cr2 00600000 ", "pd-rsvd exc 0000000e 00000009 cr2 00600000 ", "SDM vol 3 4.7"),
    // QEMU does not load PDPTEs at MOV CR3, so it cannot refuse reserved bits there.
    ("paging_pae", "pdpte-rsvd no fault", "pdpte-rsvd exc 0000000d 00000000 ", "SDM vol 3 4.4.1: MOV CR3 loads the PDPTEs; a reserved bit set is #GP(0)"),
    // QEMU's SYSCALL loses the arithmetic flags it does not mask; its SYSRET takes a
    // non-canonical RCX to ring 3 and faults there (AMD's way); WRFSBASE takes any value.
    ("syscall64", "syscall 0000000000000000 0000000000000cd7 0000000000000002 00000000000000a0 00000000000000a8 ", "syscall 0000000000000000 0000000000000cd7 00000000000000d6 00000000000000a0 00000000000000a8 ", "SDM vol 2 SYSCALL: RFLAGS <- RFLAGS AND NOT(IA32_FMASK)"),
    ("syscall64", "noncanon-rcx-cpl 0000000000000003 ", "noncanon-rcx-cpl 0000000000000000 ", "SDM vol 2 SYSRET: #GP(0) for a non-canonical RCX, raised before the CPL changes"),
    ("syscall64", "wrfsbase-noncanon no fault", "wrfsbase-noncanon exc 000000000000000d 0000000000000000 ", "SDM vol 2 WRFSBASE: #GP(0) if the source is non-canonical"),
    // QEMU leaves EXT clear when the delivery of a processor exception faults.
    ("double_fault", "ud-then-np exc 0000000b 00000032 ", "ud-then-np exc 0000000b 00000033 ", "SDM vol 3 6.13: EXT is set for a fault while delivering an earlier exception"),
];

/// The guests' RAM, as QEMU's `-m 16`.
const RAM_BYTES: u64 = 16 << 20;

fn guests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn assemble(src: &Path, out: &Path) {
    let status = Command::new("nasm")
        .arg("-f")
        .arg("bin")
        .arg("-I")
        .arg(guests_dir())
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("nasm runs");
    assert!(status.success(), "nasm failed on {}", src.display());
}

fn run_qemu(rom: &Path, out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    let status = Command::new("timeout")
        .args([
            "20",
            "qemu-system-x86_64",
            "-nodefaults",
            "-nographic",
            "-display",
            "none",
            "-machine",
            "pc",
            "-m",
            "16",
        ])
        .args(["-cpu", QEMU_CPU, "-no-reboot"])
        .arg("-bios")
        .arg(rom)
        .arg("-debugcon")
        .arg(format!("file:{}", out.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
        .status()
        .expect("qemu runs");
    // isa-debug-exit: the exit status is (value << 1) | 1.
    assert_eq!(
        status.code(),
        Some(1),
        "QEMU did not end through port 0xF4 ({})",
        rom.display()
    );
    std::fs::read_to_string(out).unwrap()
}

fn run_sim(rom: &[u8]) -> String {
    let mut vm = SimHypervisor.create_vm(&VmConfig::default()).unwrap();
    // QEMU's `pc` machine with `-m 16`: 16 MiB of RAM with the BIOS over its top 64 KiB
    // below 1 MiB, and the BIOS again below 4 GiB.
    let low = 0x10_0000 - rom.len() as u64;
    for (gpa, size) in [(0, low), (0x10_0000, RAM_BYTES - 0x10_0000)] {
        let ram = Arc::new(HostRegion::new(size as usize).unwrap());
        vm.map_memory(MemoryMapping {
            gpa,
            region: ram,
            writable: true,
            executable: true,
        })
        .unwrap();
    }
    for at in [low, 0x1_0000_0000 - rom.len() as u64] {
        let region = Arc::new(HostRegion::new(rom.len()).unwrap());
        region.write(0, rom).unwrap();
        vm.map_memory(MemoryMapping {
            gpa: at,
            region,
            writable: false,
            executable: true,
        })
        .unwrap();
    }
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut msg = ExitMessage::default();
    let mut text = String::new();
    let limits = RunLimits {
        max_instructions: Some(200_000_000),
        deadline: None,
        ..RunLimits::default()
    };
    loop {
        let exit = vcpu.run(&mut msg, &limits).unwrap();
        assert_eq!(
            exit,
            Exit::Message,
            "the guest ran too long; so far:\n{text}"
        );
        let t = msg.message_type();
        if t != HVMSG_X64_IO_PORT_INTERCEPT {
            let h: hv_x64_intercept_message_header = msg.payload();
            panic!("message {t:#x} at rip {:#x}; so far:\n{text}", { h.rip });
        }
        let io: hv_x64_io_port_intercept_message = msg.payload();
        let write = io.header.intercept_access_type as u32 == HV_INTERCEPT_ACCESS_WRITE;
        match ({ io.port_number }, write) {
            (0xf4, true) => return text,
            (0xe9, true) => text.push(io.rax as u8 as char),
            (_, true) => {}
            (_, false) => {
                vcpu.set_registers(
                    &[hv_register_name_HV_X64_REGISTER_RAX],
                    &[[io.rax | 0xffff_ffff, 0]],
                )
                .unwrap();
            }
        }
        let next = io.header.rip + io.header.instruction_length() as u64;
        vcpu.set_registers(&[hv_register_name_HV_X64_REGISTER_RIP], &[[next, 0]])
            .unwrap();
    }
}

#[test]
fn every_guest_prints_the_same_on_qemu_and_on_the_sim() {
    if !have("nasm") || !have("qemu-system-x86_64") {
        // CI installs both (.ci/run), so there a missing tool is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install nasm and qemu-system-x86 (.ci/run does)"
        );
        eprintln!("qemu guests skipped: nasm or qemu-system-x86_64 is not installed (.ci/run installs both)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("mshv-guests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(guests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "asm"))
        .collect();
    sources.sort();
    assert!(
        sources.len() >= 20,
        "{} guests; the comparison promises at least 20",
        sources.len()
    );
    let mut failures = Vec::new();
    let mut used = [false; DEVIATIONS.len()];
    for src in &sources {
        let name = src.file_stem().unwrap().to_string_lossy().to_string();
        let rom = dir.join(format!("{name}.bin"));
        assemble(src, &rom);
        let qemu = run_qemu(&rom, &dir.join(format!("{name}.txt")));
        let sim = run_sim(&std::fs::read(&rom).unwrap());
        let q: Vec<&str> = qemu.lines().collect();
        let s: Vec<&str> = sim.lines().collect();
        for i in 0..q.len().max(s.len()) {
            let (ql, sl) = (
                q.get(i).copied().unwrap_or("<none>"),
                s.get(i).copied().unwrap_or("<none>"),
            );
            let deviation = DEVIATIONS
                .iter()
                .position(|(g, qline, _, _)| *g == name && *qline == ql);
            if let Some(d) = deviation {
                used[d] = true;
            }
            let expected = deviation.map_or(ql, |d| DEVIATIONS[d].2);
            if sl != expected {
                failures.push(format!("{name} line {}: qemu {ql:?}, sim {sl:?}", i + 1));
            }
        }
        assert!(
            s.last() == Some(&"done"),
            "{name}: the sim did not finish:\n{sim}"
        );
    }
    for (d, (guest, qline, _, _)) in DEVIATIONS.iter().enumerate() {
        if !used[d] {
            failures.push(format!(
                "{guest}: QEMU no longer prints {qline:?}; drop the deviation"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The `;=` lines of a manual guest, in order, then "done".
fn expected_lines(source: &str) -> Vec<String> {
    let mut lines: Vec<String> = source
        .lines()
        .filter_map(|l| {
            l.split_once(";=")
                .map(|(_, want)| format!("{} ", want.trim()))
        })
        .collect();
    lines.push("done".into());
    lines
}

#[test]
fn manual_guests_print_what_the_sdm_says() {
    if !have("nasm") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install nasm (.ci/run does)"
        );
        eprintln!("manual guests skipped: nasm is not installed (.ci/run installs it)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("mshv-manual-guests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(guests_dir().join("manual")).unwrap() {
        let src = entry.unwrap().path();
        let name = src.file_stem().unwrap().to_string_lossy().to_string();
        let rom = dir.join(format!("{name}.bin"));
        assemble(&src, &rom);
        let want = expected_lines(&std::fs::read_to_string(&src).unwrap());
        let got = run_sim(&std::fs::read(&rom).unwrap());
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(got, want, "{name}");
        checked += want.len() - 1;
    }
    assert!(checked >= 10, "{checked} manual checks");
}
