// Paged attention for prefill chunks (q_len > 1), flash-attention-2 style on tensor cores
// (mma.sync m16n8k16, f16/bf16 inputs, f32 accumulation), causal, reading the whole context —
// earlier chunks included — from the paged cache.
//
// Grid: x = query head, y = tile from the host's work list (sequence, first query offset); each
// CTA computes TILE_M = 64 query rows of one head against the keys from the first row's window
// start (0 without a sliding window) to the last row's position, TILE_N = 64 keys at a time, so
// keys before the window are never loaded; the later rows' window starts are masked per key.
// 4 warps, 16 query rows each. Per key tile: K and V are gathered through the block table into
// shared memory (16-byte loads), S = Q K^T on tensor cores, an online-softmax update in
// registers (base 2, scale folded in), then O += P V on tensor cores with P reused straight from
// the S accumulators. Heads run in grid.x so the CTAs of one KV group run together and share
// the K/V tiles through L2. Soft-capping (Gemma 2) runs on the base-2 scores:
// c2 * tanh(s / c2) with c2 = cap * log2(e), which is cap * tanh(s' / cap) * log2(e) for the
// natural-log score s'.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .f16/.bf16; g = lane / 4, t = lane % 4):
//   A 16x16 row-major: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8 "col":      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C 16x8 f32:        c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
#include "common.cuh"

constexpr int TILE_M = 64;
constexpr int TILE_N = 64;
constexpr int PREFILL_WARPS = 4;
constexpr int SMEM_PAD = 8;  // halves; row stride (D+8)*2 bytes keeps fragment reads conflict-free
constexpr float NEG_INF = -__builtin_huge_valf();

template <typename T> __device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4],
                                                              uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                  uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<bf16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats narrowed to T and packed (lo in the low half), as one mma operand register.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T l = from_float<T>(lo), h = from_float<T>(hi);
  return (uint32_t)(*reinterpret_cast<const uint16_t *>(&l)) |
         ((uint32_t)(*reinterpret_cast<const uint16_t *>(&h)) << 16);
}

__device__ __forceinline__ uint32_t pair16(uint16_t lo, uint16_t hi) {
  return (uint32_t)lo | ((uint32_t)hi << 16);
}

