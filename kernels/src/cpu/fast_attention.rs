//! The fast CPU paged attention (f32 queries over an f32 or f16 KV cache, see [`KvElem`]),
//! which the engine runs; [`super::paged_attention`] stays the readable oracle it is tested
//! against (kernels/tests/fast_attention.rs).
//!
//! Three things make it fast where the oracle is slow:
//! - **GQA sharing.** Work is split by (sequence, KV head, tile of up to [`Q_TILE`] query
//!   tokens); every K and V row loaded (and, from an f16 cache, widened) is used by all the
//!   tile's queries of all the query heads that share that KV head (3 × 8 for SmolLM2), instead
//!   of once per (token, head). On AVX-512 every tile is one token: the decode kernel
//!   ([`super::fast_decode_avx512`]) runs it, prefetching rows ahead (see below for why).
//!   Where that leaves fewer tiles than the pool can share evenly (a lone decode or
//!   verification has one tile per KV head), the tiles are cut by query head
//!   ([`split_by_head`]). On AVX2 an f16 cache's rows are read in place and widened in
//!   registers (`attention_f16_avx2`); elsewhere a tile widens its rows into a scratch copy.
//! - **SIMD.** The dot products and the V accumulation are written as fixed-width lane loops
//!   that LLVM vectorizes, compiled twice: for AVX-512/AVX2+FMA (chosen at run time) and for
//!   baseline x86-64.
//! - **The pool.** Tiles are chunks of [`crate::threads::global`]'s pool.
//!
//! **Batch invariance.** A query row's output is bit for bit the same however its sequence was
//! cut into chunks and whatever else is in the batch: a prefill in one chunk, in chunks of any
//! size, a suffix after a prefix-cache hit, a speculative verification chunk and a plain decode
//! all compute a row with the same arithmetic. Each row's scores are its own dot products, its
//! softmax and P·V run over its own visible keys only, and the path a row takes depends only on
//! the model's shape and the CPU (AVX-512: the decode kernel for every row; elsewhere the lane
//! loops below for every row). Without that, the same prompt sampled with the same seed gave
//! another text when it hit the prefix cache, and greedy speculation parted from plain decoding
//! (a shared tile once scored keys transposed, summing in another order; kernels/tests/
//! fast_attention.rs checks every row against its decode for chunks of 1 to 64 tokens).
//!
//! Softmax is exact (max-subtracted) over the visible keys of each query, as in the oracle; only
//! the summation order, the `exp` and the soft-cap's `tanh` differ (the vectorizable ones of
//! [`crate::vmath`], within a few ulp of libm's: libm's scalar call was the softmax's cost).
//!
//! Sliding windows: a tile reads only keys from its first query's window start on (the later
//! queries' window starts are masked inside the tile), so a windowed layer costs O(window) per
//! query whatever the context length, and the blocks before the window are never touched.

use crate::AttentionMetadata;
use crate::AttentionParams;
use crate::quant::Isa;
use crate::vmath::{LANES, sum_lanes};

use super::kv_dtype::{KvElem, KvFormat};

/// Query tokens per tile.
const Q_TILE: usize = 8;

#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub num_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl Dims {
    /// Where the K (or V) row of position `p` for KV head `kvh` starts in a cache laid out
    /// `[blocks, block_size, kv_heads, head_dim]`, through the sequence's block table.
    #[inline(always)]
    pub(super) fn kv_row_start(&self, table: &[u32], kvh: usize, p: usize) -> usize {
        let row_stride = self.kv_heads * self.head_dim;
        table[p / self.block_size] as usize * self.block_size * row_stride
            + (p % self.block_size) * row_stride
            + kvh * self.head_dim
    }
}

/// One unit of work: `q_len` query tokens of one sequence starting at batch row `row0`
/// (positions `pos0..pos0 + q_len`), for query heads `h0..h0 + heads` of KV head `kvh`'s group
/// (the whole group unless [`split_by_head`] cut it).
#[derive(Clone, Copy)]
pub(super) struct Tile {
    pub seq: usize,
    pub kvh: usize,
    pub row0: usize,
    pub pos0: usize,
    pub q_len: usize,
    pub h0: usize,
    pub heads: usize,
}

