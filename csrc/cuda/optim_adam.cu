// Fused Adam / AdamW update kernels. The 8-bit kernel moves 2*sizeof(T) + sizeof(T) + 4 bytes per
// parameter (p read+write, g read, two state bytes read+write): 10 bytes for bf16, so 1B parameters
// need ~3.4 ms at an H100's 3.35 TB/s. The 32-bit kernel moves 3*sizeof(T) + 16.
//
// 8-bit decomposition. One warp owns one 256-element quantization block per step of its loop, each
// lane 8 consecutive elements: a warp reads 256 contiguous elements of every tensor (16-byte loads)
// and the block's new absmax is one warp reduction, with no __syncthreads in the loop. A CTA is
// 1024 threads (32 warps of at most 64 registers: the whole register file), one per SM, striding
// over the blocks.
//
// Instructions, not bytes, set the pace: per element ~65 for the Adam math (the IEEE sqrt and two
// divisions that keep the bits equal to the CPU's take half of it), ~12 to load, convert and decode
// both states (two shared loads), and ~17 to round each new state to its code. 1B elements at ~115
// instructions are ~4 ms of issue on an H100 (132 SMs x 4 warp instructions per clock), about the
// memory time. The rounding is core::code_lookup: one shared load of a 24 KB bucket table per state
// (core/code_lookup.h); it replaced a search of a tree of the midpoints (8 dependent shared loads
// per state), which was 1.7x slower with bf16 parameters (benchmarks/RESULTS.md). Each CTA fills its
// two tables (48 KB of shared memory) once, in parallel, before its loop (~12 buckets per thread).
//
// Loads in flight. A warp loads its block (1.5 KB for bf16) and then computes for ~1000 cycles; to
// keep DRAM busy meanwhile, each lane first asks L2 to prefetch one 128-byte line of the warp's next
// block (p, g, both states, both absmax), so that the next step's loads hit L2. That keeps ~1.5 KB
// per warp, ~48 KB per SM, in flight (an H100 needs ~25-32 KB) at no register cost.
//
// The element math is core::adam_element, shared with the CPU reference, with mul/add rounded
// separately (no FMA) so both give the same bits; the rounding gives nearest_in_tree's indices.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "core/code_lookup.h"
#include "cuda/dynamic_smem.cuh"
#include "cuda/device_info.h"
#include "cuda/optim_adam.cuh"
#include "cuda/optim_common.cuh"

namespace kbit::cuda {
namespace {

using optim::from_f;
using optim::load_vec;
using optim::store_vec;
using optim::to_f;
using optim::Vec;

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kPerLane = 8;  // 32 lanes x 8 = one 256-element quantization block per warp
constexpr int k32Threads = 256;
static_assert(32 * kPerLane == core::kOptimBlocksize, "a warp covers one quantization block");

// A CTA's shared memory: both codes, their midpoints (mid[255] = +inf) and their lookup tables.
struct Tables {
  uint32_t lookup1[core::kLookupSlots], lookup2[core::kLookupSlots];
  float code1[256], code2[256], mid1[256], mid2[256];
};

// Max over the warp of x >= 0 (never NaN): such floats order like their bits, so one integer reduce.
__device__ __forceinline__ float warp_max_nonneg(float x) {
#if __CUDA_ARCH__ >= 800
  return __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(x)));
#else
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
#endif
}

__device__ __forceinline__ uint32_t byte_of(const uint32_t* w, int j) {
  return (w[j / 4] >> (8 * (j % 4))) & 0xffu;
}

// L2 prefetch of a warp's next block: lane l asks for one 128-byte line of it, p's lines first, then
// g's, each state's two, and the two absmax words. A lane's line sits at base + b * step for block b;
// lanes past those lines have base == nullptr. A hint only: nothing waits on it.
struct PrefetchLane {
  const char* base;
  int step;
};

