// reshape_and_cache: copies each batch token's new K (or V) row [kv_heads * head_dim] into its
// cache slot. The copy is dtype-agnostic, so kernels are named by the unit they move.
#include "common.cuh"

// One block per token; `row_units` units of the row per token, `slots[t]` the destination row.
template <typename U>
__device__ __forceinline__ void copy_rows(const U *__restrict__ src, U *__restrict__ cache,
                                          const uint32_t *__restrict__ slots, uint32_t row_units) {
  const uint32_t t = blockIdx.x;
  const U *from = src + (size_t)t * row_units;
  U *to = cache + (size_t)slots[t] * row_units;
  for (uint32_t i = threadIdx.x; i < row_units; i += blockDim.x) to[i] = from[i];
}

extern "C" __global__ void reshape_and_cache_u128(const uint4 *src, uint4 *cache,
                                                  const uint32_t *slots, uint32_t row_units) {
  copy_rows(src, cache, slots, row_units);
}

extern "C" __global__ void reshape_and_cache_u32(const uint32_t *src, uint32_t *cache,
                                                 const uint32_t *slots, uint32_t row_units) {
  copy_rows(src, cache, slots, row_units);
}

extern "C" __global__ void reshape_and_cache_u16(const uint16_t *src, uint16_t *cache,
                                                 const uint32_t *slots, uint32_t row_units) {
  copy_rows(src, cache, slots, row_units);
}
