//! Compiles `csrc/*.cu` to PTX with nvcc, only when feature `cuda` is on (CPU builds need no CUDA).
//! The PTX lands in `$OUT_DIR/<name>.ptx` and is embedded by `src/cuda/ptx.rs`.
//!
//! nvcc comes from `$NVCC`, else `PATH`, else `$CUDA_ROOT/bin` or `$CUDA_HOME/bin`. The virtual
//! arch comes from `CUDA_COMPUTE_CAP` (digits only, default 90): `compute_90` PTX JIT-compiles on
//! the H100 and on any newer GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: &[&str] = &[
    "attention_decode",
    "attention_prefill",
    "cache",
    "norm",
    "rope",
    "activation",
    "moe",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["NVCC", "CUDA_ROOT", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-changed=csrc");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    let arch = compute_arch();
    for name in KERNELS {
        let src = Path::new("csrc").join(format!("{name}.cu"));
        println!("cargo::rerun-if-changed={}", src.display());
        let out = out_dir.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
            .arg(format!("-arch={arch}"))
            .arg("-Icsrc")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("nvcc failed on {} ({s})", src.display()),
            Err(e) => panic!("cannot run nvcc ({}): {e}", nvcc.display()),
        }
    }
}

fn find_nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    let on_path = Command::new("nvcc").arg("--version").output();
    if matches!(on_path, Ok(o) if o.status.success()) {
        return PathBuf::from("nvcc");
    }
    for var in ["CUDA_ROOT", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var) {
            let p = Path::new(&root).join("bin/nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    panic!("feature `cuda` needs nvcc: set NVCC, put it on PATH, or set CUDA_ROOT");
}

fn compute_arch() -> String {
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_default();
    let digits: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let digits = if digits.is_empty() {
        "90".into()
    } else {
        digits
    };
    format!("compute_{digits}")
}
