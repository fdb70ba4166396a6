//! This machine's int8 multiply-add peak: the compute floor of the quantized kernels, as
//! [`super::cpu_read_bandwidth`] is their memory floor.
//!
//! Every quantized matmul (`crate::quant`) ends in `vpdpbusd` (AVX-512 VNNI: 64 u8×i8
//! multiply-adds per instruction, summed into 16 i32 lanes); prefill and batched decode are
//! bound by how many of those a core retires per second. The probe runs nothing but
//! independent `vpdpbusd` chains (16 accumulators, more than latency × throughput), so what it
//! measures is the instruction's throughput on this CPU at its current clock, with no memory
//! traffic. A kernel's efficiency is its multiply-adds per second over this.

use std::time::Instant;

use crate::quant::Isa;
use crate::threads::ThreadPool;

/// `vpdpbusd` instructions per chain per repetition.
const ITERATIONS: usize = 1 << 22;

/// u8×i8 multiply-adds per second (in 10^9) with every thread of `pool` running `vpdpbusd`
/// chains, median of `reps`. `None` where the CPU has no AVX-512 VNNI (the kernels then use
/// AVX2's `vpmaddubsw`, which this probe does not model).
pub fn cpu_int8_mac_peak(pool: &ThreadPool, reps: usize) -> Option<f64> {
    if Isa::detect() != Isa::Avx512Vnni {
        return None;
    }
    let threads = pool.threads();
    let mut seconds = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let sink = std::sync::atomic::AtomicI64::new(0);
        let start = Instant::now();
        pool.run(threads, &|_| {
            // SAFETY: Isa::Avx512Vnni was detected above.
            #[cfg(target_arch = "x86_64")]
            let s = unsafe { vnni_chains(ITERATIONS) };
            #[cfg(not(target_arch = "x86_64"))]
            let s = 0;
            sink.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        seconds.push(start.elapsed().as_secs_f64());
        std::hint::black_box(sink.into_inner());
    }
    seconds.sort_by(f64::total_cmp);
    let macs = (threads * ITERATIONS * CHAINS * 64) as f64;
    Some(macs / seconds[seconds.len() / 2] / 1e9)
}

/// Independent accumulators: `vpdpbusd`'s latency (~5 cycles) times its throughput (1-2 per
/// cycle) is at most 10, so 16 chains never wait on one another.
const CHAINS: usize = 16;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vnni_chains(iterations: usize) -> i64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_epi8(std::hint::black_box(3));
    let b = _mm512_set1_epi8(std::hint::black_box(-2));
    let mut acc = [_mm512_setzero_si512(); CHAINS];
    for _ in 0..iterations {
        for x in acc.iter_mut() {
            *x = _mm512_dpbusd_epi32(*x, a, b);
        }
    }
    let mut total = _mm512_setzero_si512();
    for x in acc {
        total = _mm512_add_epi32(total, x);
    }
    _mm512_reduce_add_epi32(total) as i64
}
