// The previous 8-bit Adam kernel, kept only to compare it with the lookup kernel of optim_adam.cu on
// the same machine (KBIT_OPTIM_KERNEL=tree; see adam_update_8bit_blockwise). Same results, bit for bit.
//
// One warp owns one 256-element quantization block, each lane 8 consecutive elements; the new states
// are rounded by an 8-level search of the midpoints' Eytzinger tree in shared memory (16 dependent
// shared loads per element), which bounds it at ~7.4 ms per 1B parameters on an H100.
#include <algorithm>

#include "cuda/optim_adam.cuh"
#include "cuda/optim_common.cuh"

namespace kbit::cuda {
namespace {

using optim::from_f;
using optim::load_vec;
using optim::store_vec;
using optim::to_f;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerLane = 8;
static_assert(32 * kPerLane == core::kOptimBlocksize, "a warp covers one quantization block");

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

// kVec: every pointer is aligned for the vector loads; the last, partial block is always scalar.
// At most 64 registers, so that 4 CTAs (32 warps) fit on an SM to keep enough loads in flight.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, 4)
adam_8bit_tree_kernel(T* __restrict__ p, const T* __restrict__ g, uint8_t* __restrict__ state1,
                      uint8_t* __restrict__ state2, float* __restrict__ absmax1, float* __restrict__ absmax2,
                      const float* __restrict__ code1, const float* __restrict__ code2, int64_t n,
                      core::AdamConfig c) {
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

}  // namespace

template <typename T>
cudaError_t adam_update_8bit_tree(T* p, const T* g, uint8_t* state1, uint8_t* state2, float* absmax1,
                                  float* absmax2, const float* code1, const float* code2, int64_t n,
                                  const core::AdamConfig& c, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t blocks = (n + core::kOptimBlocksize - 1) / core::kOptimBlocksize;
  const int64_t want = (blocks + kWarps - 1) / kWarps;
  const int grid = int(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(optim::sm_count()) * 8)));
  const bool vec = optim::aligned(p, 16) && optim::aligned(g, 16) && optim::aligned(state1, 8) &&
                   optim::aligned(state2, 8);
  if (vec) {
    adam_8bit_tree_kernel<T, true><<<grid, kThreads, 0, stream>>>(p, g, state1, state2, absmax1, absmax2,
                                                                  code1, code2, n, c);
  } else {
    adam_8bit_tree_kernel<T, false><<<grid, kThreads, 0, stream>>>(p, g, state1, state2, absmax1, absmax2,
                                                                   code1, code2, n, c);
  }
  return cudaGetLastError();
}

#define KBIT_INSTANTIATE(T)                                                                            \
  template cudaError_t adam_update_8bit_tree<T>(T*, const T*, uint8_t*, uint8_t*, float*, float*,      \
                                                const float*, const float*, int64_t,                   \
                                                const core::AdamConfig&, cudaStream_t);
KBIT_INSTANTIATE(float)
KBIT_INSTANTIATE(core::half)
KBIT_INSTANTIATE(core::bfloat16)
#undef KBIT_INSTANTIATE

}  // namespace kbit::cuda