/// Below this many tiles per pool thread, tiles are cut into one per query head (see
/// [`split_by_head`]).
const SPLIT_BELOW_TILES_PER_THREAD: usize = 4;

/// A raw output pointer shared by tiles that write disjoint (token, head) rows.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// What every tile of one attention call shares: the queries `[T, heads, head_dim]`, the paged
/// caches, the batch's block tables and lengths, the shapes, and the output (each tile writes
/// only its own rows of it).
#[derive(Clone, Copy)]
pub(super) struct TileArgs<'a, T> {
    pub q: &'a [f32],
    pub k: &'a [T],
    pub v: &'a [T],
    pub meta: &'a AttentionMetadata,
    pub d: Dims,
    pub params: &'a AttentionParams,
    pub out: OutPtr,
}

/// `q: [T, heads, head_dim]` f32, caches `[blocks, block_size, kv_heads, head_dim]` of `T`.
pub(crate) fn paged_attention_fast<T: KvElem>(
    q: &[f32],
    k: &[T],
    v: &[T],
    meta: &AttentionMetadata,
    d: Dims,
    params: &AttentionParams,
) -> Vec<f32> {
    let isa = Isa::detect();
    // One home for the choice of path, so every row of a model takes the same one (see
    // "Batch invariance" above): on AVX-512 the decode kernel, one token per tile.
    let decode_kernel = decode_kernel_runs_every_row(isa, d);
    let tile_len = if decode_kernel { 1 } else { Q_TILE };
    let group = d.num_heads / d.kv_heads;
    let mut tiles = Vec::new();
    for s in 0..meta.num_seqs() {
        let start = meta.query_start_loc[s] as usize;
        let q_len = meta.query_start_loc[s + 1] as usize - start;
        let seq_len = meta.seq_lens[s] as usize;
        for kvh in 0..d.kv_heads {
            let mut i = 0;
            while i < q_len {
                let n = (q_len - i).min(tile_len);
                tiles.push(Tile {
                    seq: s,
                    kvh,
                    row0: start + i,
                    pos0: seq_len - q_len + i,
                    q_len: n,
                    h0: 0,
                    heads: group,
                });
                i += n;
            }
        }
    }
    let pool = crate::threads::global();
    if !decode_kernel
        && reads_cache_in_place::<T>(isa, d.head_dim)
        && tiles.len() < SPLIT_BELOW_TILES_PER_THREAD * pool.threads()
    {
        tiles = split_by_head(&tiles);
    }
    let mut out = vec![0f32; meta.num_tokens() * d.num_heads * d.head_dim];
    let args = TileArgs {
        q,
        k,
        v,
        meta,
        d,
        params,
        out: OutPtr(out.as_mut_ptr()),
    };
    pool.run(tiles.len(), &|i| {
        // SAFETY: tile `i` writes only rows (token in its range, head of its KV head group),
        // disjoint from every other tile's.
        unsafe { run_tile(isa, &args, tiles[i]) }
    });
    out
}

/// One tile per query head of each tile. A lone sequence has as many tiles as KV heads (3 for
/// SmolLM2), which 2 threads share 2:1; 9 one-head tiles share 5:4. A row's arithmetic does
/// not depend on its tile, so its bits do not change; what a tile loses is sharing its K and V
/// loads among the group's heads (they come from L1/L2 for the next head), so it is done only
/// where tiles are few and the tile reads the cache's rows in place (no widening pass per tile).
fn split_by_head(tiles: &[Tile]) -> Vec<Tile> {
    tiles
        .iter()
        .flat_map(|t| {
            (t.h0..t.h0 + t.heads).map(move |h| Tile {
                h0: h,
                heads: 1,
                ..*t
            })
        })
        .collect()
}

