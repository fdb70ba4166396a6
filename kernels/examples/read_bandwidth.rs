//! Prints this machine's streaming-read bandwidth (GB/s) with N threads: the denominator of the
//! CPU decode floor in `scripts/compare-cpu-sizes.sh`.
//!
//!   cargo run --release -p metrum-kernels --example read_bandwidth -- [THREADS] [REPS]

use metrum_kernels::check::cpu_read_bandwidth;
use metrum_kernels::threads::ThreadPool;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let reps = args.next().and_then(|s| s.parse().ok()).unwrap_or(9);
    let pool = ThreadPool::new(threads);
    println!("{:.2}", cpu_read_bandwidth(&pool, reps));
}
