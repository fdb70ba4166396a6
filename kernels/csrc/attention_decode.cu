// Paged attention, one query token per CTA row of the grid ("decode" kernel, also the fallback
// for any token when the prefill kernel does not apply). GQA-aware: one CTA serves up to GMAX
// query heads of one KV head, so each K/V row is read once for all of them. Split-KV
// (flash-decoding): grid.z cuts the context into partitions; each CTA writes an unnormalized
// partial (acc, max, sum) and `paged_decode_reduce_*` merges them. With one split the CTA writes
// the final output directly.
//
// Layout: q/out [tokens, Hq, D]; caches [num_blocks, block_size, Hkv, D]; token p of sequence s
// lives in block block_tables[s * bt_stride + p / block_size], row p % block_size.
// Softmax runs in base 2: q is pre-scaled by softmax_scale * log2(e), so exp2 gives e^(scale*qk).
// Soft-capping (Gemma 2) in that domain: cap*tanh(s/cap) * log2(e) = c2*tanh(s*log2(e)/c2) with
// c2 = cap * log2(e), so the host passes soft_cap_log2 = c2 (0 = off).
// Sliding window (window > 0): a token at position p reads only keys max(0, p+1-window)..=p; the
// splits partition that range, so keys before the window are never loaded.
//
// Threads: 4 warps. A warp takes TPW tokens at a time, LPT lanes per token, each lane holding
// NV 16-byte vectors (EPL elements) of the token's K and V row. Per chunk of UNROLL tokens a lane
// group keeps a running max m, sum l and accumulator acc per head (online softmax), rescaled once
// per chunk. At the end token groups merge by shuffles, warps through shared memory.
#include "common.cuh"

constexpr int DECODE_WARPS = 4;
constexpr float NEG_INF = -__builtin_huge_valf();

struct DecodeArgs {
  const uint32_t *block_tables;
  const uint32_t *seq_lens;
  const uint32_t *query_start_loc;
  const uint32_t *token_seqs;
  const uint32_t *items;  // token of each grid.x item when use_items, else item == token
  uint32_t use_items;
  uint32_t num_heads, num_kv_heads, block_size, bt_stride;
  uint32_t partition_len, num_splits;
  float scale_log2;
  uint32_t window;      // 0 = full causal
  float soft_cap_log2;  // 0 = off
};

// The first key a query at position `pos` sees: max(0, pos + 1 - window), 0 without a window.
__device__ __forceinline__ uint32_t window_start(uint32_t pos, uint32_t window) {
  return (window != 0 && pos + 1 > window) ? pos + 1 - window : 0;
}

// Merges (m_b, l_b, acc_b) into (m, l, acc); either side may be empty (m = -inf, l = 0).
__device__ __forceinline__ void merge_weights(float m, float m_b, float &wa, float &wb, float &mn) {
  mn = fmaxf(m, m_b);
  wa = m == NEG_INF ? 0.f : exp2f(m - mn);
  wb = m_b == NEG_INF ? 0.f : exp2f(m_b - mn);
}

