//! CPUID answers a VMM registers with the hypervisor, which then answers the guest's
//! CPUID itself, without an exit (HVCALL_REGISTER_INTERCEPT_RESULT on MSHV, as QEMU,
//! OpenVMM and Cloud Hypervisor register theirs).

/// One registered answer: the registers it sets for a leaf (and one subleaf, or every
/// subleaf); the registers it leaves out keep the hypervisor's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidResult {
    pub leaf: u32,
    /// `None`: every subleaf of the leaf.
    pub subleaf: Option<u32>,
    /// EAX, EBX, ECX, EDX; `None` keeps the hypervisor's value.
    pub registers: [Option<u32>; 4],
}

impl CpuidResult {
    /// The same key with no register overridden: registering it withdraws an answer
    /// (a hypervisor has no call to unregister one).
    pub fn withdrawn(&self) -> Self {
        CpuidResult {
            registers: [None; 4],
            ..*self
        }
    }

    /// Whether this answer applies to `leaf`/`subleaf`.
    pub fn matches(&self, leaf: u32, subleaf: u32) -> bool {
        self.leaf == leaf && self.subleaf.is_none_or(|s| s == subleaf)
    }
}

/// The answer to `leaf`/`subleaf` over `defaults`: a subleaf-specific result wins over
/// a leaf-wide one, and each register left out keeps its default.
pub fn apply(results: &[CpuidResult], leaf: u32, subleaf: u32, defaults: [u32; 4]) -> [u32; 4] {
    let exact = results
        .iter()
        .find(|r| r.leaf == leaf && r.subleaf == Some(subleaf));
    let wide = || {
        results
            .iter()
            .find(|r| r.leaf == leaf && r.subleaf.is_none())
    };
    match exact.or_else(wide) {
        Some(r) => std::array::from_fn(|i| r.registers[i].unwrap_or(defaults[i])),
        None => defaults,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_subleaf_wins_then_the_leaf_wide_answer_then_the_default() {
        let results = [
            CpuidResult {
                leaf: 7,
                subleaf: None,
                registers: [None, Some(1), None, None],
            },
            CpuidResult {
                leaf: 7,
                subleaf: Some(1),
                registers: [Some(9), None, None, None],
            },
        ];
        assert_eq!(apply(&results, 7, 0, [5, 5, 5, 5]), [5, 1, 5, 5]);
        assert_eq!(apply(&results, 7, 1, [5, 5, 5, 5]), [9, 5, 5, 5]);
        assert_eq!(apply(&results, 8, 0, [5, 5, 5, 5]), [5, 5, 5, 5]);
        assert_eq!(apply(&[results[0].withdrawn()], 7, 0, [5; 4]), [5; 4]);
    }
}