/// Whether a tile reads `T` rows straight from the cache: f32 always; f16 on AVX2 (widened in
/// registers by `attention_f16_avx2`) for the head dimensions it serves. Otherwise each tile
/// widens its K and V rows into a scratch copy first.
fn reads_cache_in_place<T: KvElem>(isa: Isa, head_dim: usize) -> bool {
    match T::FORMAT {
        KvFormat::F32 => true,
        KvFormat::F16 => f16_in_registers(isa, head_dim),
    }
}

/// Whether the AVX2 tile reads an f16 cache's rows in place.
fn f16_in_registers(isa: Isa, head_dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        return super::attention_f16_avx2::serves(head_dim);
    }
    let _ = (isa, head_dim);
    false
}

/// Whether the AVX-512 decode kernel computes every row of this model (then every tile is one
/// token); otherwise [`tile_generic`]'s lane loops do, in tiles of up to [`Q_TILE`] tokens.
fn decode_kernel_runs_every_row(isa: Isa, d: Dims) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        return super::fast_decode_avx512::handles(d);
    }
    let _ = (isa, d);
    false
}

unsafe fn run_tile<T: KvElem>(isa: Isa, args: &TileArgs<T>, tile: Tile) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        return unsafe { tile_avx512(args, tile) };
    } else if isa == Isa::Avx2 {
        return unsafe { tile_avx2(args, tile) };
    }
    unsafe { tile_generic(isa, args, tile) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn tile_avx512<T: KvElem>(args: &TileArgs<T>, tile: Tile) {
    let whole_group = tile.heads == args.d.num_heads / args.d.kv_heads;
    if tile.q_len == 1 && whole_group && super::fast_decode_avx512::handles(args.d) {
        return unsafe { super::fast_decode_avx512::decode_tile(args, tile) };
    }
    unsafe { tile_generic(Isa::Avx512Vnni, args, tile) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<T: KvElem>(args: &TileArgs<T>, tile: Tile) {
    unsafe { tile_generic(Isa::Avx2, args, tile) }
}

#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    sum_lanes(acc) + tail
}

/// [`dot`], through [`dot_avx2`] where the tile runs on AVX2 (the same bits, faster).
#[inline(always)]
fn score_dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: `Isa::Avx2` is only chosen on CPUs with AVX2 and FMA.
        return unsafe { dot_avx2(a, b) };
    }
    let _ = isa;
    dot(a, b)
}

/// [`dot`] bit for bit, with AVX2 intrinsics: lanes 0-7 and 8-15 of `dot`'s accumulator in two
/// registers, each product rounded before it is added (as `dot`'s `+=` of a product: no fused
/// multiply-add), then `sum_lanes`' halving tree (8, 4, 2, 1) and the same scalar tail. LLVM
/// vectorized `dot`'s lane loop into 128-bit pieces with scalar stores; this is what made the
/// scores a large share of an AVX2 prefill's attention (perf, 2026-12-05).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let full = n / LANES * LANES;
    let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
    unsafe {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < full {
            let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
            lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(pa), _mm256_loadu_ps(pb)));
            hi = _mm256_add_ps(
                hi,
                _mm256_mul_ps(_mm256_loadu_ps(pa.add(8)), _mm256_loadu_ps(pb.add(8))),
            );
            i += LANES;
        }
        halving_sum(lo, hi) + tail
    }
}

/// `sum_lanes` of a 16-lane accumulator held as lanes 0-7 (`lo`) and 8-15 (`hi`): the same
/// halving tree (8, 4, 2, 1), so every AVX2 score dot ends its sum in `dot`'s order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn halving_sum(
    lo: std::arch::x86_64::__m256,
    hi: std::arch::x86_64::__m256,
) -> f32 {
    use std::arch::x86_64::*;
    unsafe {
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
        _mm_cvtss_f32(s1)
    }
}

