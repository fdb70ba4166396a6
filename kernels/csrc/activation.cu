// Gated MLP activations, elementwise in f32: out = act(gate) * up with
//   silu:      act(g) = g / (1 + exp(-g))                                 (llama-style models)
//   gelu_tanh: act(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))  (Gemma's GeGLU, HF
//              "gelu_pytorch_tanh"), computed as g / (1 + exp(-2 sqrt(2/pi) (g + 0.044715 g^3))),
//              the same value since 1 + tanh(y) = 2 sigmoid(2y), without the 1 + tanh cancellation
//              for negative g.
// The _vec kernels move 16-byte vectors (n counts vectors); the host uses them when the element
// count is a multiple of the vector width and all three buffers are 16-byte aligned.
#include "common.cuh"

struct Silu {
  static __device__ __forceinline__ float apply(float g) { return g / (1.f + __expf(-g)); }
};

struct GeluTanh {
  static __device__ __forceinline__ float apply(float g) {
    constexpr float TWO_SQRT_2_OVER_PI = 2.f * 0.7978845608f;
    const float y2 = TWO_SQRT_2_OVER_PI * (g + 0.044715f * g * g * g);
    return g / (1.f + __expf(-y2));
  }
};

template <typename Act, typename T>
__device__ __forceinline__ void gated_scalar(const T *__restrict__ gate, const T *__restrict__ up,
                                             T *__restrict__ out, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    out[i] = from_float<T>(Act::apply(to_float(gate[i])) * to_float(up[i]));
}

template <typename Act, typename T>
__device__ __forceinline__ void gated_vectors(const uint4 *__restrict__ gate,
                                              const uint4 *__restrict__ up,
                                              uint4 *__restrict__ out, size_t n) {
  constexpr int N = Vec16<T>::N;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float g[N], u[N];
    unpack_vec<T>(gate[i], g);
    unpack_vec<T>(up[i], u);
#pragma unroll
    for (int e = 0; e < N; ++e) g[e] = Act::apply(g[e]) * u[e];
    out[i] = pack_vec<T>(g);
  }
}

#define GATED(NAME, ACT, T, SUF)                                                              \
  extern "C" __global__ void NAME##_##SUF(const T *gate, const T *up, T *out, uint64_t n) {   \
    gated_scalar<ACT, T>(gate, up, out, n);                                                   \
  }                                                                                           \
  extern "C" __global__ void NAME##_vec_##SUF(const uint4 *gate, const uint4 *up, uint4 *out, \
                                              uint64_t n) {                                   \
    gated_vectors<ACT, T>(gate, up, out, n);                                                  \
  }

GATED(silu_mul, Silu, float, f32)
GATED(silu_mul, Silu, __half, f16)
GATED(silu_mul, Silu, bf16, bf16)
GATED(gelu_tanh_mul, GeluTanh, float, f32)
GATED(gelu_tanh_mul, GeluTanh, __half, f16)
GATED(gelu_tanh_mul, GeluTanh, bf16, bf16)
