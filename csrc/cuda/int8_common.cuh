// Device helpers of the LLM.int8() kernels (element conversion and programmatic dependent launch
// are common.cuh's): magnitudes as bit patterns, a block-wide scan, and the outlier-column walk
// that the epilogues share. Torch-free.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"  // to_f32 / from_f32
#include "cuda/int8.cuh"

namespace kbit::cuda::int8 {

constexpr uint32_t kInfBits = 0x7f800000u;

// A[i] of a float tensor whose element type is known only at run time (outlier values: few).
__device__ __forceinline__ float load_any(const void* A, int64_t i, int dtype) {
  if (dtype == kI8F32) return static_cast<const float*>(A)[i];
  if (dtype == kI8F16) return __half2float(static_cast<const __half*>(A)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(A)[i]);
}

// |x| as its float bit pattern: orders like |x|, and NaN sorts above inf.
__device__ __forceinline__ uint32_t abs_bits(float x) { return __float_as_uint(x) & 0x7fffffffu; }

// The threshold as a bound on abs_bits: entries at or above it are outliers. Without a threshold
// it lies just above inf, so only NaN is excluded (as core/int8_rowwise.cpp does).
__host__ __device__ inline uint32_t threshold_bits(float threshold) {
  if (!(threshold > 0.0f)) return kInfBits + 1;
  union {
    float f;
    uint32_t u;
  } v{threshold};
  return v.u;
}

// Calls f(T{}) for the element type (float, __half or __nv_bfloat16) that an Int8Dtype code names:
// the launchers' one type switch; cudaErrorInvalidValue for any other code.
template <typename F>
cudaError_t with_dtype(int code, F&& f) {
  switch (code) {
    case kI8F32:
      return f(float{});
    case kI8F16:
      return f(__half{});
    case kI8BF16:
      return f(__nv_bfloat16{});
    default:
      return cudaErrorInvalidValue;
  }
}

// For i = threadIdx.x, + blockDim.x, ... < n: store(i, load(i)), with B loads in flight before the
// first store. The outlier kernels stage scattered values (one column of A or W per element) into
// shared memory; one at a time, each load waits a full memory latency.
template <int B, typename Load, typename Store>
__device__ __forceinline__ void batched_copy(int64_t n, Load load, Store store) {
  for (int64_t i0 = threadIdx.x; i0 < n; i0 += int64_t(blockDim.x) * B) {
    decltype(load(i0)) v[B];
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const int64_t i = i0 + int64_t(b) * blockDim.x;
      if (i < n) v[b] = load(i);
    }
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const int64_t i = i0 + int64_t(b) * blockDim.x;
      if (i < n) store(i, v[b]);
    }
  }
}

// Exclusive prefix sum of x over the block (blockDim.x a multiple of 32, at most 1024); *total
// gets the sum. scratch: 32 ints of shared memory. Contains __syncthreads: call from all threads.
__device__ __forceinline__ int block_exclusive_scan(int x, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  int incl = x;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += y;
  }
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < nwarps; ++w) {
    const int s = scratch[w];
    before += w < warp ? s : 0;
    sum += s;
  }
  __syncthreads();  // scratch may be reused after this
  *total = sum;
  return before + incl - x;
}

// The outlier columns of a bit mask, walked in rounds of `cap` by rank (their sorted order). Each
// thread owns words [w0, w1) of the mask; begin() ranks them, fill() writes the column indices
// with ranks [base, base + cap) into list (shared or global memory).
struct OutlierWalk {
  const uint32_t* mask;
  int w0, w1;
  int first;  // rank of this thread's first set bit
  int total;  // set bits in the whole mask

  __device__ void begin(const uint32_t* m, int64_t cols, int* scratch) {
    mask = m;
    const int nw = int((cols + 31) / 32);
    const int per = (nw + int(blockDim.x) - 1) / int(blockDim.x);
    w0 = min(nw, int(threadIdx.x) * per);
    w1 = min(nw, w0 + per);
    int local = 0;
    for (int w = w0; w < w1; ++w) local += __popc(mask[w]);
    first = block_exclusive_scan(local, scratch, &total);
  }

  template <typename I>
  __device__ void fill(int base, int cap, I* list) const {
    int rank = first;
    for (int w = w0; w < w1 && rank < base + cap; ++w) {
      uint32_t bits = mask[w];
      while (bits) {
        const int b = __ffs(bits) - 1;
        bits &= bits - 1;
        if (rank >= base && rank < base + cap) list[rank - base] = w * 32 + b;
        ++rank;
      }
    }
  }
};

}  // namespace kbit::cuda::int8
