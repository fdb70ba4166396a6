// Shared device helpers: dtype conversions, 16-byte vectors, warp and block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// Elements of T in one 16-byte vector (uint4).
template <typename T> struct Vec16 {
  static constexpr int N = 16 / sizeof(T);
};

// Widens the N = 16 / sizeof(T) elements of one 16-byte vector to f32.
__device__ __forceinline__ void unpack(const uint4 &v, float (&out)[4]) {
  out[0] = __uint_as_float(v.x);
  out[1] = __uint_as_float(v.y);
  out[2] = __uint_as_float(v.z);
  out[3] = __uint_as_float(v.w);
}

template <typename T> __device__ __forceinline__ float2 word_to_float2(uint32_t w);
template <> __device__ __forceinline__ float2 word_to_float2<__half>(uint32_t w) {
  return __half22float2(*reinterpret_cast<const __half2 *>(&w));
}
template <> __device__ __forceinline__ float2 word_to_float2<bf16>(uint32_t w) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w));
}

template <typename T>
__device__ __forceinline__ void unpack(const uint4 &v, float (&out)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = word_to_float2<T>(words[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// Dispatches to the right unpack for T: 4 floats for f32, 8 for f16/bf16.
template <typename T>
__device__ __forceinline__ void unpack_vec(const uint4 &v, float (&out)[Vec16<T>::N]) {
  if constexpr (sizeof(T) == 4) {
    unpack(v, out);
  } else {
    unpack<T>(v, out);
  }
}

// Narrows N = 16 / sizeof(T) floats to one 16-byte vector of T.
template <typename T>
__device__ __forceinline__ uint4 pack_vec(const float (&in)[Vec16<T>::N]) {
  uint4 v;
  if constexpr (sizeof(T) == 4) {
    v.x = __float_as_uint(in[0]);
    v.y = __float_as_uint(in[1]);
    v.z = __float_as_uint(in[2]);
    v.w = __float_as_uint(in[3]);
  } else {
    uint32_t words[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      T lo = from_float<T>(in[2 * i]);
      T hi = from_float<T>(in[2 * i + 1]);
      words[i] = (uint32_t)(*reinterpret_cast<const uint16_t *>(&lo)) |
                 ((uint32_t)(*reinterpret_cast<const uint16_t *>(&hi)) << 16);
    }
    v.x = words[0];
    v.y = words[1];
    v.z = words[2];
    v.w = words[3];
  }
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the whole block (any blockDim.x that is a multiple of 32, up to 1024); every thread
// gets the result. Must be reached by all threads of the block.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    float w = lane < warps ? warp_sums[lane] : 0.f;
    w = warp_sum(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}
