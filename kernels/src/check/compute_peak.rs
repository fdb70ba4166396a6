//! This machine's int8 multiply-add peak: the compute floor of the quantized kernels, as
//! [`super::cpu_read_bandwidth`] is their memory floor.
//!
//! Every quantized matmul (`crate::quant`) ends in `vpdpbusd` on AVX-512 VNNI (64 u8×i8
//! multiply-adds per instruction, summed into 16 i32 lanes) and in `vpmaddubsw` + `vpmaddwd`
//! on AVX2 (32 multiply-adds per pair: u8×i8 products summed in pairs to i16, then to i32);
//! prefill and batched decode are bound by how many of those a core retires per second. The
//! probe runs nothing but independent chains of the ISA's step (16 accumulators, more than
//! latency × throughput), so what it measures is that step's throughput on this CPU at its
//! current clock, with no memory traffic. A kernel's efficiency is its multiply-adds per
//! second over this.

use std::time::Instant;

use crate::quant::Isa;
use crate::threads::ThreadPool;

/// `vpdpbusd` instructions per chain per repetition.
const ITERATIONS: usize = 1 << 22;

/// u8×i8 multiply-adds per second (in 10^9) with every thread of `pool` running chains of
/// the kernels' step for [`Isa::detect`] (`vpdpbusd`, or AVX2's `vpmaddubsw` + `vpmaddwd`),
/// median of `reps`. `None` on the scalar path.
pub fn cpu_int8_mac_peak(pool: &ThreadPool, reps: usize) -> Option<f64> {
    let isa = Isa::detect();
    let (macs_per_step, chains) = match isa {
        Isa::Avx512Vnni => (64, CHAINS),
        Isa::Avx2 => (32, AVX2_CHAINS),
        Isa::Scalar => return None,
    };
    let threads = pool.threads();
    let mut seconds = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let sink = std::sync::atomic::AtomicI64::new(0);
        let start = Instant::now();
        pool.run(threads, &|_| {
            // SAFETY: the ISA was detected above.
            #[cfg(target_arch = "x86_64")]
            let s = unsafe {
                match isa {
                    Isa::Avx512Vnni => vnni_chains(ITERATIONS),
                    _ => avx2_chains(ITERATIONS),
                }
            };
            #[cfg(not(target_arch = "x86_64"))]
            let s = 0;
            sink.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        seconds.push(start.elapsed().as_secs_f64());
        std::hint::black_box(sink.into_inner());
    }
    seconds.sort_by(f64::total_cmp);
    let macs = (threads * ITERATIONS * chains * macs_per_step) as f64;
    Some(macs / seconds[seconds.len() / 2] / 1e9)
}

/// Independent accumulators: `vpdpbusd`'s latency (~5 cycles) times its throughput (1-2 per
/// cycle) is at most 10, so 16 chains never wait on one another.
const CHAINS: usize = 16;
/// AVX2's chains (see [`avx2_chains`]).
const AVX2_CHAINS: usize = 12;

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

/// AVX2's step, as the kernels take it (`avx2.rs`, `avx2_k.rs`): u8×i8 pairs to i16, then
/// pairs of those against 16-bit factors to i32, then added to the chain.
///
/// Each chain's own accumulator is the step's u8 operand, so nothing is loop-invariant: with
/// constant operands the compiler hoisted both multiplies out of the loop and this probe timed
/// a chain of adds (and one spilled accumulator), which read 251-272 GMAC/s on a 2-core Zen 3
/// (session 11's "AVX2 peak"). 12 chains: a chain's step is ~7 cycles of latency (3 + 3 + 1),
/// two multiply pipes retire one step per cycle, and 12 accumulators plus the two operands
/// still fit AVX2's 16 registers (16 chains spilled one).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_chains(iterations: usize) -> i64 {
    use std::arch::x86_64::*;
    let b = _mm256_set1_epi8(std::hint::black_box(-2));
    let ones = _mm256_set1_epi16(std::hint::black_box(1));
    let mut acc: [__m256i; AVX2_CHAINS] =
        std::array::from_fn(|i| _mm256_set1_epi32(std::hint::black_box(i as i32)));
    for _ in 0..iterations {
        for x in acc.iter_mut() {
            let pairs = _mm256_maddubs_epi16(*x, b);
            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(pairs, ones));
        }
    }
    let mut total = _mm256_setzero_si256();
    for x in acc {
        total = _mm256_add_epi32(total, x);
    }
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` holds the 32 bytes stored.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), total) };
    lanes.iter().map(|&v| v as i64).sum()
}
