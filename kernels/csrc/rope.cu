// Rotary embedding over x [tokens, heads, head_dim], one thread per rotated pair (a, b):
//   (a, b) -> (a cos - b sin, b cos + a sin),  cos/sin = table[position][i], tables [max_pos, D/2].
// NEOX pairs (x[i], x[i + D/2]); interleaved (GPT-J) pairs (x[2i], x[2i + 1]). Tables may be f32
// (C = float) or the activations' dtype. Positions past the table are clamped to its last row
// (the host documents that callers keep positions < max_pos; this only keeps reads in bounds).
#include "common.cuh"

template <typename T, typename C, bool NEOX>
__device__ __forceinline__ void rope_pairs(const T *__restrict__ x, const uint32_t *__restrict__ positions,
                                           const C *__restrict__ cos, const C *__restrict__ sin,
                                           T *__restrict__ out, uint32_t tokens, uint32_t heads,
                                           uint32_t half, uint32_t max_pos) {
  const size_t pairs = (size_t)tokens * heads * half;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < pairs;
       idx += (size_t)gridDim.x * blockDim.x) {
    const uint32_t i = idx % half;
    const size_t token_head = idx / half;
    const uint32_t token = token_head / heads;
    const uint32_t pos = min(positions[token], max_pos - 1);
    const float c = to_float(cos[(size_t)pos * half + i]);
    const float s = to_float(sin[(size_t)pos * half + i]);
    const size_t base = token_head * 2 * half;
    const size_t ia = base + (NEOX ? i : 2 * i);
    const size_t ib = base + (NEOX ? i + half : 2 * i + 1);
    const float a = to_float(x[ia]), b = to_float(x[ib]);
    out[ia] = from_float<T>(a * c - b * s);
    out[ib] = from_float<T>(b * c + a * s);
  }
}

#define ROPE(T, C, SUF)                                                                        \
  extern "C" __global__ void rope_neox_##SUF(const T *x, const uint32_t *positions,            \
                                             const C *cos, const C *sin, T *out,               \
                                             uint32_t tokens, uint32_t heads, uint32_t half,   \
                                             uint32_t max_pos) {                               \
    rope_pairs<T, C, true>(x, positions, cos, sin, out, tokens, heads, half, max_pos);         \
  }                                                                                            \
  extern "C" __global__ void rope_interleaved_##SUF(const T *x, const uint32_t *positions,     \
                                                    const C *cos, const C *sin, T *out,        \
                                                    uint32_t tokens, uint32_t heads,           \
                                                    uint32_t half, uint32_t max_pos) {         \
    rope_pairs<T, C, false>(x, positions, cos, sin, out, tokens, heads, half, max_pos);        \
  }

// Suffix: activation dtype, then table dtype.
ROPE(float, float, f32_f32)
ROPE(__half, __half, f16_f16)
ROPE(__half, float, f16_f32)
ROPE(bf16, bf16, bf16_bf16)
ROPE(bf16, float, bf16_f32)