template <typename T, int D, int GMAX>
__device__ __forceinline__ void paged_decode(T *__restrict__ out, float *__restrict__ part_acc,
                                             float *__restrict__ part_ml, const T *__restrict__ q,
                                             const T *__restrict__ k_cache,
                                             const T *__restrict__ v_cache, const DecodeArgs &a) {
  constexpr int VEC = Vec16<T>::N;            // elements per 16-byte vector
  constexpr int VPD = D / VEC;                // vectors per head row
  constexpr int LPT = VPD < 32 ? VPD : 32;    // lanes per token
  constexpr int NV = VPD / LPT;               // vectors per lane
  constexpr int EPL = NV * VEC;               // elements per lane
  constexpr int TPW = 32 / LPT;               // tokens per warp step
  constexpr int UNROLL = GMAX >= 8 ? 2 : 4;  // warp steps per chunk
  constexpr int CHUNK = TPW * UNROLL;         // tokens per warp per iteration
  static_assert(VPD % LPT == 0 && 32 % LPT == 0, "head dim must be 64, 128 or 256");

  __shared__ float s_acc[DECODE_WARPS][GMAX][D];
  __shared__ float s_m[DECODE_WARPS][GMAX];
  __shared__ float s_l[DECODE_WARPS][GMAX];

  const uint32_t item = blockIdx.x;
  const uint32_t token = a.use_items ? a.items[item] : item;
  const uint32_t seq = a.token_seqs[token];
  const uint32_t q_begin = a.query_start_loc[seq];
  const uint32_t q_len = a.query_start_loc[seq + 1] - q_begin;
  const uint32_t ctx = a.seq_lens[seq] - q_len + (token - q_begin) + 1;  // keys ..=position
  const uint32_t kv_start = window_start(ctx - 1, a.window);            // first visible key

  const uint32_t group = a.num_heads / a.num_kv_heads;
  const uint32_t head_tiles = (group + GMAX - 1) / GMAX;
  const uint32_t kv_head = blockIdx.y / head_tiles;
  const uint32_t tile = blockIdx.y % head_tiles;
  const uint32_t head0 = kv_head * group + tile * GMAX;
  const int heads_here = min((int)GMAX, (int)(group - tile * GMAX));

  const uint32_t split = blockIdx.z;
  const uint32_t start = kv_start + split * a.partition_len;
  if (start >= ctx) return;  // whole CTA: this split is past the token's visible keys
  const uint32_t end = min(ctx, start + a.partition_len);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tg = lane / LPT, sl = lane % LPT;

  // This lane's query slices, pre-scaled into the base-2 softmax domain.
  float qf[GMAX][EPL];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      float tmp[VEC];
      if (g < heads_here) {
        const T *qrow = q + ((size_t)token * a.num_heads + head0 + g) * D;
        unpack_vec<T>(reinterpret_cast<const uint4 *>(qrow)[j * LPT + sl], tmp);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) tmp[e] = 0.f;
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) qf[g][j * VEC + e] = tmp[e] * a.scale_log2;
    }
  }

  float m[GMAX], l[GMAX], acc[GMAX][EPL];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    m[g] = NEG_INF;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[g][e] = 0.f;
  }

  const size_t row_stride = (size_t)a.num_kv_heads * D;  // elements between cache rows
  const uint32_t *table = a.block_tables + (size_t)seq * a.bt_stride;
  // Issues the K/V loads of the chunk at `base` (zeros past `end`).
  auto load_chunk = [&](uint32_t base, uint4 (&kb)[UNROLL][NV], uint4 (&vb)[UNROLL][NV]) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const uint32_t p = base + u * TPW + tg;
      if (p < end) {
        const uint32_t block = table[p / a.block_size];
        const size_t off = ((size_t)block * a.block_size + p % a.block_size) * row_stride +
                           (size_t)kv_head * D;
        const uint4 *krow = reinterpret_cast<const uint4 *>(k_cache + off);
        const uint4 *vrow = reinterpret_cast<const uint4 *>(v_cache + off);
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          kb[u][j] = krow[j * LPT + sl];
          vb[u][j] = vrow[j * LPT + sl];
        }
      } else {
#pragma unroll
        for (int j = 0; j < NV; ++j) kb[u][j] = vb[u][j] = make_uint4(0, 0, 0, 0);
      }
    }
  };

  // One chunk of loads per iteration, all issued before any use. (A register double buffer
  // that prefetched the next chunk measured 10-25% slower on the H100: fewer loads in flight
  // per register, and fewer resident CTAs.)
  constexpr uint32_t STRIDE = DECODE_WARPS * CHUNK;
  for (uint32_t base = start + warp * CHUNK; base < end; base += STRIDE) {
    uint4 kv[UNROLL][NV], vv[UNROLL][NV];
    load_chunk(base, kv, vv);
    bool valid[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) valid[u] = base + u * TPW + tg < end;
    // Scores: partial dots over this lane's elements, summed over the LPT lanes of the token.
    float sc[UNROLL][GMAX];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      float kf[EPL];
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        float tmp[VEC];
        unpack_vec<T>(kv[u][j], tmp);
#pragma unroll
        for (int e = 0; e < VEC; ++e) kf[j * VEC + e] = tmp[e];
      }
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) dot += qf[g][e] * kf[e];
#pragma unroll
        for (int o = LPT / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (a.soft_cap_log2 > 0.f) dot = a.soft_cap_log2 * tanhf(dot / a.soft_cap_log2);
        sc[u][g] = dot;
      }
    }
    // Online softmax update, once per chunk, then accumulate p * V.
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      float chunk_max = NEG_INF;
#pragma unroll
      for (int u = 0; u < UNROLL; ++u)
        if (valid[u]) chunk_max = fmaxf(chunk_max, sc[u][g]);
      const float mn = fmaxf(m[g], chunk_max);
      const float alpha = m[g] == NEG_INF ? 0.f : exp2f(m[g] - mn);
      m[g] = mn;
      l[g] *= alpha;
