// silu_mul: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise in f32.
// The _vec kernels move 16-byte vectors (n counts vectors); the host uses them when the element
// count is a multiple of the vector width and all three buffers are 16-byte aligned.
#include "common.cuh"

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.f + __expf(-g)) * u; }

template <typename T>
__device__ __forceinline__ void silu_mul_scalar(const T *__restrict__ gate, const T *__restrict__ up,
                                                T *__restrict__ out, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    out[i] = from_float<T>(silu_times(to_float(gate[i]), to_float(up[i])));
}

template <typename T>
__device__ __forceinline__ void silu_mul_vectors(const uint4 *__restrict__ gate,
                                                 const uint4 *__restrict__ up,
                                                 uint4 *__restrict__ out, size_t n) {
  constexpr int N = Vec16<T>::N;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float g[N], u[N];
    unpack_vec<T>(gate[i], g);
    unpack_vec<T>(up[i], u);
#pragma unroll
    for (int e = 0; e < N; ++e) g[e] = silu_times(g[e], u[e]);
    out[i] = pack_vec<T>(g);
  }
}

#define SILU_MUL(T, SUF)                                                                      \
  extern "C" __global__ void silu_mul_##SUF(const T *gate, const T *up, T *out, uint64_t n) { \
    silu_mul_scalar<T>(gate, up, out, n);                                                     \
  }                                                                                           \
  extern "C" __global__ void silu_mul_vec_##SUF(const uint4 *gate, const uint4 *up,           \
                                                uint4 *out, uint64_t n) {                     \
    silu_mul_vectors<T>(gate, up, out, n);                                                    \
  }

SILU_MUL(float, f32)
SILU_MUL(__half, f16)
SILU_MUL(bf16, bf16)
