// Fused Adam / AdamW update kernels. Both stream each byte once (memory bound): the 8-bit kernel
// moves 2*sizeof(T) + sizeof(T) + 4 bytes per parameter (p read+write, g read, two state bytes
// read+write), the 32-bit kernel 3*sizeof(T) + 16.
//
// 8-bit decomposition: one warp owns one 256-element quantization block, each lane 8 consecutive
// elements, so a warp reads 256 contiguous elements of every tensor (coalesced 16-byte loads) and
// the block's new absmax is a warp-shuffle max: no shared-memory reduction, no __syncthreads in the
// loop. A CTA of 8 warps first copies both codes into shared memory and derives their midpoints
// (the decision boundaries of nearest-value rounding); CTAs then stride over the blocks, so a grid
// sized to the GPU loads the tables once per CTA rather than once per block.
// The element math is core::adam_element, shared with the CPU reference, with mul/add rounded
// separately (no FMA) so both give the same bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/optim_adam.cuh"

namespace kbit::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerLane = 8;  // 32 lanes x 8 = one 256-element quantization block per warp
static_assert(32 * kPerLane == core::kOptimBlocksize, "a warp covers one quantization block");

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

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

// kVec: every pointer is aligned for the vector loads; the last, partial block is always scalar.
// At most 64 registers, so that 4 CTAs (32 warps) fit on an SM to keep enough loads in flight.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, 4)
adam_8bit_blockwise_kernel(T* __restrict__ p, const T* __restrict__ g, uint8_t* __restrict__ state1,
                           uint8_t* __restrict__ state2, float* __restrict__ absmax1,
                           float* __restrict__ absmax2, const float* __restrict__ code1,
                           const float* __restrict__ code2, int64_t n, core::AdamConfig c) {
  __shared__ float s_code1[256], s_code2[256], s_tree1[256], s_tree2[256];
  const int t = threadIdx.x;
  s_code1[t] = code1[t];
  s_code2[t] = code2[t];
  __syncthreads();
  // Same expression as core::code_search_tree, so boundaries match the CPU reference bit for bit.
  if (t > 0) {
    const int k = core::tree_node_midpoint(t);
    s_tree1[t] = core::mul_rn(0.5f, core::add_rn(s_code1[k], s_code1[k + 1]));
    s_tree2[t] = core::mul_rn(0.5f, core::add_rn(s_code2[k], s_code2[k + 1]));
  }
  __syncthreads();

  const int lane = t & 31;
  const int64_t blocks = (n + core::kOptimBlocksize - 1) / core::kOptimBlocksize;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  for (int64_t b = int64_t(blockIdx.x) * kWarps + t / 32; b < blocks; b += stride) {
    const int64_t base = b * core::kOptimBlocksize + lane * kPerLane;
    const bool full = kVec && (b + 1) * core::kOptimBlocksize <= n;
    float pv[kPerLane], gv[kPerLane], m[kPerLane], v[kPerLane];
    uint8_t q1[kPerLane], q2[kPerLane];
    if (full) {
      load_vec<T, kPerLane>(p + base, pv);
      load_vec<T, kPerLane>(g + base, gv);
      *reinterpret_cast<uint2*>(q1) = *reinterpret_cast<const uint2*>(state1 + base);
      *reinterpret_cast<uint2*>(q2) = *reinterpret_cast<const uint2*>(state2 + base);
    } else {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const bool in = base + j < n;
        pv[j] = in ? to_f(p[base + j]) : 0.0f;
        gv[j] = in ? to_f(g[base + j]) : 0.0f;
        q1[j] = in ? state1[base + j] : 0;
        q2[j] = in ? state2[base + j] : 0;
      }
    }
    const float a1 = absmax1[b], a2 = absmax2[b];
    float mx1 = 0.0f, mx2 = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (full || base + j < n) {
        m[j] = core::mul_rn(s_code1[q1[j]], a1);
        v[j] = core::mul_rn(s_code2[q2[j]], a2);
        core::adam_element(pv[j], gv[j], m[j], v[j], c);
      } else {
        m[j] = v[j] = 0.0f;  // padding must not raise the block's absmax
      }
      mx1 = fmaxf(mx1, fabsf(m[j]));
      mx2 = fmaxf(mx2, fabsf(v[j]));
    }
    mx1 = warp_max(mx1);
    mx2 = warp_max(mx2);
    const float inv1 = mx1 > 0.0f ? 1.0f / mx1 : 0.0f;
    const float inv2 = mx2 > 0.0f ? 1.0f / mx2 : 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      q1[j] = uint8_t(core::nearest_in_tree(s_tree1, core::mul_rn(m[j], inv1)));
      q2[j] = uint8_t(core::nearest_in_tree(s_tree2, core::mul_rn(v[j], inv2)));
    }
    if (lane == 0) {
      absmax1[b] = mx1;
      absmax2[b] = mx2;
    }
    if (full) {
      store_vec<T, kPerLane>(p + base, pv);
      *reinterpret_cast<uint2*>(state1 + base) = *reinterpret_cast<const uint2*>(q1);
      *reinterpret_cast<uint2*>(state2 + base) = *reinterpret_cast<const uint2*>(q2);
    } else {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        if (base + j < n) {
          p[base + j] = from_f<T>(pv[j]);
          state1[base + j] = q1[j];
          state2[base + j] = q2[j];
        }
      }
    }
  }
}

