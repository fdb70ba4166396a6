//! The decode tile of the fast CPU attention, written with AVX-512 intrinsics.
//!
//! A decode tile is one query token of one sequence for the query heads of one KV head (3 rows
//! for SmolLM2). On AVX-512 it computes every row, prefill chunks' too, so that a row is the
//! same bits in any chunk (see "Batch invariance" in [`super::fast_attention`]). The generic lane loops of [`super::fast_attention`] compiled to 2-wide SSE
//! code here (perf: the fast attention was 35% of a loaded server's CPU time), so this path
//! spells the vectors out:
//! - scores: one 16-lane FMA chain per (key, query head), reduced once;
//! - softmax: [`crate::vmath::softmax_numerators`];
//! - P·V: each V row is loaded once and feeds every head of the tile (the generic path
//!   streams V once per head), with all accumulators in registers where they fit;
//! - K and V rows a few keys ahead are prefetched: decode attention over a batch's contexts
//!   is memory-bound (perf: the loads' first uses were ~80% of this function's samples).
//!
//! An f16 cache is read with the same loads widened in registers (`vcvtph2ps`, [`load16`]):
//! half the bytes per key for a few more µops, which a memory-bound loop has to spare.
//!
//! Only the query's visible keys are read: from its sliding-window start (0 without a window)
//! to its own position; soft-capping, when on, runs over the scores before the softmax.

use std::arch::x86_64::*;

use super::fast_attention::{Dims, Tile, TileArgs};
use super::kv_dtype::{KvElem, KvFormat};

/// Most query heads per KV head this path handles (accumulators held in registers).
pub(super) const MAX_GROUP: usize = 8;

/// Whether [`decode_tile`] handles one-token tiles of a model of these dimensions.
pub(super) fn handles(d: Dims) -> bool {
    d.head_dim.is_multiple_of(16) && d.num_heads / d.kv_heads <= MAX_GROUP
}

/// # Safety
/// The CPU has AVX-512 F; `handles(args.d)` and `tile.q_len == 1`; `args` holds the buffers
/// `paged_attention_f32` checked, and no other tile writes this tile's output rows.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn decode_tile<T: KvElem>(args: &TileArgs<T>, tile: Tile) {
    let TileArgs {
        q,
        k,
        v,
        meta,
        d,
        params,
        out,
    } = *args;
    let group = d.num_heads / d.kv_heads;
    let hd = d.head_dim;
    let table = &meta.block_tables[tile.seq];
    // Keys before the window start are skipped, never read.
    let keys = params.visible_keys(tile.pos0);
    let ctx = keys.len();
    let offsets: Vec<usize> = keys.map(|p| d.kv_row_start(table, tile.kvh, p)).collect();
    // The tile's query rows (and output rows) are the group's heads, contiguous.
    let first = (tile.row0 * d.num_heads + tile.kvh * group) * hd;
    let q = &q[first..first + group * hd];
    let mut scores = vec![0f32; group * ctx];
    unsafe { scores_into(&mut scores, q, k, &offsets, group, hd, params.scale) };
    let mut inv = [0f32; MAX_GROUP];
    for r in 0..group {
        let row = &mut scores[r * ctx..(r + 1) * ctx];
        if let Some(cap) = params.soft_cap {
            crate::vmath::soft_cap(row, cap);
        }
        inv[r] = 1.0 / crate::vmath::softmax_numerators(row);
    }
    // SAFETY: rows first..first + group * hd of `out` belong to this tile alone.
    let out = unsafe { out.0.add(first) };
    // Key-outer with every accumulator in registers where they fit (≤ 24 of the 32 zmm);
    // otherwise 16 dims at a time.
    macro_rules! pv {
        ($(($g:literal, $c:literal))*; $($h:literal)*) => {
            match (group, hd / 16) {
                $(($g, $c) if hd.is_multiple_of(16) => unsafe {
                    pv_key_outer::<T, $g, $c>(out, &scores, &inv, v, &offsets)
                },)*
                $(($h, _) => unsafe { pv_into::<T, $h>(out, &scores, &inv, v, &offsets, hd) },)*
                _ => unreachable!("handles() bounds the group by MAX_GROUP"),
            }
        };
    }
    pv!((1, 4) (2, 4) (3, 4) (4, 4) (5, 4) (6, 4) (1, 8) (2, 8) (3, 8); 1 2 3 4 5 6 7 8);
}

/// Keys ahead whose K or V rows are prefetched: block tables scatter rows over memory, so the
/// hardware prefetcher loses the stream at every block boundary.
const PREFETCH_KEYS: usize = 6;

