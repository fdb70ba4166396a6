//! Prints this machine's int8 multiply-add peak (10^9 u8×i8 MACs per second through AVX-512
//! VNNI, or AVX2's `vpmaddubsw` + `vpmaddwd`) with N threads: the compute floor of prefill and batched decode in
//! `scripts/compare-cpu-sizes.sh`, as `read_bandwidth` is the decode floor's.
//!
//!   cargo run --release -p metrum-server -p metrum-kernels --example compute_peak -- [THREADS] [REPS]

use metrum_kernels::check::cpu_int8_mac_peak;
use metrum_kernels::threads::ThreadPool;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let reps = args.next().and_then(|s| s.parse().ok()).unwrap_or(9);
    let pool = ThreadPool::new(threads);
    match cpu_int8_mac_peak(&pool, reps) {
        Some(gmacs) => println!("{gmacs:.1}"),
        None => {
            eprintln!("no AVX2 or AVX-512 VNNI on this CPU: no int8 peak to measure");
            std::process::exit(1);
        }
    }
}