#pragma unroll
      for (int e = 0; e < EPL; ++e) acc[g][e] *= alpha;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      float vf[EPL];
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        float tmp[VEC];
        unpack_vec<T>(vv[u][j], tmp);
#pragma unroll
        for (int e = 0; e < VEC; ++e) vf[j * VEC + e] = tmp[e];
      }
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        const float p = valid[u] ? exp2f(sc[u][g] - m[g]) : 0.f;
        l[g] += p;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[g][e] += p * vf[e];
      }
    }
  }

  // Merge the token groups of this warp (butterfly: every group ends with the warp's total).
#pragma unroll
  for (int o = LPT; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      const float m_b = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float l_b = __shfl_xor_sync(0xffffffffu, l[g], o);
      float wa, wb, mn;
      merge_weights(m[g], m_b, wa, wb, mn);
      m[g] = mn;
      l[g] = l[g] * wa + l_b * wb;
#pragma unroll
      for (int e = 0; e < EPL; ++e) {
        const float acc_b = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        acc[g][e] = acc[g][e] * wa + acc_b * wb;
      }
    }
  }
  if (tg == 0) {
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
#pragma unroll
      for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) s_acc[warp][g][(j * LPT + sl) * VEC + e] = acc[g][j * VEC + e];
      if (sl == 0) {
        s_m[warp][g] = m[g];
        s_l[warp][g] = l[g];
      }
    }
  }
  __syncthreads();

  // Merge the warps; one thread per (head, element).
  for (int idx = threadIdx.x; idx < heads_here * D; idx += blockDim.x) {
    const int g = idx / D, e = idx % D;
    float mx = NEG_INF;
#pragma unroll
    for (int w = 0; w < DECODE_WARPS; ++w) mx = fmaxf(mx, s_m[w][g]);
    float sum = 0.f, total = 0.f;
#pragma unroll
    for (int w = 0; w < DECODE_WARPS; ++w) {
      const float f = s_m[w][g] == NEG_INF ? 0.f : exp2f(s_m[w][g] - mx);
      sum += s_l[w][g] * f;
      total += s_acc[w][g][e] * f;
    }
    const uint32_t head = head0 + g;
    if (a.num_splits == 1) {
      out[((size_t)token * a.num_heads + head) * D + e] = from_float<T>(total / sum);
    } else {
      const size_t slot = ((size_t)item * a.num_heads + head) * a.num_splits + split;
      part_acc[slot * D + e] = total;
      if (e == 0) {
        part_ml[slot * 2] = mx;
        part_ml[slot * 2 + 1] = sum;
      }
    }
  }
}

