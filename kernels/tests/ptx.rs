//! Without a GPU: every embedded PTX module must assemble for the H100 (`ptxas -arch=sm_90`)
//! and define every kernel entry the launchers in `src/cuda` ask for by name.

#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;

fn ptxas() -> PathBuf {
    if Command::new("ptxas")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return PathBuf::from("ptxas");
    }
    for var in ["CUDA_ROOT", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var) {
            let p = PathBuf::from(root).join("bin/ptxas");
            if p.exists() {
                return p;
            }
        }
    }
    panic!("ptxas not found on PATH or under CUDA_ROOT/CUDA_HOME (source .cuda/env.sh)");
}

#[test]
fn embedded_ptx_assembles_for_sm_90() {
    let ptxas = ptxas();
    let dir = std::env::temp_dir().join(format!("metrum-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let modules = metrum_kernels::embedded_ptx();
    assert_eq!(modules.len(), 7);
    for (name, ptx) in modules {
        assert!(
            ptx.contains(".target sm_90"),
            "{name}: PTX not built for compute_90"
        );
        let src = dir.join(format!("{name}.ptx"));
        std::fs::write(&src, ptx).expect("write ptx");
        let out = Command::new(&ptxas)
            .arg("-arch=sm_90")
            .arg(&src)
            .arg("-o")
            .arg(dir.join(format!("{name}.cubin")))
            .output()
            .expect("run ptxas");
        assert!(
            out.status.success(),
            "ptxas rejected {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The names `src/cuda` formats at launch time, rebuilt from the same rules.
fn launched_kernels() -> Vec<(&'static str, String)> {
    let mut names = Vec::new();
    for t in ["f32", "f16", "bf16"] {
        for d in [64, 128, 256] {
            for g in [1, 2, 4, 8] {
                names.push(("attention_decode", format!("paged_decode_{t}_d{d}_g{g}")));
            }
            names.push(("attention_decode", format!("paged_decode_reduce_{t}_d{d}")));
        }
        names.push(("norm", format!("rms_norm_{t}")));
        names.push(("norm", format!("add_rms_norm_{t}")));
        names.push(("activation", format!("silu_mul_{t}")));
        names.push(("activation", format!("silu_mul_vec_{t}")));
        names.push(("activation", format!("gelu_tanh_mul_{t}")));
        names.push(("activation", format!("gelu_tanh_mul_vec_{t}")));
        names.push(("moe", format!("moe_grouped_gemm_{t}")));
        names.push(("moe", format!("moe_combine_{t}")));
    }
    for t in ["f16", "bf16"] {
        for d in [64, 128] {
            names.push(("attention_prefill", format!("paged_prefill_{t}_d{d}")));
        }
    }
    for tables in ["f32_f32", "f16_f16", "f16_f32", "bf16_bf16", "bf16_f32"] {
        for style in ["neox", "interleaved"] {
            names.push(("rope", format!("rope_{style}_{tables}")));
        }
    }
    for unit in ["u128", "u32", "u16"] {
        names.push(("cache", format!("reshape_and_cache_{unit}")));
    }
    names
}

#[test]
fn every_launched_kernel_is_an_entry() {
    let modules = metrum_kernels::embedded_ptx();
    for (module, name) in launched_kernels() {
        let ptx = modules
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no module {module}"));
        assert!(
            ptx.contains(&format!(".entry {name}(")),
            "{module}.ptx has no entry {name}"
        );
    }
}
