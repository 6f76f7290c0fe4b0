//! `host-exec`: runs snippets natively for the TypeScript differential tests.
//!
//! Reads one case per line on stdin and writes one result line per case:
//!   in:  <code hex> <rflags hex> <16 GPRs hex, comma-separated> <memory hex> <bases, comma-separated or ->
//!   out: <rflags hex> <16 GPRs hex, comma-separated> <memory hex>
//! The snippets must satisfy `host_exec::run`'s contract; the tests choose them so.

#[cfg(target_arch = "x86_64")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    for line in stdin.lock().lines() {
        let line = line?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let [code, rflags, gprs, mem, bases] = f[..] else {
            return Err(format!("expected 5 fields, got {}: {line}", f.len()).into());
        };
        let code = unhex(code)?;
        let mut mem = unhex(mem)?;
        let mut state = host_exec::HostState {
            rflags: u64::from_str_radix(rflags, 16)?,
            ..Default::default()
        };
        for (slot, v) in state.gpr.iter_mut().zip(gprs.split(',')) {
            *slot = u64::from_str_radix(v, 16)?;
        }
        let bases: Vec<usize> = if bases == "-" {
            vec![]
        } else {
            bases.split(',').map(str::parse).collect::<Result<_, _>>()?
        };
        // SAFETY: the differential tests send single non-faulting instructions whose
        // memory operands address `mem` through `bases` (see host_exec::run).
        unsafe { host_exec::run(&code, &mut state, &mut mem, &bases)? };
        let gprs: Vec<String> = state.gpr.iter().map(|v| format!("{v:x}")).collect();
        writeln!(out, "{:x} {} {}", state.rflags, gprs.join(","), hex(&mem))?;
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("host-exec runs x86-64 code natively and needs an x86-64 host");
    std::process::exit(2);
}

fn unhex(s: &str) -> Result<Vec<u8>, std::num::ParseIntError> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
