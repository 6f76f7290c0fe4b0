//! The backend checklist (`hv-conformance`) on the sim: the facts the sim models are
//! the ones the real hypervisor is checked against by `mshv doctor` and the device tests.

use hv_sim::SimHypervisor;
use libtest_mimic::Arguments;

fn main() -> std::process::ExitCode {
    let trials = hv_conformance::trials(|| Ok(Box::new(SimHypervisor)), None);
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}