/// Prefetches the cache lines of a row of `len` elements.
#[inline(always)]
unsafe fn prefetch_row<T>(row: *const T, len: usize) {
    let per_line = 64 / size_of::<T>();
    for e in (0..len).step_by(per_line) {
        unsafe { _mm_prefetch::<_MM_HINT_T0>(row.add(e) as *const i8) };
    }
}

/// 16 elements at `p` as f32 lanes: a plain load from an f32 cache, a 32-byte load widened in
/// registers from an f16 one (the branch is on a constant and compiles away).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
unsafe fn load16<T: KvElem>(p: *const T) -> __m512 {
    unsafe {
        match T::FORMAT {
            KvFormat::F32 => _mm512_loadu_ps(p.cast()),
            KvFormat::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
        }
    }
}

/// `out_r = inv_r · Σ_p weights[r][p] · V_p` for `G` heads of `16·C` dims, each V row loaded
/// once into `C` registers and used by every head.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn pv_key_outer<T: KvElem, const G: usize, const C: usize>(
    out: *mut f32,
    weights: &[f32],
    inv: &[f32; MAX_GROUP],
    v: &[T],
    offsets: &[usize],
) {
    let ctx = offsets.len();
    debug_assert!(weights.len() == G * ctx && offsets.iter().all(|&o| o + 16 * C <= v.len()));
    let mut acc = [[_mm512_setzero_ps(); C]; G];
    for (p, &off) in offsets.iter().enumerate() {
        if let Some(&ahead) = offsets.get(p + PREFETCH_KEYS) {
            unsafe { prefetch_row(v.as_ptr().add(ahead), 16 * C) };
        }
        let row: [__m512; C] =
            std::array::from_fn(|c| unsafe { load16(v.as_ptr().add(off + 16 * c)) });
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = _mm512_set1_ps(unsafe { *weights.get_unchecked(r * ctx + p) });
            for c in 0..C {
                acc_r[c] = _mm512_fmadd_ps(w, row[c], acc_r[c]);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let scale = _mm512_set1_ps(inv[r]);
        for (c, a) in acc_r.iter().enumerate() {
            unsafe { _mm512_storeu_ps(out.add(r * 16 * C + 16 * c), _mm512_mul_ps(*a, scale)) };
        }
    }
}

/// `scores[r][p] = scale · q_r · K_p`.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn scores_into<T: KvElem>(
    scores: &mut [f32],
    q: &[f32],
    k: &[T],
    offsets: &[usize],
    group: usize,
    hd: usize,
    scale: f32,
) {
    let ctx = offsets.len();
    debug_assert!(offsets.iter().all(|&o| o + hd <= k.len()));
    for (p, &off) in offsets.iter().enumerate() {
        let kp = unsafe { k.as_ptr().add(off) };
        if let Some(&ahead) = offsets.get(p + PREFETCH_KEYS) {
            unsafe { prefetch_row(k.as_ptr().add(ahead), hd) };
        }
        for r in 0..group {
            let qp = unsafe { q.as_ptr().add(r * hd) };
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut c = 0;
            unsafe {
                while c + 32 <= hd {
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(c)), load16(kp.add(c)), a0);
                    a1 = _mm512_fmadd_ps(
                        _mm512_loadu_ps(qp.add(c + 16)),
                        load16(kp.add(c + 16)),
                        a1,
                    );
                    c += 32;
                }
                if c < hd {
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(c)), load16(kp.add(c)), a0);
                }
            }
            scores[r * ctx + p] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * scale;
        }
    }
}

/// `out_r = inv_r · Σ_p weights[r][p] · V_p`, 16 dims at a time for all `G` heads.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn pv_into<T: KvElem, const G: usize>(
    out: *mut f32,
    weights: &[f32],
    inv: &[f32; MAX_GROUP],
    v: &[T],
    offsets: &[usize],
    hd: usize,
) {
    let ctx = offsets.len();
    debug_assert!(weights.len() == G * ctx && offsets.iter().all(|&o| o + hd <= v.len()));
    for c in (0..hd).step_by(16) {
        let mut acc = [_mm512_setzero_ps(); G];
        for (p, &off) in offsets.iter().enumerate() {
            if let Some(&ahead) = offsets.get(p + PREFETCH_KEYS) {
                unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(ahead + c) as *const i8) };
            }
            let row = unsafe { load16(v.as_ptr().add(off + c)) };
            for (r, a) in acc.iter_mut().enumerate() {
                let w = unsafe { *weights.get_unchecked(r * ctx + p) };
                *a = _mm512_fmadd_ps(_mm512_set1_ps(w), row, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            unsafe {
                _mm512_storeu_ps(
                    out.add(r * hd + c),
                    _mm512_mul_ps(*a, _mm512_set1_ps(inv[r])),
                )
            };
        }
    }
}
