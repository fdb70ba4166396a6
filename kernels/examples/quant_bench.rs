//! Microbenchmark of the quantized CPU matmul (`kernels/src/quant`): for each format and shape,
//! GB/s of weights streamed at 1 token (next to this machine's streaming-read bandwidth,
//! measured in the same run) and GFLOP/s (2·rows·cols·tokens per second) at larger batches.
//!
//! `cargo run --release -p metrum-kernels --example quant_bench -- q4k 2048 8192 --tokens 1,16,512`
//!
//! Arguments: formats (`q4_0 q4_1 q8_0 q4k q5k q6k`, comma-separated), then pairs `rows cols`
//! (several allowed), `--tokens 1,16,512`, `--reps N` (median of N, default 7), `--threads N`
//! (default: the global pool's). `METRUM_CPU_ISA=scalar|avx2|avx512` picks the kernel path.
//!
//! The weights are random bytes with sane f16 scales: speed does not depend on the values, and
//! filling a 128256×2048 matrix through a quantizer would take longer than the benchmark.
//! The machine this runs on is shared; each line is a median, and the load average is printed.

use std::time::Instant;

use metrum_kernels::quant::{Isa, QuantMatrix, QuantType};
use metrum_kernels::threads::ThreadPool;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn parse_type(s: &str) -> QuantType {
    match s.to_ascii_lowercase().as_str() {
        "q4_0" => QuantType::Q4_0,
        "q4_1" => QuantType::Q4_1,
        "q8_0" => QuantType::Q8_0,
        "q4k" | "q4_k" => QuantType::Q4K,
        "q5k" | "q5_k" => QuantType::Q5K,
        "q6k" | "q6_k" => QuantType::Q6K,
        other => panic!("unknown format {other}"),
    }
}

/// Random ggml blocks whose f16 scale fields (`d`, `dmin`) hold 0.01: finite, normal values.
fn random_blocks(ty: QuantType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let bb = ty.block_bytes();
    let mut data = vec![0u8; rows * cols / ty.block_values() * bb];
    rng.fill(&mut data[..]);
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let fields: &[usize] = match ty {
        QuantType::Q4_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q6K => &[208],
    };
    for block in data.chunks_exact_mut(bb) {
        for &at in fields {
            block[at..at + 2].copy_from_slice(&scale);
        }
    }
    data
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut types = Vec::new();
    let mut dims = Vec::new();
    let mut tokens = vec![1, 16, 512];
    let mut reps: usize = 7;
    let mut threads = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--tokens" => {
                i += 1;
                tokens = args[i].split(',').map(|t| t.parse().unwrap()).collect();
            }
            "--reps" => {
                i += 1;
                reps = args[i].parse().unwrap();
            }
            "--threads" => {
                i += 1;
                threads = Some(args[i].parse().unwrap());
            }
            a if a.parse::<usize>().is_ok() => dims.push(a.parse::<usize>().unwrap()),
            a => types.extend(a.split(',').map(parse_type)),
        }
        i += 1;
    }
    assert!(
        !types.is_empty() && !dims.is_empty() && dims.len() % 2 == 0,
        "usage: quant_bench FORMATS ROWS COLS [ROWS COLS ...] [--tokens 1,16,512] [--reps N]"
    );
    let pool = match threads {
        Some(t) => std::sync::Arc::new(ThreadPool::new(t)),
        None => metrum_kernels::threads::global().clone(),
    };
    println!(
        "isa {} threads {} load average {} | streaming read {:.1} GB/s",
        Isa::detect().name(),
        pool.threads(),
        load_average(),
        metrum_kernels::check::cpu_read_bandwidth(&pool, 5)
    );
    for &ty in &types {
        for shape in dims.chunks_exact(2) {
            let (rows, cols) = (shape[0], shape[1]);
            let bytes = random_blocks(ty, rows, cols, 1);
            let weight_bytes = bytes.len() as f64;
            let m = QuantMatrix::from_ggml(ty, rows, cols, &bytes).unwrap();
            drop(bytes);
            for &t in &tokens {
                let mut rng = StdRng::seed_from_u64(2);
                let x: Vec<f32> = (0..t * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                let mut out = vec![0f32; t * rows];
                m.matmul_on(&pool, &x, t, &mut out).unwrap(); // warm-up
                let n = if t >= 256 {
                    reps.div_ceil(2).max(3)
                } else {
                    reps
                };
                let times: Vec<f64> = (0..n)
                    .map(|_| {
                        let start = Instant::now();
                        m.matmul_on(&pool, &x, t, &mut out).unwrap();
                        start.elapsed().as_secs_f64()
                    })
                    .collect();
                let s = median(times);
                println!(
                    "{:5} {rows:6}x{cols:<5} tokens {t:4}: {:9.3} ms  {:6.1} GB/s weights  {:7.1} GFLOP/s",
                    ty.name(),
                    s * 1e3,
                    weight_bytes / s / 1e9,
                    2.0 * (rows * cols * t) as f64 / s / 1e9
                );
            }
        }
    }
    println!("load average after: {}", load_average());
}
