//! The fast CPU paged attention (f32), which the engine runs; [`super::paged_attention`] stays
//! the readable oracle it is tested against (kernels/tests/fast_attention.rs).
//!
//! Three things make it fast where the oracle is slow:
//! - **GQA sharing.** Work is split by (sequence, KV head, tile of up to [`Q_TILE`] query
//!   tokens); every K and V row loaded is used by all the tile's queries of all the query heads
//!   that share that KV head (3 × 8 for SmolLM2), instead of once per (token, head).
//! - **SIMD.** The dot products and the V accumulation are written as fixed-width lane loops
//!   that LLVM vectorizes, compiled twice: for AVX-512/AVX2+FMA (chosen at run time) and for
//!   baseline x86-64.
//! - **The pool.** Tiles are chunks of [`crate::threads::global`]'s pool.
//!
//! Softmax is exact (max-subtracted) over the whole causal context of each query, as in the
//! oracle; only the summation order differs.

use crate::AttentionMetadata;
use crate::quant::Isa;

/// Query tokens per tile.
const Q_TILE: usize = 8;

#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub num_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

/// One unit of work: `q_len` query tokens of one sequence starting at batch row `row0`
/// (positions `pos0..pos0 + q_len`), for the query heads of KV head `kvh`.
#[derive(Clone, Copy)]
struct Tile {
    seq: usize,
    kvh: usize,
    row0: usize,
    pos0: usize,
    q_len: usize,
}

/// A raw output pointer shared by tiles that write disjoint (token, head) rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `q: [T, heads, head_dim]`, caches `[blocks, block_size, kv_heads, head_dim]`, all f32.
pub(crate) fn paged_attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    meta: &AttentionMetadata,
    d: Dims,
    scale: f32,
) -> Vec<f32> {
    let mut tiles = Vec::new();
    for s in 0..meta.num_seqs() {
        let start = meta.query_start_loc[s] as usize;
        let q_len = meta.query_start_loc[s + 1] as usize - start;
        let seq_len = meta.seq_lens[s] as usize;
        for kvh in 0..d.kv_heads {
            let mut i = 0;
            while i < q_len {
                let n = (q_len - i).min(Q_TILE);
                tiles.push(Tile {
                    seq: s,
                    kvh,
                    row0: start + i,
                    pos0: seq_len - q_len + i,
                    q_len: n,
                });
                i += n;
            }
        }
    }
    let mut out = vec![0f32; meta.num_tokens() * d.num_heads * d.head_dim];
    let ptr = OutPtr(out.as_mut_ptr());
    let isa = Isa::detect();
    crate::threads::global().run(tiles.len(), &|i| {
        let tile = tiles[i];
        // SAFETY: tile `i` writes only rows (token in its range, head of its KV head group),
        // disjoint from every other tile's.
        unsafe { run_tile(isa, q, k, v, meta, d, scale, tile, ptr) }
    });
    out
}

#[allow(clippy::too_many_arguments)]
unsafe fn run_tile(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    meta: &AttentionMetadata,
    d: Dims,
    scale: f32,
    tile: Tile,
    out: OutPtr,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        return unsafe { tile_avx512(q, k, v, meta, d, scale, tile, out) };
    } else if isa == Isa::Avx2 {
        return unsafe { tile_avx2(q, k, v, meta, d, scale, tile, out) };
    }
    let _ = isa;
    unsafe { tile_generic(q, k, v, meta, d, scale, tile, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    meta: &AttentionMetadata,
    d: Dims,
    scale: f32,
    tile: Tile,
    out: OutPtr,
) {
    unsafe { tile_generic(q, k, v, meta, d, scale, tile, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    meta: &AttentionMetadata,
    d: Dims,
    scale: f32,
    tile: Tile,
    out: OutPtr,
) {
    unsafe { tile_generic(q, k, v, meta, d, scale, tile, out) }
}

/// Lanes of the vectorizable loops: 16 f32 = one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
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
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
    for (a, x) in acc.iter_mut().zip(x) {
        *a += w * x;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_generic(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    meta: &AttentionMetadata,
    d: Dims,
    scale: f32,
    tile: Tile,
    out: OutPtr,
) {
    let group = d.num_heads / d.kv_heads;
    let hd = d.head_dim;
    let row_stride = d.kv_heads * hd;
    let block_stride = d.block_size * row_stride;
    let table = &meta.block_tables[tile.seq];
    let ctx = tile.pos0 + tile.q_len;
    let kv_row = |p: usize| -> std::ops::Range<usize> {
        let base = table[p / d.block_size] as usize * block_stride
            + (p % d.block_size) * row_stride
            + tile.kvh * hd;
        base..base + hd
    };
    // Rows of (query token i, head h in the group): i * group + h.
    let rows = tile.q_len * group;
    let qrow = |r: usize| {
        let (i, h) = (r / group, tile.kvh * group + r % group);
        &q[((tile.row0 + i) * d.num_heads + h) * hd..][..hd]
    };
    let mut scores = vec![f32::NEG_INFINITY; rows * ctx];
    for p in 0..ctx {
        let krow = &k[kv_row(p)];
        for r in 0..rows {
            // Causal: query token i sits at position pos0 + i.
            if p <= tile.pos0 + r / group {
                scores[r * ctx + p] = dot(qrow(r), krow) * scale;
            }
        }
    }
    let mut denom = vec![0f32; rows];
    for r in 0..rows {
        let row = &mut scores[r * ctx..(r + 1) * ctx];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        denom[r] = sum;
    }
    let mut acc = vec![0f32; rows * hd];
    for p in 0..ctx {
        let vrow = &v[kv_row(p)];
        for r in 0..rows {
            let w = scores[r * ctx + p];
            if w != 0.0 {
                axpy(&mut acc[r * hd..(r + 1) * hd], w, vrow);
            }
        }
    }
    for r in 0..rows {
        let (i, h) = (r / group, tile.kvh * group + r % group);
        let dst = ((tile.row0 + i) * d.num_heads + h) * hd;
        for (j, a) in acc[r * hd..(r + 1) * hd].iter().enumerate() {
            unsafe { *out.0.add(dst + j) = a / denom[r] };
        }
    }
}