template <typename T>
__device__ __forceinline__ PrefetchLane prefetch_lane(const T* p, const T* g, const uint8_t* state1,
                                                      const uint8_t* state2, const float* absmax1,
                                                      const float* absmax2, int lane) {
  constexpr int kLines = core::kOptimBlocksize * int(sizeof(T)) / 128;  // per parameter tensor
  constexpr int kStep = core::kOptimBlocksize * int(sizeof(T));
  static_assert(2 * kLines + 6 <= 32, "one line per lane");
  auto c = [](const void* q) { return static_cast<const char*>(q); };
  if (lane < kLines) return {c(p) + 128 * lane, kStep};
  if (lane < 2 * kLines) return {c(g) + 128 * (lane - kLines), kStep};
  if (lane < 2 * kLines + 2) return {c(state1) + 128 * (lane - 2 * kLines), core::kOptimBlocksize};
  if (lane < 2 * kLines + 4) return {c(state2) + 128 * (lane - 2 * kLines - 2), core::kOptimBlocksize};
  if (lane == 2 * kLines + 4) return {c(absmax1), 4};
  if (lane == 2 * kLines + 5) return {c(absmax2), 4};
  return {nullptr, 0};
}

__device__ __forceinline__ void prefetch_l2(const PrefetchLane& l, int64_t b) {
  if (l.base != nullptr) asm volatile("prefetch.global.L2 [%0];" ::"l"(l.base + b * l.step));
}

// One quantization block b: decode both states, Adam, new absmax, re-encode. kFull: the block is
// whole and every pointer aligned for vector access; otherwise elements are read one by one and
// those past n are left alone (their zero states do not raise the absmax).
template <typename T, bool kFull>
__device__ __forceinline__ void update_block(T* p, const T* g, uint8_t* state1, uint8_t* state2,
                                             float* absmax1, float* absmax2, const Tables& s, int64_t b,
                                             int lane, int64_t n, const core::AdamConfig& c) {
  const int64_t base = b * core::kOptimBlocksize + lane * kPerLane;
  float pv[kPerLane], gv[kPerLane];
  uint32_t q1[2] = {0, 0}, q2[2] = {0, 0};
  if (kFull) {
    // Streaming loads (read once): they do not push the prefetched lines of the next blocks out of L2.
    Vec<T, kPerLane> vp, vg;
#pragma unroll
    for (int w = 0; w < Vec<T, kPerLane>::kWords; ++w) {
      vp.words[w] = __ldcs(reinterpret_cast<const uint4*>(p + base) + w);
      vg.words[w] = __ldcs(reinterpret_cast<const uint4*>(g + base) + w);
    }
    const uint2 r1 = __ldcs(reinterpret_cast<const uint2*>(state1 + base));
    const uint2 r2 = __ldcs(reinterpret_cast<const uint2*>(state2 + base));
    q1[0] = r1.x, q1[1] = r1.y, q2[0] = r2.x, q2[1] = r2.y;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) pv[j] = to_f(vp.val[j]), gv[j] = to_f(vg.val[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const bool in = base + j < n;
      pv[j] = in ? to_f(p[base + j]) : 0.0f;
      gv[j] = in ? to_f(g[base + j]) : 0.0f;
      q1[j / 4] |= uint32_t(in ? state1[base + j] : 0) << (8 * (j % 4));
      q2[j / 4] |= uint32_t(in ? state2[base + j] : 0) << (8 * (j % 4));
    }
  }
  const float a1 = absmax1[b], a2 = absmax2[b];
  float m[kPerLane], v[kPerLane];
  float mx1 = 0.0f, mx2 = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    if (kFull || base + j < n) {
      m[j] = core::mul_rn(s.code1[byte_of(q1, j)], a1);
      v[j] = core::mul_rn(s.code2[byte_of(q2, j)], a2);
      core::adam_element(pv[j], gv[j], m[j], v[j], c);
    } else {
      m[j] = v[j] = 0.0f;
    }
    mx1 = fmaxf(mx1, fabsf(m[j]));
    mx2 = fmaxf(mx2, fabsf(v[j]));
  }
  mx1 = warp_max_nonneg(mx1);
  mx2 = warp_max_nonneg(mx2);
  // An all-zero block keeps absmax 0; its values encode as the code's zero.
  const float inv1 = mx1 > 0.0f ? 1.0f / mx1 : 0.0f;
  const float inv2 = mx2 > 0.0f ? 1.0f / mx2 : 0.0f;
  // Table answers for all 16 values first, one branch for all: a flagged answer (>= 256, never for
  // the dynamic maps) sends the lane through the exact lookup of every value again.
  uint32_t o1[2] = {0, 0}, o2[2] = {0, 0}, flagged = 0;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const uint32_t r1 = core::code_lookup_table(s.lookup1, core::mul_rn(m[j], inv1));
    const uint32_t r2 = core::code_lookup_table(s.lookup2, core::mul_rn(v[j], inv2));
    flagged |= r1 | r2;
    o1[j / 4] |= r1 << (8 * (j % 4));
    o2[j / 4] |= r2 << (8 * (j % 4));
  }
  if (flagged >= 256u) {
    o1[0] = o1[1] = o2[0] = o2[1] = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      o1[j / 4] |= uint32_t(core::code_lookup(s.lookup1, s.mid1, core::mul_rn(m[j], inv1))) << (8 * (j % 4));
      o2[j / 4] |= uint32_t(core::code_lookup(s.lookup2, s.mid2, core::mul_rn(v[j], inv2))) << (8 * (j % 4));
    }
  }
  if (lane == 0) {
    absmax1[b] = mx1;
    absmax2[b] = mx2;
  }
  if (kFull) {
    Vec<T, kPerLane> vp;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) vp.val[j] = from_f<T>(pv[j]);