/// `acc += Σ_p weights[p] · rows[p]`, in 16-lane chunks of `acc` held in registers.
#[inline(always)]
pub(super) fn accumulate_rows(acc: &mut [f32], weights: &[f32], rows: &[&[f32]]) {
    let mut start = 0;
    while start < acc.len() {
        let width = (acc.len() - start).min(4 * LANES);
        if width == 4 * LANES {
            let mut a = [0f32; 4 * LANES];
            for (&w, row) in weights.iter().zip(rows) {
                let x = &row[start..start + 4 * LANES];
                for l in 0..4 * LANES {
                    a[l] += w * x[l];
                }
            }
            for (dst, x) in acc[start..start + 4 * LANES].iter_mut().zip(a) {
                *dst += x;
            }
        } else {
            for (&w, row) in weights.iter().zip(rows) {
                for (dst, x) in acc[start..start + width].iter_mut().zip(&row[start..]) {
                    *dst += w * x;
                }
            }
        }
        start += width;
    }
}

/// A tile's K or V rows: f32 slices (the cache's own, or widened into a scratch copy), or the
/// f16 cache's own rows that the AVX2 loops widen in registers.
enum KvRows<'a> {
    F32(Vec<&'a [f32]>),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    F16(Vec<&'a [half::f16]>),
}

#[inline(always)]
unsafe fn tile_generic<T: KvElem>(isa: Isa, args: &TileArgs<T>, tile: Tile) {
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
    // The tile's keys are positions lo..ctx: from its first query's window start (0 without a
    // window) to its last query. Tile-local key j is position lo + j.
    let lo = params.visible_keys(tile.pos0).start;
    let ctx = tile.pos0 + tile.q_len;
    let width = ctx - lo;
    let kv_row = |j: usize| -> std::ops::Range<usize> {
        let base = d.kv_row_start(table, tile.kvh, lo + j);
        base..base + hd
    };
    // Rows of (query token i, head h0 + h of the group): i * heads + h.
    let rows = tile.q_len * tile.heads;
    let head_of = |r: usize| tile.kvh * group + tile.h0 + r % tile.heads;
    let qrow =
        |r: usize| &q[((tile.row0 + r / tile.heads) * d.num_heads + head_of(r)) * hd..][..hd];
    // Row r's visible keys, tile-local.
    let visible = |r: usize| {
        let keys = params.visible_keys(tile.pos0 + r / tile.heads);
        keys.start - lo..keys.end - lo
    };
    // The tile's K and V rows: the cache's own rows when it is f32 (or f16 read in registers);
    // otherwise each row widened once into a scratch copy that every query row of the tile
    // then reads.
    let (mut k_wide, mut v_wide) = (Vec::new(), Vec::new());
    let (k_rows, v_rows) = if f16_in_registers(isa, hd) && T::FORMAT == KvFormat::F16 {
        (
            KvRows::F16(f16_rows(k, &kv_row, width)),
            KvRows::F16(f16_rows(v, &kv_row, width)),
        )
    } else {
        (
            KvRows::F32(rows_as_f32(k, &kv_row, width, hd, isa, &mut k_wide)),
            KvRows::F32(rows_as_f32(v, &kv_row, width, hd, isa, &mut v_wide)),
        )
    };
    let mut scores = vec![f32::NEG_INFINITY; rows * width];
    // One dot product per (key, row), each summed in the same order whatever the tile holds:
    // scoring 16 keys at once through transposed keys would save the horizontal sums but add
    // in another order, and a row must not depend on its tile (see "Batch invariance").
    let visible_of: Vec<std::ops::Range<usize>> = (0..rows).map(visible).collect();
    for j in 0..width {
        for (r, vis) in visible_of.iter().enumerate() {
            if vis.contains(&j) {
                let dot = match &k_rows {
                    KvRows::F32(k_rows) => score_dot(isa, qrow(r), k_rows[j]),
                    // SAFETY: f16 rows are only lent out on AVX2 (`f16_in_registers`).
                    #[cfg(target_arch = "x86_64")]
                    KvRows::F16(k_rows) => unsafe {
                        super::attention_f16_avx2::dot_f16(qrow(r), k_rows[j])
                    },
                    #[cfg(not(target_arch = "x86_64"))]
                    KvRows::F16(_) => unreachable!("f16 rows are read in place only on AVX2"),
                };
                scores[r * width + j] = dot * params.scale;
            }
        }
    }
    // Soft-cap and softmax over each row's visible keys only: a masked -inf must stay -inf
    // (tanh would turn it into -cap, a finite logit).
    let mut denom = vec![0f32; rows];
    for r in 0..rows {
        let vis = visible(r);
        let row = &mut scores[r * width + vis.start..r * width + vis.end];
        if let Some(cap) = params.soft_cap {
            crate::vmath::soft_cap(row, cap);
        }
        denom[r] = crate::vmath::softmax_numerators(row);
    }
    // P·V one query row at a time, so its accumulator stays in registers while the V rows
    // stream past (they stay in L1 from one row to the next).
    let mut acc = vec![0f32; rows * hd];
    for r in 0..rows {
        let vis = visible(r);
        let weights = &scores[r * width + vis.start..r * width + vis.end];
        let acc = &mut acc[r * hd..(r + 1) * hd];
        match &v_rows {
            KvRows::F32(v_rows) => accumulate_rows(acc, weights, &v_rows[vis.start..]),
            // SAFETY: as for the scores.
            #[cfg(target_arch = "x86_64")]
            KvRows::F16(v_rows) => unsafe {
                super::attention_f16_avx2::accumulate_rows_f16(acc, weights, &v_rows[vis.start..])
            },
            #[cfg(not(target_arch = "x86_64"))]
            KvRows::F16(_) => unreachable!("f16 rows are read in place only on AVX2"),
        }
    }
    for r in 0..rows {
        let dst = ((tile.row0 + r / tile.heads) * d.num_heads + head_of(r)) * hd;
        for (j, a) in acc[r * hd..(r + 1) * hd].iter().enumerate() {
            unsafe { *out.0.add(dst + j) = a / denom[r] };
        }
    }
}

