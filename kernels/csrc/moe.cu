// Mixture-of-experts kernels over a batch of (token, expert) pairs sorted by expert (issue 20).
//
// moe_grouped_gemm: out[r] = x[r] · W[e]ᵀ for every pair row r, where expert e owns rows
//   offsets[e]..offsets[e+1]. One launch covers every expert: grid (column tile, row tile,
//   expert); a block whose row tile lies past its expert's rows returns at once. Decode batches
//   give an expert a handful of rows, so the kernel is built to read each weight once per row
//   tile: a warp walks whole weight rows along K (coalesced), the block's ROWS input rows sit in
//   shared memory (in K chunks), and every weight element read serves all ROWS rows. f32
//   accumulation; x, W and out share one dtype.
// moe_combine: out[t] = Σ_j weight[t, j] · y[row[t, j]] over a token's k pairs, in pair order
//   (deterministic, no atomics: the host inverts the sort permutation into row[t, j]). f32
//   accumulation; rows >= num_rows are skipped (the host builds them, so none should be).
#include "common.cuh"

constexpr int ROWS = 8;           // pair rows per block (input rows kept in shared memory)
constexpr int COLS_PER_WARP = 4;  // output columns (weight rows) each warp computes
constexpr int WARPS = 8;          // 256 threads
constexpr int COLS_PER_BLOCK = COLS_PER_WARP * WARPS;
constexpr int K_CHUNK = 256;

template <typename T>
__device__ __forceinline__ void grouped_gemm(const T *__restrict__ x, const T *__restrict__ w,
                                             T *__restrict__ out,
                                             const uint32_t *__restrict__ offsets, uint32_t n,
                                             uint32_t k) {
  const int expert = blockIdx.z;
  const uint32_t row_end = offsets[expert + 1];
  const uint32_t row0 = offsets[expert] + blockIdx.y * ROWS;
  if (row0 >= row_end) return;  // uniform over the block: no barrier is skipped by some threads
  const int rows = min((uint32_t)ROWS, row_end - row0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint32_t col0 = blockIdx.x * COLS_PER_BLOCK + warp * COLS_PER_WARP;
  const T *we = w + (size_t)expert * n * k;
  __shared__ float xs[ROWS][K_CHUNK];
  float acc[COLS_PER_WARP][ROWS];
#pragma unroll
  for (int c = 0; c < COLS_PER_WARP; ++c)
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[c][r] = 0.f;
  for (uint32_t k0 = 0; k0 < k; k0 += K_CHUNK) {
    const int kc = min((uint32_t)K_CHUNK, k - k0);
    __syncthreads();
    for (int i = threadIdx.x; i < ROWS * K_CHUNK; i += blockDim.x) {
      const int r = i / K_CHUNK, kk = i % K_CHUNK;
      xs[r][kk] = (r < rows && kk < kc) ? to_float(x[(size_t)(row0 + r) * k + k0 + kk]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < COLS_PER_WARP; ++c) {
      const uint32_t col = col0 + c;
      if (col < n) {
        const T *wr = we + (size_t)col * k + k0;
        for (int kk = lane; kk < kc; kk += 32) {
          const float wv = to_float(wr[kk]);
#pragma unroll
          for (int r = 0; r < ROWS; ++r) acc[c][r] += wv * xs[r][kk];
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < COLS_PER_WARP; ++c) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const float v = warp_sum(acc[c][r]);
      const uint32_t col = col0 + c;
      if (lane == 0 && r < rows && col < n) out[(size_t)(row0 + r) * n + col] = from_float<T>(v);
    }
  }
}

template <typename T>
__device__ __forceinline__ void combine(const T *__restrict__ y, const uint32_t *__restrict__ rows,
                                        const float *__restrict__ weights, T *__restrict__ out,
                                        uint32_t n, uint32_t per_token, uint32_t num_rows) {
  const uint32_t token = blockIdx.x;
  for (uint32_t col = threadIdx.x; col < n; col += blockDim.x) {
    float acc = 0.f;
    for (uint32_t j = 0; j < per_token; ++j) {
      const uint32_t row = rows[(size_t)token * per_token + j];
      if (row < num_rows)
        acc += weights[(size_t)token * per_token + j] * to_float(y[(size_t)row * n + col]);
    }
    out[(size_t)token * n + col] = from_float<T>(acc);
  }
}

#define MOE(T, SUF)                                                                          \
  extern "C" __global__ void moe_grouped_gemm_##SUF(const T *x, const T *w, T *out,         \
                                                    const uint32_t *offsets, uint32_t n,    \
                                                    uint32_t k) {                           \
    grouped_gemm<T>(x, w, out, offsets, n, k);                                              \
  }                                                                                          \
  extern "C" __global__ void moe_combine_##SUF(const T *y, const uint32_t *rows,            \
                                               const float *weights, T *out, uint32_t n,    \
                                               uint32_t per_token, uint32_t num_rows) {     \
    combine<T>(y, rows, weights, out, n, per_token, num_rows);                              \
  }

MOE(float, f32)
MOE(__half, f16)
MOE(bf16, bf16)