// Merges the splits of one (item, head): out = sum_i acc_i 2^(m_i - M) / sum_i l_i 2^(m_i - M)
// over the splits that hold part of the token's context (the others were never written).
template <typename T, int D>
__device__ __forceinline__ void paged_decode_reduce(T *__restrict__ out,
                                                    const float *__restrict__ part_acc,
                                                    const float *__restrict__ part_ml,
                                                    const DecodeArgs &a) {
  const uint32_t item = blockIdx.x, head = blockIdx.y;
  const uint32_t token = a.use_items ? a.items[item] : item;
  const uint32_t seq = a.token_seqs[token];
  const uint32_t q_begin = a.query_start_loc[seq];
  const uint32_t q_len = a.query_start_loc[seq + 1] - q_begin;
  const uint32_t ctx = a.seq_lens[seq] - q_len + (token - q_begin) + 1;
  const uint32_t keys = ctx - window_start(ctx - 1, a.window);
  const uint32_t splits = min(a.num_splits, (keys + a.partition_len - 1) / a.partition_len);
  const size_t first = ((size_t)item * a.num_heads + head) * a.num_splits;
  float mx = NEG_INF;
  for (uint32_t i = 0; i < splits; ++i) mx = fmaxf(mx, part_ml[(first + i) * 2]);
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    float sum = 0.f, total = 0.f;
    for (uint32_t i = 0; i < splits; ++i) {
      const float f = exp2f(part_ml[(first + i) * 2] - mx);
      sum += part_ml[(first + i) * 2 + 1] * f;
      total += part_acc[(first + i) * D + e] * f;
    }
    out[((size_t)token * a.num_heads + head) * D + e] = from_float<T>(total / sum);
  }
}

#define DECODE_ARGS                                                                            \
  const uint32_t *block_tables, const uint32_t *seq_lens, const uint32_t *query_start_loc,     \
      const uint32_t *token_seqs, const uint32_t *items, uint32_t use_items, uint32_t num_heads, \
      uint32_t num_kv_heads, uint32_t block_size, uint32_t bt_stride, uint32_t partition_len,  \
      uint32_t num_splits, float scale_log2, uint32_t window, float soft_cap_log2
#define DECODE_PACK                                                                            \
  DecodeArgs a{block_tables,  seq_lens,   query_start_loc, token_seqs, items,                  \
               use_items,     num_heads,  num_kv_heads,    block_size, bt_stride,              \
               partition_len, num_splits, scale_log2,      window,     soft_cap_log2}

#define DECODE(T, SUF, D, G)                                                                   \
  extern "C" __global__ void __launch_bounds__(DECODE_WARPS * 32)                              \
      paged_decode_##SUF##_d##D##_g##G(T *out, float *part_acc, float *part_ml, const T *q,    \
                                       const T *k_cache, const T *v_cache, DECODE_ARGS) {      \
    DECODE_PACK;                                                                               \
    paged_decode<T, D, G>(out, part_acc, part_ml, q, k_cache, v_cache, a);                     \
  }

#define REDUCE(T, SUF, D)                                                                      \
  extern "C" __global__ void paged_decode_reduce_##SUF##_d##D(                                 \
      T *out, const float *part_acc, const float *part_ml, DECODE_ARGS) {                      \
    DECODE_PACK;                                                                               \
    paged_decode_reduce<T, D>(out, part_acc, part_ml, a);                                      \
  }

#define DECODE_ALL_G(T, SUF, D)                                                                \
  DECODE(T, SUF, D, 1)                                                                         \
  DECODE(T, SUF, D, 2)                                                                         \
  DECODE(T, SUF, D, 4)                                                                         \
  DECODE(T, SUF, D, 8)                                                                         \
  REDUCE(T, SUF, D)

#define DECODE_ALL_D(T, SUF)                                                                   \
  DECODE_ALL_G(T, SUF, 64)                                                                     \
  DECODE_ALL_G(T, SUF, 128)                                                                    \
  DECODE_ALL_G(T, SUF, 256)

DECODE_ALL_D(float, f32)
DECODE_ALL_D(__half, f16)
DECODE_ALL_D(bf16, bf16)
