// The walks over the data that the blockwise kernels (4-bit and 8-bit) share.
//
// Quantize: each warp takes span = max(256, blocksize) consecutive elements per step of a
// grid-stride loop, a lane 8 consecutive elements at a time. Blocks of up to 256 elements are
// covered by blocksize / 8 lanes, which reduce their absmax through shuffles; larger blocks take the
// whole warp and are read twice (absmax first, then encoding). The caller's encode(v, 1 / absmax, i)
// turns elements [i, i + 8) into output; absmax[block] gets the block's largest magnitude.
//
// Dequantize: steps of kE elements (16 bytes of output, inside one quantization block); a warp
// takes 32 kU consecutive steps per iteration, a lane every 32nd of them, and issues all their
// loads (load(st, raw, scale)) before converting any (emit(first element, raw, scale)), so kU
// loads are in flight.
#pragma once
#include "cuda/common.cuh"

namespace kbit::cuda {

template <int kThreads, typename T, typename Encode>
__device__ __forceinline__ void quantize_blocks(const T* __restrict__ A, int64_t n, int bs_log2, bool vec,
                                                float* __restrict__ absmax, Encode encode) {
  const int lane = threadIdx.x & 31;
  const int64_t bs = int64_t(1) << bs_log2;
  const int group = bs >= 256 ? 32 : int(bs / 8);  // lanes per quantization block
  const int64_t span = bs >= 256 ? bs : 256;
  const int iters = int(span / 256);  // vectors per lane per block
  const int64_t warps = ceil_div(n, span);
  const int64_t stride = int64_t(gridDim.x) * (kThreads / 32);

  // One 256-element span: elements [i, i + 8) are this lane's; absmax over the group, then encode.
  auto small_block = [&](int64_t i, const float (&v)[8]) {
    float m = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(v[e]));
    // All five shuffles, kept only inside the group: a loop over run-time offsets (and
    // lane % group below) cost ~40 instructions per 8 elements, a sixth of the 4-bit kernel's.
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const float o = __shfl_xor_sync(0xffffffffu, m, off);
      if (off < group) m = fmaxf(m, o);
    }
    if (i < n) {
      if ((lane & (group - 1)) == 0) absmax[i >> bs_log2] = m;
      encode(v, __frcp_rn(m), i);
    }
  };
  const int64_t first = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if constexpr (sizeof(T) == 2) {
    if (iters == 1) {
      // Two spans per iteration, both 16-byte loads issued before either is used: with one load
      // (16 bytes) per thread in flight, 16-bit inputs left DRAM under-used where float32 inputs
      // (two loads) did not.
      for (int64_t w = first; w < warps; w += 2 * stride) {
        const int64_t ia = w * span + lane * 8, ib = ia + stride * span;
        const bool fa = vec && ia + 8 <= n, fb = vec && ib + 8 <= n;
        uint4 ra = make_uint4(0, 0, 0, 0), rb = ra;
        if (fa) ra = __ldg(reinterpret_cast<const uint4*>(A + ia));
        if (fb) rb = __ldg(reinterpret_cast<const uint4*>(A + ib));
        float v[8];
        if (fa) unpack8<T>(ra, v);
        else load8(A, ia, n, vec, v);
        small_block(ia, v);
        if (w + stride >= warps) break;  // the same for the whole warp
        if (fb) unpack8<T>(rb, v);
        else load8(A, ib, n, vec, v);
        small_block(ib, v);
      }
      return;
    }
  }
  for (int64_t w = first; w < warps; w += stride) {
    const int64_t base = w * span;
    if (iters == 1) {
      float v[8];
      load8(A, base + lane * 8, n, vec, v);
      small_block(base + lane * 8, v);
    } else {
      float m = 0.0f;
      for (int it = 0; it < iters; ++it) {
        float v[8];
        load8(A, base + (it * 32 + lane) * 8, n, vec, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(v[e]));
      }
      for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
      if (lane == 0) absmax[base >> bs_log2] = m;
      const float inv = __frcp_rn(m);
      for (int it = 0; it < iters; ++it) {
        const int64_t i = base + (it * 32 + lane) * 8;
        if (i >= n) break;
        float v[8];
        load8(A, i, n, vec, v);
        encode(v, inv, i);
      }
    }
  }
}

template <int kThreads, int kE, int kU, typename Raw, typename Load, typename Emit>
__device__ __forceinline__ void dequantize_steps(int64_t n, Load load, Emit emit) {
  const int64_t steps = ceil_div(n, kE);
  const int64_t nthreads = int64_t(gridDim.x) * kThreads;
  const int lane = threadIdx.x & 31;
  const int64_t warp_first = (int64_t(blockIdx.x) * kThreads + threadIdx.x - lane) * kU;
  for (int64_t base = warp_first + lane; base < steps; base += nthreads * kU) {
    Raw raw[kU];
    float sc[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t st = base + u * 32;
      raw[u] = Raw{};
      sc[u] = 0.0f;
      if (st < steps) load(st, raw[u], sc[u]);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t st = base + u * 32;
      if (st >= steps) break;
      emit(st * kE, raw[u], sc[u]);
    }
  }
}

}  // namespace kbit::cuda