/// Rows `0..width` of an f16 cache (at `kv_row(j)`), as they are.
fn f16_rows<'a, T: KvElem>(
    cache: &'a [T],
    kv_row: &impl Fn(usize) -> std::ops::Range<usize>,
    width: usize,
) -> Vec<&'a [half::f16]> {
    (0..width)
        .map(|j| T::as_f16(&cache[kv_row(j)]).expect("an f16 cache"))
        .collect()
}

/// Rows `0..width` of a cache (at `kv_row(j)`, `hd` long each) as f32 slices: borrowed from an
/// f32 cache, widened into `scratch` from any other.
fn rows_as_f32<'a, T: KvElem>(
    cache: &'a [T],
    kv_row: &impl Fn(usize) -> std::ops::Range<usize>,
    width: usize,
    hd: usize,
    isa: Isa,
    scratch: &'a mut Vec<f32>,
) -> Vec<&'a [f32]> {
    // Short-circuits on the first row of a cache that is not f32.
    if let Some(rows) = (0..width)
        .map(|j| T::as_f32(&cache[kv_row(j)]))
        .collect::<Option<Vec<_>>>()
    {
        return rows;
    }
    scratch.resize(width * hd, 0.0);
    for (j, dst) in scratch.chunks_exact_mut(hd).enumerate() {
        T::widen(&cache[kv_row(j)], dst, isa);
    }
    scratch.chunks_exact(hd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch invariance needs every row's scores summed one way: the AVX2 dot must equal the
    /// portable one bit for bit (lengths with and without a tail, signs mixed).
    #[test]
    fn avx2_dot_equals_the_lane_loop_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::detect() == Isa::Scalar {
                eprintln!("skipped: this CPU has no AVX2");
                return;
            }
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            };
            for n in [1, 7, 16, 17, 31, 32, 48, 64, 80, 96, 128, 200, 256] {
                for _ in 0..50 {
                    let a: Vec<f32> = (0..n).map(|_| next()).collect();
                    let b: Vec<f32> = (0..n).map(|_| next()).collect();
                    // SAFETY: AVX2 checked above.
                    let fast = unsafe { dot_avx2(&a, &b) };
                    assert_eq!(fast.to_bits(), dot(&a, &b).to_bits(), "length {n}");
                }
            }
        }
    }
}
