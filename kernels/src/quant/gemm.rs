//! The threaded driver: quantize the activations, then hand out the weight rows in chunks of
//! [`ROW_BLOCK`] to the pool's threads. A chunk runs every group of up to 4 tokens (8 for the
//! per-row k-quants) over its rows, so the chunk's weights stay in L1 while all tokens pass
//! over them: weights are read from memory once per step, whatever the batch.

use std::cell::RefCell;

use super::activations::{ActRow, KActRow, Q8Activations};
use super::formats::{KQuant, Packed};
use super::interleaved::GROUP;
use super::{Isa, QuantMatrix, kquant, scalar};
use crate::threads::{ThreadPool, split_range};

/// Weight rows per cache block (16 rows of 4096 Q4 values = 36 KiB).
const ROW_BLOCK: usize = 16;
/// Activation rows per tile of the interleaved (AVX-512) and grouped (AVX2) 32-value layouts.
const TILE_TOKENS: usize = 4;
/// Activation rows per tile of the per-row k-quant layout (AVX2, scalar): each super-block's
/// unpacked nibbles and scales meet 8 tokens before the next row. The 32-value formats keep
/// [`TILE_TOKENS`]. quant_bench 8192x2048 at 512 tokens, Zen 3, 2 threads, quiet,
/// alternating: 4 -> 8 tokens Q4_K 146-156 -> 175-184, Q6_K 144 -> 180-190 GFLOP/s; Q8_0 124
/// -> 117, Q4_1 108 -> 108-113 (hence 4 there); 4 -> 2 cost 10-30% everywhere.
const K_ROW_TILE_TOKENS: usize = 8;
/// Chunks per thread a matmul is cut into: enough that a thread slowed by another process
/// leaves work for the others to take, few enough that claiming them (one contended atomic
/// each, ~100 ns across cores) stays negligible. One chunk per 16-row group made a decode step
/// claim ~13k chunks.
const CHUNKS_PER_THREAD: usize = 8;

fn chunk_count(units: usize, threads: usize) -> usize {
    units.min(threads * CHUNKS_PER_THREAD).max(1)
}

/// Activation rows per quantization chunk.
const QUANTIZE_CHUNK_TOKENS: usize = 8;
/// Below this many tokens the caller quantizes the activations alone (no thread hand-off).
const PARALLEL_QUANTIZE_TOKENS: usize = 8;

/// What the unsigned weight bytes of one row are made from.
#[derive(Clone, Copy)]
pub(crate) enum RowBytes<'a> {
    /// Q4_0/Q4_1: 16 bytes per block, ggml nibble order.
    Nibbles(&'a [u8]),
    /// Q8_0: 32 signed bytes per block.
    Bytes(&'a [i8]),
}

/// How a block's offset term is formed: `Min` = Q4_1's f16 mins, else `−k·d`.
#[derive(Clone, Copy)]
pub(crate) enum Offset<'a> {
    Min(&'a [u16]),
    TimesScale(f32),
}

/// One weight row of a per-row 32-value layout (Q4_0, Q4_1, Q8_0), as the kernels read it.
#[derive(Clone, Copy)]
pub(crate) struct WeightRow<'a> {
    pub scales: &'a [u16],
    pub offset: Offset<'a>,
    pub bytes: RowBytes<'a>,
    /// The bytes are in the AVX2 layout of `block_groups`, not in ggml's block order.
    pub grouped: bool,
}

impl<'a> WeightRow<'a> {
    /// Row `r` of `w`; `None` for the layouts that are not per-row 32-value blocks.
    fn of(w: &'a QuantMatrix, r: usize) -> Option<Self> {
        let nb = w.cols / 32;
        let blocks = r * nb..(r + 1) * nb;
        let grouped = matches!(w.packed, Packed::NibblesG8 { .. } | Packed::BytesG8 { .. });
        match &w.packed {
            Packed::Nibbles { scales, mins, qs } | Packed::NibblesG8 { scales, mins, qs } => {
                Some(WeightRow {
                    grouped,
                    scales: &scales[blocks.clone()],
                    offset: mins
                        .as_ref()
                        .map_or(Offset::TimesScale(8.0), |m| Offset::Min(&m[blocks])),
                    bytes: RowBytes::Nibbles(&qs[r * nb * 16..(r + 1) * nb * 16]),
                })
            }
            Packed::Bytes { scales, qs } | Packed::BytesG8 { scales, qs } => Some(WeightRow {
                grouped,
                scales: &scales[blocks],
                offset: Offset::TimesScale(128.0),
                bytes: RowBytes::Bytes(&qs[r * nb * 32..(r + 1) * nb * 32]),
            }),
            _ => None,
        }
    }
}

