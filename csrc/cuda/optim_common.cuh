// Helpers of the optimizer kernels (optim_adam.cu): element conversions of the core storage types,
// 16-byte vector loads / stores, and launch sizing.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtypes.h"

namespace kbit::cuda::optim {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(core::half x) { return __half2float(__ushort_as_half(x.bits)); }
__device__ __forceinline__ float to_f(core::bfloat16 x) { return __uint_as_float(uint32_t(x.bits) << 16); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ core::half from_f<core::half>(float x) {
  return core::half{__half_as_ushort(__float2half_rn(x))};
}
template <>
__device__ __forceinline__ core::bfloat16 from_f<core::bfloat16>(float x) {
  return core::bfloat16{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
}

// N elements of T moved as 16-byte vectors (N * sizeof(T) must be a multiple of 16).
template <typename T, int N>
union Vec {
  static constexpr int kWords = N * int(sizeof(T)) / 16;
  uint4 words[kWords];
  T val[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* src, float* dst) {
  Vec<T, N> v;
  const uint4* s = reinterpret_cast<const uint4*>(src);
#pragma unroll
  for (int w = 0; w < Vec<T, N>::kWords; ++w) v.words[w] = __ldg(s + w);
#pragma unroll
  for (int j = 0; j < N; ++j) dst[j] = to_f(v.val[j]);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* dst, const float* src) {
  Vec<T, N> v;
#pragma unroll
  for (int j = 0; j < N; ++j) v.val[j] = from_f<T>(src[j]);
  uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
  for (int w = 0; w < Vec<T, N>::kWords; ++w) d[w] = v.words[w];
}

inline bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

}  // namespace kbit::cuda::optim
