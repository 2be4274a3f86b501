// Device helpers shared by kbit's CUDA kernels: the 4-bit code values and the exact encoders
// bitsandbytes uses, 16-bit type traits, vector loads, launch checks and programmatic dependent
// launch. Torch-free.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "cuda/blockwise_dtype.h"
#include "cuda/device_info.h"
#include "cuda/dynamic_smem.cuh"

namespace kbit::cuda {

// NF4 and FP4 code values by 4-bit index (FORMAT.md). FP4 index 8 is -0.0.
static __constant__ float kCode4[2][16] = {
    {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
     -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
     0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
     0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f},
    {0.0f, 0.0625f / 12, 8.0f / 12, 12.0f / 12, 4.0f / 12, 6.0f / 12, 2.0f / 12, 3.0f / 12,
     -0.0f, -0.0625f / 12, -8.0f / 12, -12.0f / 12, -4.0f / 12, -6.0f / 12, -2.0f / 12, -3.0f / 12}};

// NF4 decision thresholds: midpoints of adjacent code values computed in double and rounded to
// float, compared with a strict '>' (bitsandbytes' encoder; ties go to the lower index).
static __constant__ float kNF4Mid[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};

// Index of the FP4 value nearest x: sign bit 8, magnitude by bitsandbytes' float thresholds
// (written as its literals, which are not all exact midpoints), then the magnitude's 3-bit pattern.
__device__ __forceinline__ uint32_t encode_fp4(float x) {
  const uint32_t sign = x < 0.0f ? 8u : 0u;
  const float a = fabsf(x);
  uint32_t rank = 0;
  rank += a > 0.00260417f;
  rank += a > 0.0859375f;
  rank += a > 0.20833333f;
  rank += a > 0.29166667f;
  rank += a > 0.4166667f;
  rank += a > 0.583333f;
  rank += a > 0.8333333f;
  // Magnitudes in value order 0, 1/192, 2/12, 3/12, 4/12, 6/12, 8/12, 12/12 have patterns
  // 0, 1, 6, 7, 4, 5, 2, 3 (nibbles of the constant, lowest first).
  return sign | ((0x32547610u >> (4 * rank)) & 7u);
}

// 16-bit activation types and their two-wide vectors.
template <typename T>
struct Half2Of;
template <>
struct Half2Of<__nv_bfloat16> {
  using type = __nv_bfloat162;
};
template <>
struct Half2Of<__half> {
  using type = __half2;
};

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

// The bit pattern of a 16-bit value, for packing values into wider stores.
__device__ __forceinline__ uint32_t bits16(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }

// Two floats -> one 32-bit register of two T (low half = a), rounded to nearest even.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 16-byte streaming load that skips L1 (weights are read once; keep L1 for activations).
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// 16 bytes of shared memory at a shared-space address (32-bit, as __cvta_generic_to_shared gives).
__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int log2_exact(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// The 8 16-bit values of a 16-byte load as floats.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& raw, float (&v)[8]) {
  const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = to_f32(h[e]);
}

// Loads elements [i, i+8) of A as floats; out-of-range elements read as 0.
template <typename T>
__device__ __forceinline__ void load8(const T* A, int64_t i, int64_t n, bool vec, float (&v)[8]) {
  if (vec && i + 8 <= n) {
    if constexpr (sizeof(T) == 2) {
      unpack8<T>(__ldg(reinterpret_cast<const uint4*>(A + i)), v);
    } else {
      const float4 a = __ldg(reinterpret_cast<const float4*>(A + i));
      const float4 b = __ldg(reinterpret_cast<const float4*>(A + i) + 1);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = i + e < n ? to_f32(A[i + e]) : 0.0f;
  }
}

// Ways to split K so that `tiles` blocks fill `slots` (resident blocks on the GPU) once, keeping
// at least 4 chunks (K tiles) per split; 1 where the tiles alone fill more than half of the slots.
inline int split_k_ways(int64_t tiles, int64_t slots, int64_t nchunks) {
  if (tiles <= 0 || tiles * 2 > slots) return 1;
  int64_t s = slots / tiles;
  if (s > nchunks / 4) s = nchunks / 4;
  return int(s < 1 ? 1 : s);
}

// PDL (sm_90): a kernel launched with programmatic stream serialization may start while the
// previous kernel runs; griddep_wait() blocks until that kernel has finished and its writes are
// visible. A no-op when not launched that way. griddep_launch() lets the next kernel start early.
__device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void griddep_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization when pdl
// (the kernel must then griddep_wait() before it reads what the previous kernel writes).
template <typename... Params, typename... Args>
cudaError_t launch_maybe_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             bool pdl, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// Blocks for a grid-stride loop over `items` with `per_block` per block, capped at 16 per SM.
inline int grid_for(int64_t items, int per_block) {
  const int64_t blocks = ceil_div(items, per_block);
  const int64_t cap = int64_t(sm_count()) * 16;
  return int(blocks < cap ? (blocks > 0 ? blocks : 1) : cap);
}

}  // namespace kbit::cuda