/// A raw pointer the pool's threads may share; each writes a disjoint part.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

thread_local! {
    /// The quantized activations of the current matmul, reused across calls.
    static ACTIVATIONS: RefCell<Q8Activations> = RefCell::default();
}

pub(super) fn matmul(
    w: &QuantMatrix,
    pool: &ThreadPool,
    x: &[f32],
    tokens: usize,
    out: &mut [f32],
) {
    let isa = w.isa;
    ACTIVATIONS.with_borrow_mut(|acts| {
        quantize(acts, isa, pool, x, tokens, w);
        let acts = &*acts;
        let out = SharedMut(out.as_mut_ptr());
        if let Packed::NibblesX16 { .. } | Packed::BytesX16 { .. } | Packed::SuperX16 { .. } =
            w.packed
        {
            let groups = w.rows.div_ceil(GROUP);
            let chunks = chunk_count(groups, pool.threads());
            pool.run(chunks, &|chunk| {
                for group in split_range(groups, chunk, chunks, 1) {
                    // SAFETY: each group writes only its own 16 output columns.
                    unsafe { multiply_group(w, acts, tokens, group, out) };
                }
            });
            return;
        }
        let blocks = w.rows.div_ceil(ROW_BLOCK);
        let chunks = chunk_count(blocks, pool.threads());
        pool.run(chunks, &|chunk| {
            let blocks = split_range(blocks, chunk, chunks, 1);
            let rows = blocks.start * ROW_BLOCK..(blocks.end * ROW_BLOCK).min(w.rows);
            // SAFETY: each chunk writes only columns `rows` of each output row.
            unsafe { multiply_rows(w, isa, acts, tokens, rows, out) };
        });
    });
}

fn quantize(
    acts: &mut Q8Activations,
    isa: Isa,
    pool: &ThreadPool,
    x: &[f32],
    tokens: usize,
    w: &QuantMatrix,
) {
    match w.packed {
        Packed::Super { .. } | Packed::SuperX16 { .. } => acts.resize_k(tokens, w.cols, false),
        Packed::Q4KG8 { .. } => acts.resize_k(tokens, w.cols, true),
        Packed::NibblesG8 { .. } | Packed::BytesG8 { .. } => acts.resize(tokens, w.cols, true),
        _ => acts.resize(tokens, w.cols, false),
    }
    if tokens < PARALLEL_QUANTIZE_TOKENS || pool.threads() == 1 {
        acts.quantize_rows(x, 0..tokens, isa);
        return;
    }
    let parts = acts.raw_parts();
    let chunks = tokens.div_ceil(QUANTIZE_CHUNK_TOKENS);
    pool.run(chunks, &|chunk| {
        let rows = chunk * QUANTIZE_CHUNK_TOKENS..((chunk + 1) * QUANTIZE_CHUNK_TOKENS).min(tokens);
        // SAFETY: each chunk quantizes a disjoint range of rows of the sized buffers.
        unsafe { parts.quantize_rows(x, rows, isa) };
    });
}

unsafe fn multiply_rows(
    w: &QuantMatrix,
    isa: Isa,
    acts: &Q8Activations,
    tokens: usize,
    rows: std::ops::Range<usize>,
    out: SharedMut<f32>,
) {
    let tile_tokens = match w.packed {
        Packed::Super { .. } | Packed::Q4KG8 { .. } => K_ROW_TILE_TOKENS,
        _ => TILE_TOKENS,
    };
    let mut block_start = rows.start;
    while block_start < rows.end {
        let block = block_start..(block_start + ROW_BLOCK).min(rows.end);
        let mut t0 = 0;
        while t0 < tokens {
            let c = (tokens - t0).min(tile_tokens);
            let block = block.clone();
            // SAFETY: the caller's rows are this chunk's own output columns.
            unsafe {
                match c {
                    1 => rows_tile::<1>(w, isa, block, acts, t0, out),
                    2 => rows_tile::<2>(w, isa, block, acts, t0, out),
                    3 => rows_tile::<3>(w, isa, block, acts, t0, out),
                    4 => rows_tile::<4>(w, isa, block, acts, t0, out),
                    5 => rows_tile::<5>(w, isa, block, acts, t0, out),
                    6 => rows_tile::<6>(w, isa, block, acts, t0, out),
                    7 => rows_tile::<7>(w, isa, block, acts, t0, out),
                    _ => rows_tile::<8>(w, isa, block, acts, t0, out),
                }
            }
            t0 += c;
        }
        block_start = block.end;
    }
}