#pragma unroll
    for (int w = 0; w < Vec<T, kPerLane>::kWords; ++w) __stcs(reinterpret_cast<uint4*>(p + base) + w, vp.words[w]);
    __stcs(reinterpret_cast<uint2*>(state1 + base), make_uint2(o1[0], o1[1]));
    __stcs(reinterpret_cast<uint2*>(state2 + base), make_uint2(o2[0], o2[1]));
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (base + j < n) {
        p[base + j] = from_f<T>(pv[j]);
        state1[base + j] = uint8_t(byte_of(o1, j));
        state2[base + j] = uint8_t(byte_of(o2, j));
      }
    }
  }
}

// kVec: every pointer is aligned for the vector loads, so all whole blocks take the vector path;
// the last, partial block (and every block when !kVec) is done element by element.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, 1)
adam_8bit_lookup_kernel(T* __restrict__ p, const T* __restrict__ g, uint8_t* __restrict__ state1,
                        uint8_t* __restrict__ state2, float* __restrict__ absmax1,
                        float* __restrict__ absmax2, const float* __restrict__ code1,
                        const float* __restrict__ code2, int64_t n, core::AdamConfig c) {
  extern __shared__ __align__(16) unsigned char smem[];
  Tables& s = *reinterpret_cast<Tables*>(smem);
  const int t = threadIdx.x;
  if (t < 256) s.code1[t] = code1[t];
  else if (t < 512) s.code2[t - 256] = code2[t - 256];
  __syncthreads();
  // Same expression as core::code_search_tree, so the midpoints match the CPU reference's.
  if (t < 256) s.mid1[t] = core::code_midpoint(s.code1, t);
  else if (t < 512) s.mid2[t - 256] = core::code_midpoint(s.code2, t - 256);
  __syncthreads();
  // 12 buckets per thread, walked in order (one binary search, then a few steps per bucket).
  constexpr int kChunk = 2 * core::kLookupSlots / kThreads;
  static_assert(kChunk * kThreads == 2 * core::kLookupSlots && core::kLookupBuckets % kChunk == 0,
                "every chunk of buckets lies in one table and one sign");
  if (t * kChunk < core::kLookupSlots) core::code_lookup_fill(s.mid1, s.lookup1, t * kChunk, kChunk);
  else core::code_lookup_fill(s.mid2, s.lookup2, t * kChunk - core::kLookupSlots, kChunk);
  __syncthreads();

  const int lane = t & 31;
  const int64_t blocks = (n + core::kOptimBlocksize - 1) / core::kOptimBlocksize;
  const int64_t whole = kVec ? n / core::kOptimBlocksize : 0;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  int64_t b = int64_t(blockIdx.x) * kWarps + t / 32;
  const PrefetchLane pf = prefetch_lane(p, g, state1, state2, absmax1, absmax2, lane);
  for (; b < whole; b += stride) {
    if (b + stride < whole) prefetch_l2(pf, b + stride);
    update_block<T, true>(p, g, state1, state2, absmax1, absmax2, s, b, lane, n, c);
  }
  for (; b < blocks; b += stride) update_block<T, false>(p, g, state1, state2, absmax1, absmax2, s, b, lane, n, c);
}

