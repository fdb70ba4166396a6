//! The kernels' own checks for `metrum gpu-check`: every kernel against its CPU reference, and
//! the kernel-level speed probes (device copy bandwidth, the paged-attention decode kernel).
//! The checks live in `metrum_kernels::check`, beside the kernels they test; the engine offers
//! them here, with the per-kernel summary the report prints, so the server reaches the kernels
//! only through the engine.

pub use metrum_kernels::check::{
    BenchRow, BenchSpec, CheckRow, bench_copy_bandwidth, bench_paged_attention, run_kernel_checks,
};

/// Every checked shape of one (kernel, dtype), summed up: how many, the worst error and where.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSummary {
    pub kernel: String,
    pub dtype: String,
    pub cases: usize,
    pub worst_rel_err: f64,
    pub worst_shape: String,
    /// Every case within its dtype's tolerance.
    pub passed: bool,
}

/// One summary per (kernel, dtype), sorted by kernel then dtype.
pub fn summarize(rows: &[CheckRow]) -> Vec<KernelSummary> {
    let mut groups: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.kernel.as_str(), r.dtype.as_str()))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
        .into_iter()
        .filter_map(|(kernel, dtype)| {
            let group: Vec<&CheckRow> = rows
                .iter()
                .filter(|r| r.kernel == kernel && r.dtype == dtype)
                .collect();
            let worst = group
                .iter()
                .max_by(|a, b| a.max_rel_err.total_cmp(&b.max_rel_err))?;
            Some(KernelSummary {
                kernel: kernel.to_string(),
                dtype: dtype.to_string(),
                cases: group.len(),
                worst_rel_err: worst.max_rel_err,
                worst_shape: worst.shape.clone(),
                passed: group.iter().all(|r| r.passed),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kernel: &str, dtype: &str, shape: &str, err: f64, passed: bool) -> CheckRow {
        CheckRow {
            kernel: kernel.into(),
            dtype: dtype.into(),
            shape: shape.into(),
            max_rel_err: err,
            passed,
        }
    }

    #[test]
    fn one_summary_per_kernel_and_dtype_with_its_worst_case() {
        let rows = [
            row("rope", "f32", "a", 1e-6, true),
            row("attention", "bf16", "x", 2e-3, true),
            row("rope", "f32", "b", 3e-6, true),
            row("attention", "bf16", "y", 9e-2, false),
            row("attention", "f16", "z", 1e-4, true),
        ];
        let summary = summarize(&rows);
        let keys: Vec<(&str, &str, usize)> = summary
            .iter()
            .map(|s| (s.kernel.as_str(), s.dtype.as_str(), s.cases))
            .collect();
        assert_eq!(
            keys,
            [
                ("attention", "bf16", 2),
                ("attention", "f16", 1),
                ("rope", "f32", 2)
            ]
        );
        assert_eq!(summary[0].worst_shape, "y");
        assert_eq!(summary[0].worst_rel_err, 9e-2);
        assert!(!summary[0].passed, "one failed case fails the group");
        assert_eq!(summary[2].worst_shape, "b");
        assert!(summary[1].passed && summary[2].passed);
        assert!(summarize(&[]).is_empty());
    }
}