/// Interleaved group `g` (rows `16g..16g + 16`) against every token, 4 at a time.
unsafe fn multiply_group(
    w: &QuantMatrix,
    acts: &Q8Activations,
    tokens: usize,
    g: usize,
    out: SharedMut<f32>,
) {
    let valid = GROUP.min(w.rows - g * GROUP);
    let mut t0 = 0;
    while t0 < tokens {
        let c = (tokens - t0).min(TILE_TOKENS);
        let mut y = [[0f32; GROUP]; TILE_TOKENS];
        match c {
            1 => group_tile::<1>(w, g, acts, t0, &mut y),
            2 => group_tile::<2>(w, g, acts, t0, &mut y),
            3 => group_tile::<3>(w, g, acts, t0, &mut y),
            _ => group_tile::<4>(w, g, acts, t0, &mut y),
        }
        for (k, row) in y[..c].iter().enumerate() {
            let dst = (t0 + k) * w.rows + g * GROUP;
            for (j, &v) in row[..valid].iter().enumerate() {
                unsafe { *out.0.add(dst + j) = v };
            }
        }
        t0 += c;
    }
}

#[allow(unused_variables)]
fn group_tile<const C: usize>(
    w: &QuantMatrix,
    g: usize,
    acts: &Q8Activations,
    t0: usize,
    y: &mut [[f32; GROUP]; TILE_TOKENS],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::avx512_x16::{GroupBytes, group_tile as kernel};
        if let Packed::SuperX16 { kind, data } = &w.packed {
            let nsb = w.cols / 256;
            let size = nsb * GROUP * w.ty.block_bytes();
            let chunks = &data[g * size..(g + 1) * size];
            let rows: [KActRow; C] = std::array::from_fn(|c| acts.row_k(t0 + c));
            let mut out = [[0f32; GROUP]; C];
            // SAFETY: interleaved layouts are only built for `Isa::Avx512Vnni`.
            unsafe {
                match kind {
                    KQuant::Q4 => super::avx512_k::q45k_group::<C, false>(chunks, rows, &mut out),
                    KQuant::Q5 => super::avx512_k::q45k_group::<C, true>(chunks, rows, &mut out),
                    KQuant::Q6 => super::avx512_k::q6k_group::<C>(chunks, rows, &mut out),
                }
            }
            y[..C].copy_from_slice(&out);
            return;
        }
        let nb = w.cols / 32;
        let span = g * nb * GROUP..(g + 1) * nb * GROUP;
        let rows: [ActRow; C] = std::array::from_fn(|c| acts.row(t0 + c));
        let mut out = [[0f32; GROUP]; C];
        // SAFETY: interleaved layouts are only built for `Isa::Avx512Vnni`, on CPUs that have it.
        unsafe {
            match &w.packed {
                Packed::NibblesX16 { scales, mins, qs } => {
                    let mins = mins.as_ref().map(|m| &m[span.clone()]);
                    let bytes = GroupBytes::Nibbles(&qs[g * nb * 256..(g + 1) * nb * 256]);
                    kernel::<C>(&scales[span], mins, 8.0, bytes, rows, &mut out);
                }
                Packed::BytesX16 { scales, qs } => {
                    let bytes = GroupBytes::Bytes(&qs[g * nb * 512..(g + 1) * nb * 512]);
                    kernel::<C>(&scales[span], None, 128.0, bytes, rows, &mut out);
                }
                _ => return,
            }
        }
        y[..C].copy_from_slice(&out);
    }
}

