//! The machine a run happened on (R9: hardware is part of every result) and the load
//! generator's own CPU use (R7: the client must not be the bottleneck).

use nix::sys::resource::{UsageWho, getrusage};
use serde::{Deserialize, Serialize};
use std::process::Command;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub cpu_model: Option<String>,
    /// Logical CPUs this process may use.
    pub cores: usize,
    pub memory_bytes: Option<u64>,
    /// `nvidia-smi` GPU names and memory, when there is one.
    pub gpus: Vec<String>,
    pub os: String,
    pub kernel: Option<String>,
}

impl MachineInfo {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        MachineInfo {
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024),
            gpus: detect_gpus(),
            os: std::env::consts::OS.to_string(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
        }
    }

    /// One line for reports and for comparing runs.
    pub fn describe(&self) -> String {
        let gpu = if self.gpus.is_empty() {
            "no GPU".to_string()
        } else {
            self.gpus.join(", ")
        };
        format!(
            "{} ({} cores, {:.1} GiB), {gpu}",
            self.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.cores,
            self.memory_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64
        )
    }
}

fn detect_gpus() -> Vec<String> {
    let output = Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total", "--format=csv,noheader"])
        .output();
    match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// CPU seconds (user + system) this process has used so far; `None` where unavailable.
pub fn process_cpu_seconds() -> Option<f64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(usage.user_time()) + secs(usage.system_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_this_machine_and_counts_cpu_time() {
        let m = MachineInfo::detect();
        assert!(m.cores >= 1);
        assert!(m.describe().contains("cores"));
        let before = process_cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(process_cpu_seconds().unwrap() >= before);
    }
}