// 32-bit states: each thread updates runs of kRun elements (kRun * sizeof(T) a multiple of 16).
template <typename T, bool kVec>
__global__ void __launch_bounds__(k32Threads)
adam_32bit_kernel(T* __restrict__ p, const T* __restrict__ g, float* __restrict__ m_ptr,
                  float* __restrict__ v_ptr, int64_t n, core::AdamConfig c) {
  constexpr int kRun = 16 / sizeof(T) >= 4 ? 16 / sizeof(T) : 4;  // 4 floats or 8 halves
  const int64_t runs = (n + kRun - 1) / kRun;
  const int64_t stride = int64_t(gridDim.x) * k32Threads;
  for (int64_t r = int64_t(blockIdx.x) * k32Threads + threadIdx.x; r < runs; r += stride) {
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

}  // namespace

template <typename T>
cudaError_t adam_update_8bit_blockwise(T* p, const T* g, uint8_t* state1, uint8_t* state2,
                                       float* absmax1, float* absmax2, const float* code1,
                                       const float* code2, int64_t n, const core::AdamConfig& c,
                                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t blocks = (n + core::kOptimBlocksize - 1) / core::kOptimBlocksize;
  const int grid = int(std::min<int64_t>((blocks + kWarps - 1) / kWarps, sm_count()));
  const bool vec = optim::aligned(p, 16) && optim::aligned(g, 16) && optim::aligned(state1, 8) &&
                   optim::aligned(state2, 8);
  auto kernel = vec ? adam_8bit_lookup_kernel<T, true> : adam_8bit_lookup_kernel<T, false>;
  static bool done[2][64] = {};  // the tables take more than the default 48 KB
  cudaError_t err = allow_dynamic_smem(kernel, int(sizeof(Tables)), done[vec ? 1 : 0]);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, sizeof(Tables), stream>>>(p, g, state1, state2, absmax1, absmax2, code1, code2, n, c);
  return cudaGetLastError();
}

template <typename T>
cudaError_t adam_update_32bit(T* p, const T* g, float* m, float* v, int64_t n,
                              const core::AdamConfig& c, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kRun = 16 / sizeof(T) >= 4 ? 16 / sizeof(T) : 4;
  const int64_t want = ((n + kRun - 1) / kRun + k32Threads - 1) / k32Threads;
  const int grid = int(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(sm_count()) * 8)));
  const bool vec =
      optim::aligned(p, 16) && optim::aligned(g, 16) && optim::aligned(m, 16) && optim::aligned(v, 16);
  if (vec) {
    adam_32bit_kernel<T, true><<<grid, k32Threads, 0, stream>>>(p, g, m, v, n, c);
  } else {
    adam_32bit_kernel<T, false><<<grid, k32Threads, 0, stream>>>(p, g, m, v, n, c);
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