/// Weight rows `rows` against activation rows `t0..t0 + C`, into `out[t0 + c][r]`. The
/// activation rows' slices are made once per tile and lent to each row's kernel: building
/// and copying them per row (4 slices per token, by value) was a fifth of a small model's
/// prefill (perf of bench_forward on the default model, 2026-12-05).
unsafe fn rows_tile<const C: usize>(
    w: &QuantMatrix,
    isa: Isa,
    rows: std::ops::Range<usize>,
    acts: &Q8Activations,
    t0: usize,
    out: SharedMut<f32>,
) {
    let store = |r: usize, y: &[f32; C]| {
        for (c, &v) in y.iter().enumerate() {
            // SAFETY: `r` is one of the caller's output columns.
            unsafe { *out.0.add((t0 + c) * w.rows + r) = v };
        }
    };
    if let Packed::Q4KG8 { data } = &w.packed {
        let row_bytes = w.cols / 256 * w.ty.block_bytes();
        let act_rows: [KActRow; C] = std::array::from_fn(|c| acts.row_k(t0 + c));
        for r in rows {
            let mut y = [0f32; C];
            // SAFETY: the grouped layout is only built for `Isa::Avx2`, on CPUs that have it.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                super::avx2_k::q4k_grouped_row::<C>(
                    &data[r * row_bytes..(r + 1) * row_bytes],
                    &act_rows,
                    &mut y,
                )
            };
            store(r, &y);
        }
        return;
    }
    if let Packed::Super { kind, data } = &w.packed {
        let row_bytes = w.cols / 256 * w.ty.block_bytes();
        let act_rows: [KActRow; C] = std::array::from_fn(|c| acts.row_k(t0 + c));
        for r in rows {
            let row = &data[r * row_bytes..(r + 1) * row_bytes];
            let mut y = [0f32; C];
            // The AVX-512 path interleaves every k-quant (`multiply_group`); AVX2 reads rows.
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` is only used on CPUs that have AVX2, FMA and F16C.
                Isa::Avx2 => unsafe {
                    use super::avx2_k::{q6k_row, q45k_row};
                    match kind {
                        KQuant::Q4 => q45k_row::<C, false>(row, &act_rows, &mut y),
                        KQuant::Q5 => q45k_row::<C, true>(row, &act_rows, &mut y),
                        KQuant::Q6 => q6k_row::<C>(row, &act_rows, &mut y),
                    }
                },
                _ => kquant::dot_super::<C>(*kind, row, &act_rows, &mut y),
            }
            store(r, &y);
        }
        return;
    }
    let act_rows: [ActRow; C] = std::array::from_fn(|c| acts.row(t0 + c));
    let mut r = rows.start;
    while r < rows.end {
        let Some(row) = WeightRow::of(w, r) else {
            // Interleaved layouts go through `multiply_group`.
            return;
        };
        // The layout picks the kernel: the grouped one is built only for `Isa::Avx2`.
        match (row.grouped, isa) {
            #[cfg(target_arch = "x86_64")]
            (true, _)
                if C == TILE_TOKENS
                    && matches!(row.bytes, RowBytes::Bytes(_))
                    && r + 1 < rows.end =>
            {
                // Q8_0 in full tiles: two rows per call, each activation load and sign serves
                // both (quant_bench 8192x2048, 512 tokens, Zen 3: 157 -> 200 GFLOP/s). Not for
                // short tiles (decode), where the matmul streams weights from memory and two
                // rows' streams at once read slower (49152x2048, 1 token: 27 -> 17 GB/s); nor
                // for the nibble formats, which gain nothing from it.
                let pair = [row, WeightRow::of(w, r + 1).unwrap_or(row)];
                let mut y = [[0f32; C]; 2];
                // SAFETY: grouped layouts exist only for `Isa::Avx2`, on CPUs that have it.
                unsafe { super::avx2::tile::<2, C>(&pair, &act_rows, &mut y) };
                store(r, &y[0]);
                store(r + 1, &y[1]);
                r += 2;
            }
            #[cfg(target_arch = "x86_64")]
            (true, _) => {
                let mut y = [[0f32; C]; 1];
                // SAFETY: as above.
                unsafe { super::avx2::tile::<1, C>(&[row], &act_rows, &mut y) };
                store(r, &y[0]);
                r += 1;
            }
            #[cfg(target_arch = "x86_64")]
            (false, Isa::Avx512Vnni) => {
                let mut y = [0f32; C];
                // SAFETY: `matmul_with` accepts only ISAs in `Isa::supported()`.
                unsafe {
                    super::avx512::tile::<C>(row.scales, row.offset, row.bytes, &act_rows, &mut y)
                };
                store(r, &y);
                r += 1;
            }
            _ => {
                let mut y = [0f32; C];
                for c in 0..C {
                    y[c] = match row.bytes {
                        RowBytes::Nibbles(qs) => {
                            let mins = match row.offset {
                                Offset::Min(m) => Some(m),
                                Offset::TimesScale(_) => None,
                            };
                            scalar::dot_nibbles(row.scales, mins, qs, act_rows[c])
                        }
                        RowBytes::Bytes(qs) => scalar::dot_bytes(row.scales, qs, act_rows[c]),
                    };
                }
                store(r, &y);
                r += 1;
            }
        }
    }
}
