// RMSNorm over rows of H elements, optionally fused with the residual add:
//   sum = round_T(x + residual)            (ADD only; written to sum_out, the new residual)
//   out = round_T(sum * rsqrt(mean(sum^2) + eps) * w)
// One block per row; f32 math. VEC kernels move 16-byte vectors and need H % (16/sizeof(T)) == 0
// and 16-byte aligned rows (the host checks and otherwise picks the scalar kernels).
#include "common.cuh"

template <typename T, bool ADD, bool VEC>
__device__ __forceinline__ void rms_norm_row(const T *__restrict__ x, const T *__restrict__ residual,
                                             const T *__restrict__ w, T *__restrict__ out,
                                             T *__restrict__ sum_out, uint32_t hidden, float eps) {
  const size_t row = blockIdx.x;
  const T *xr = x + row * hidden;
  T *outr = out + row * hidden;
  // The row that gets normalized: x itself, or the rounded sum written to sum_out.
  const T *src = xr;
  float sum_sq = 0.f;
  if constexpr (VEC) {
    constexpr int N = Vec16<T>::N;
    const uint32_t vecs = hidden / N;
    if constexpr (ADD) {
      const uint4 *rr = reinterpret_cast<const uint4 *>(residual + row * hidden);
      uint4 *sr = reinterpret_cast<uint4 *>(sum_out + row * hidden);
      for (uint32_t i = threadIdx.x; i < vecs; i += blockDim.x) {
        float a[N], b[N];
        unpack_vec<T>(reinterpret_cast<const uint4 *>(xr)[i], a);
        unpack_vec<T>(rr[i], b);
#pragma unroll
        for (int e = 0; e < N; ++e) a[e] = to_float(from_float<T>(a[e] + b[e]));
        sr[i] = pack_vec<T>(a);
#pragma unroll
        for (int e = 0; e < N; ++e) sum_sq += a[e] * a[e];
      }
      src = sum_out + row * hidden;
    } else {
      for (uint32_t i = threadIdx.x; i < vecs; i += blockDim.x) {
        float a[N];
        unpack_vec<T>(reinterpret_cast<const uint4 *>(xr)[i], a);
#pragma unroll
        for (int e = 0; e < N; ++e) sum_sq += a[e] * a[e];
      }
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq) / (float)hidden + eps);
    // Each thread re-reads only the vectors it wrote itself, so no barrier is needed for ADD.
    for (uint32_t i = threadIdx.x; i < vecs; i += blockDim.x) {
      float a[N], g[N];
      unpack_vec<T>(reinterpret_cast<const uint4 *>(src)[i], a);
      unpack_vec<T>(reinterpret_cast<const uint4 *>(w)[i], g);
#pragma unroll
      for (int e = 0; e < N; ++e) a[e] = a[e] * inv_rms * g[e];
      reinterpret_cast<uint4 *>(outr)[i] = pack_vec<T>(a);
    }
  } else {
    if constexpr (ADD) {
      const T *rr = residual + row * hidden;
      T *sr = sum_out + row * hidden;
      for (uint32_t i = threadIdx.x; i < hidden; i += blockDim.x) {
        const T s = from_float<T>(to_float(xr[i]) + to_float(rr[i]));
        sr[i] = s;
        const float a = to_float(s);
        sum_sq += a * a;
      }
      src = sr;
    } else {
      for (uint32_t i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float a = to_float(xr[i]);
        sum_sq += a * a;
      }
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq) / (float)hidden + eps);
    for (uint32_t i = threadIdx.x; i < hidden; i += blockDim.x)
      outr[i] = from_float<T>(to_float(src[i]) * inv_rms * to_float(w[i]));
  }
}

#define RMS_NORM(T, SUF)                                                                        \
  extern "C" __global__ void rms_norm_##SUF(const T *x, const T *w, T *out, uint32_t hidden,    \
                                            float eps, uint32_t vec) {                          \
    if (vec)                                                                                    \
      rms_norm_row<T, false, true>(x, nullptr, w, out, nullptr, hidden, eps);                   \
    else                                                                                        \
      rms_norm_row<T, false, false>(x, nullptr, w, out, nullptr, hidden, eps);                  \
  }                                                                                             \
  extern "C" __global__ void add_rms_norm_##SUF(const T *x, const T *residual, const T *w,      \
                                                T *out, uint32_t hidden, float eps,             \
                                                uint32_t vec) {                                 \
    T *sum_out = out + (size_t)gridDim.x * hidden; /* out is [2, rows, hidden] */               \
    if (vec)                                                                                    \
      rms_norm_row<T, true, true>(x, residual, w, out, sum_out, hidden, eps);                   \
    else                                                                                        \
      rms_norm_row<T, true, false>(x, residual, w, out, sum_out, hidden, eps);                  \
  }

RMS_NORM(float, f32)
RMS_NORM(__half, f16)
RMS_NORM(bf16, bf16)