// 32-bit states: each thread updates runs of kRun elements (kRun * sizeof(T) a multiple of 16).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
adam_32bit_kernel(T* __restrict__ p, const T* __restrict__ g, float* __restrict__ m_ptr,
                  float* __restrict__ v_ptr, int64_t n, core::AdamConfig c) {
  constexpr int kRun = 16 / sizeof(T) >= 4 ? 16 / sizeof(T) : 4;  // 4 floats or 8 halves
  const int64_t runs = (n + kRun - 1) / kRun;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x; r < runs; r += stride) {
    const int64_t base = r * kRun;
    float pv[kRun], gv[kRun], m[kRun], v[kRun];
    if (kVec && base + kRun <= n) {
      load_vec<T, kRun>(p + base, pv);
      load_vec<T, kRun>(g + base, gv);
      load_vec<float, kRun>(m_ptr + base, m);
      load_vec<float, kRun>(v_ptr + base, v);
#pragma unroll
      for (int j = 0; j < kRun; ++j) core::adam_element(pv[j], gv[j], m[j], v[j], c);
      store_vec<T, kRun>(p + base, pv);
      store_vec<float, kRun>(m_ptr + base, m);
      store_vec<float, kRun>(v_ptr + base, v);
    } else {
      for (int64_t i = base; i < n && i < base + kRun; ++i) {
        float pi = to_f(p[i]), mi = m_ptr[i], vi = v_ptr[i];
        core::adam_element(pi, to_f(g[i]), mi, vi, c);
        p[i] = from_f<T>(pi);
        m_ptr[i] = mi;
        v_ptr[i] = vi;
      }
    }
  }
}

bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Enough CTAs to fill every SM (8 x 256 threads each); more would only queue.
int grid_for(int64_t work_items, int items_per_cta) {
  static int sms[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  int& count = sms[dev < 64 ? dev : 0];
  if (count == 0) cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev);
  const int64_t want = (work_items + items_per_cta - 1) / items_per_cta;
  return int(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(count) * 8)));
}

}  // namespace

template <typename T>
cudaError_t adam_update_8bit_blockwise(T* p, const T* g, uint8_t* state1, uint8_t* state2,
                                       float* absmax1, float* absmax2, const float* code1,
                                       const float* code2, int64_t n, const core::AdamConfig& c,
                                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t blocks = (n + core::kOptimBlocksize - 1) / core::kOptimBlocksize;
  const int grid = grid_for(blocks, kWarps);
  const bool vec = aligned(p, 16) && aligned(g, 16) && aligned(state1, 8) && aligned(state2, 8);
  if (vec) {
    adam_8bit_blockwise_kernel<T, true><<<grid, kThreads, 0, stream>>>(p, g, state1, state2, absmax1,
                                                                       absmax2, code1, code2, n, c);
  } else {
    adam_8bit_blockwise_kernel<T, false><<<grid, kThreads, 0, stream>>>(p, g, state1, state2, absmax1,
                                                                        absmax2, code1, code2, n, c);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t adam_update_32bit(T* p, const T* g, float* m, float* v, int64_t n,
                              const core::AdamConfig& c, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kRun = 16 / sizeof(T) >= 4 ? 16 / sizeof(T) : 4;
  const int grid = grid_for((n + kRun - 1) / kRun, kThreads);
  const bool vec = aligned(p, 16) && aligned(g, 16) && aligned(m, 16) && aligned(v, 16);
  if (vec) {
    adam_32bit_kernel<T, true><<<grid, kThreads, 0, stream>>>(p, g, m, v, n, c);
  } else {
    adam_32bit_kernel<T, false><<<grid, kThreads, 0, stream>>>(p, g, m, v, n, c);
  }
  return cudaGetLastError();
}

#define KBIT_INSTANTIATE(T)                                                                             \
  template cudaError_t adam_update_32bit<T>(T*, const T*, float*, float*, int64_t,                      \
                                            const core::AdamConfig&, cudaStream_t);                     \
  template cudaError_t adam_update_8bit_blockwise<T>(T*, const T*, uint8_t*, uint8_t*, float*, float*,  \
                                                     const float*, const float*, int64_t,               \
                                                     const core::AdamConfig&, cudaStream_t);
KBIT_INSTANTIATE(float)
KBIT_INSTANTIATE(core::half)
KBIT_INSTANTIATE(core::bfloat16)
#undef KBIT_INSTANTIATE

}  // namespace kbit::cuda