template <typename T, int D>
__device__ __forceinline__ void paged_prefill(T *__restrict__ out, const T *__restrict__ q,
                                              const T *__restrict__ k_cache,
                                              const T *__restrict__ v_cache,
                                              const uint32_t *__restrict__ block_tables,
                                              const uint32_t *__restrict__ seq_lens,
                                              const uint32_t *__restrict__ query_start_loc,
                                              const uint32_t *__restrict__ tiles, uint32_t num_heads,
                                              uint32_t num_kv_heads, uint32_t block_size,
                                              uint32_t bt_stride, float scale_log2,
                                              uint32_t window, float soft_cap_log2) {
  constexpr int LDS = D + SMEM_PAD;       // shared row stride in elements
  constexpr int KSTEPS = D / 16;          // k-steps of S = Q K^T
  constexpr int DTILES = D / 8;           // n-tiles of O
  constexpr int NTILES = TILE_N / 8;      // n-tiles of S
  constexpr int ROW_VECS = D * 2 / 16;    // 16-byte vectors per K/V row
  __shared__ __align__(16) uint16_t ks[TILE_N * LDS];
  __shared__ __align__(16) uint16_t vs[TILE_N * LDS];

  const uint32_t head = blockIdx.x;
  const uint32_t seq = tiles[2 * blockIdx.y];
  const uint32_t q_off = tiles[2 * blockIdx.y + 1];
  const uint32_t q_begin = query_start_loc[seq];
  const uint32_t q_len = query_start_loc[seq + 1] - q_begin;
  const uint32_t first_pos = seq_lens[seq] - q_len;  // position of query 0 of the sequence
  const uint32_t rows = min((uint32_t)TILE_M, q_len - q_off);
  const uint32_t kv_end = first_pos + q_off + rows;   // keys kv_begin..kv_end serve this tile
  // window == 0: full causal. Otherwise a row at position p sees keys p - key < window.
  const uint32_t win = window == 0 ? 0xffffffffu : window;
  const uint32_t tile_pos = first_pos + q_off;
  const uint32_t kv_begin = tile_pos + 1 > win ? tile_pos + 1 - win : 0;
  const uint32_t kv_head = head / (num_heads / num_kv_heads);
  const uint32_t *table = block_tables + (size_t)seq * bt_stride;
  const size_t row_stride = (size_t)num_kv_heads * D;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  // This lane's two query rows (tile-local); rows past the chunk are clamped to its last row so
  // every load stays in bounds and every row has a finite softmax. They are never stored.
  const int r0 = warp * 16 + g, r1 = r0 + 8;
  const int warp_first = warp * 16;
  const bool warp_active = warp_first < (int)rows;
  const uint32_t c0 = min((uint32_t)r0, rows - 1), c1 = min((uint32_t)r1, rows - 1);
  const uint32_t pos0 = first_pos + q_off + c0, pos1 = first_pos + q_off + c1;
  const uint32_t warp_last_pos = first_pos + q_off + min((uint32_t)(warp_first + 15), rows - 1);
  const uint32_t warp_first_pos = first_pos + q_off + min((uint32_t)warp_first, rows - 1);
  const uint32_t warp_first_key = warp_first_pos + 1 > win ? warp_first_pos + 1 - win : 0;

  // Q fragments for all k-steps, loaded once (32-bit loads of element pairs).
  uint32_t qa[KSTEPS][4];
  {
    const uint32_t *q0 = reinterpret_cast<const uint32_t *>(
        q + ((size_t)(q_begin + q_off + c0) * num_heads + head) * D);
    const uint32_t *q1 = reinterpret_cast<const uint32_t *>(
        q + ((size_t)(q_begin + q_off + c1) * num_heads + head) * D);
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
      qa[kk][0] = q0[(kk * 16 + 2 * t) / 2];
      qa[kk][1] = q1[(kk * 16 + 2 * t) / 2];
      qa[kk][2] = q0[(kk * 16 + 8 + 2 * t) / 2];
      qa[kk][3] = q1[(kk * 16 + 8 + 2 * t) / 2];
    }
  }

  float o[DTILES][4];
#pragma unroll
  for (int i = 0; i < DTILES; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;  // l: this lane's partial row sums

  for (uint32_t kv0 = kv_begin; kv0 < kv_end; kv0 += TILE_N) {
    __syncthreads();  // the previous tile is no longer read
    for (int idx = threadIdx.x; idx < TILE_N * ROW_VECS; idx += blockDim.x) {
      const int r = idx / ROW_VECS, c = idx % ROW_VECS;
      const uint32_t p = kv0 + r;
      uint4 kvec = make_uint4(0, 0, 0, 0), vvec = make_uint4(0, 0, 0, 0);
      if (p < kv_end) {
        const size_t off = ((size_t)table[p / block_size] * block_size + p % block_size) *
                               row_stride + (size_t)kv_head * D;
        kvec = reinterpret_cast<const uint4 *>(k_cache + off)[c];
        vvec = reinterpret_cast<const uint4 *>(v_cache + off)[c];
      }
      *reinterpret_cast<uint4 *>(&ks[r * LDS + c * 8]) = kvec;
      *reinterpret_cast<uint4 *>(&vs[r * LDS + c * 8]) = vvec;
    }
    __syncthreads();
    // Warp-uniform: nothing in this key tile is visible to any of the warp's rows.
    if (!warp_active || kv0 > warp_last_pos || kv0 + TILE_N <= warp_first_key) continue;

    // S = Q K^T for this warp's 16 rows and the tile's 64 keys.
    float s[NTILES][4];
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
#pragma unroll
      for (int nt = 0; nt < NTILES; ++nt) {
        const uint16_t *krow = &ks[(nt * 8 + g) * LDS + kk * 16 + 2 * t];
        const uint32_t b0 = *reinterpret_cast<const uint32_t *>(krow);
        const uint32_t b1 = *reinterpret_cast<const uint32_t *>(krow + 8);
        mma_16816<T>(s[nt], qa[kk], b0, b1);
      }
    }
    // Scale into base 2, soft-cap, mask the future, the keys before each row's window (and the
    // zero-filled keys past kv_end), row maxima.
    float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt) {
      const uint32_t key = kv0 + nt * 8 + 2 * t;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t k = key + (e & 1), pos = e < 2 ? pos0 : pos1;
        float x = s[nt][e] * scale_log2;
        if (soft_cap_log2 > 0.f) x = soft_cap_log2 * tanhf(x / soft_cap_log2);
        s[nt][e] = (k <= pos && pos - k < win) ? x : NEG_INF;
      }
      mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
      mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    // With a window a row may see nothing in the first tiles it meets (its window starts
    // later), so its max can still be -inf here: exponentiate against 0 then, so masked scores
    // give exp2(-inf) = 0 (not the NaN of -inf - -inf) and the all-zero state stays zero.
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float base0 = mn0 == NEG_INF ? 0.f : mn0, base1 = mn1 == NEG_INF ? 0.f : mn1;
    const float alpha0 = exp2f(m0 - base0), alpha1 = exp2f(m1 - base1);  // exp2(-inf) = 0
    m0 = mn0;
    m1 = mn1;
    l0 *= alpha0;
    l1 *= alpha1;
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt) {
      o[dt][0] *= alpha0;
      o[dt][1] *= alpha0;
      o[dt][2] *= alpha1;
      o[dt][3] *= alpha1;
    }
#pragma unroll
    for (int nt = 0; nt < NTILES; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - base0);
      s[nt][1] = exp2f(s[nt][1] - base0);
      s[nt][2] = exp2f(s[nt][2] - base1);
      s[nt][3] = exp2f(s[nt][3] - base1);
      l0 += s[nt][0] + s[nt][1];
      l1 += s[nt][2] + s[nt][3];
    }
    // O += P V: P's A fragments come straight from the S accumulators of n-tiles 2kc, 2kc+1.
#pragma unroll
    for (int kc = 0; kc < TILE_N / 16; ++kc) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kc][0], s[2 * kc][1]),
                              pack2<T>(s[2 * kc][2], s[2 * kc][3]),
                              pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                              pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
      const uint16_t *v0 = &vs[(kc * 16 + 2 * t) * LDS];
#pragma unroll
      for (int dt = 0; dt < DTILES; ++dt) {
        const int col = dt * 8 + g;
        const uint32_t b0 = pair16(v0[col], v0[LDS + col]);
        const uint32_t b1 = pair16(v0[8 * LDS + col], v0[9 * LDS + col]);
        mma_16816<T>(o[dt], pa, b0, b1);
      }
    }
  }

  if (!warp_active) return;
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
  if (r0 < (int)rows) {
    uint32_t *dst = reinterpret_cast<uint32_t *>(out + ((size_t)(q_begin + q_off + r0) * num_heads + head) * D);
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt) dst[(dt * 8 + 2 * t) / 2] = pack2<T>(o[dt][0] * inv0, o[dt][1] * inv0);
  }
  if (r1 < (int)rows) {
    uint32_t *dst = reinterpret_cast<uint32_t *>(out + ((size_t)(q_begin + q_off + r1) * num_heads + head) * D);
#pragma unroll
    for (int dt = 0; dt < DTILES; ++dt) dst[(dt * 8 + 2 * t) / 2] = pack2<T>(o[dt][2] * inv1, o[dt][3] * inv1);
  }
}

#define PREFILL(T, SUF, D)                                                                      \
  extern "C" __global__ void __launch_bounds__(PREFILL_WARPS * 32) paged_prefill_##SUF##_d##D(  \
      T *out, const T *q, const T *k_cache, const T *v_cache, const uint32_t *block_tables,     \
      const uint32_t *seq_lens, const uint32_t *query_start_loc, const uint32_t *tiles,         \
      uint32_t num_heads, uint32_t num_kv_heads, uint32_t block_size, uint32_t bt_stride,       \
      float scale_log2, uint32_t window, float soft_cap_log2) {                                 \
    paged_prefill<T, D>(out, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc,      \
                        tiles, num_heads, num_kv_heads, block_size, bt_stride, scale_log2,      \
                        window, soft_cap_log2);                                                 \
  }

PREFILL(__half, f16, 64)
PREFILL(__half, f16, 128)
PREFILL(bf16, bf16, 64)
PREFILL(bf16, bf16, 128)
