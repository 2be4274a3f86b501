// 8-bit blockwise quantize / dequantize with a sorted 256-value code, byte-exact with
// bitsandbytes.
//
// Quantize: the same decomposition as the 4-bit kernel (blockwise_4bit.cu): a thread owns 8
// consecutive elements, min(blocksize / 8, 32) lanes share a block's absmax through shuffles, and
// larger blocks take a warp and are read twice. Each element is scaled by the float32 reciprocal of
// absmax and encoded with bitsandbytes' search: 7 halving steps from pivot 127 over the code held
// in shared memory, then the nearer of the final pivot and the neighbour that bracketed x, decided
// against the float32 midpoint. (That search never reaches index 255 from above and settles ties and
// NaN the way bitsandbytes does, which a plain nearest-value search would not.)
//
// Dequantize: a thread owns 16 bytes (16 elements, always inside one block since blocksize >= 32).
#include "cuda/blockwise_8bit.cuh"
#include "cuda/common.cuh"

namespace kbit::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t encode_8bit(float x, const float* code) {
  int pivot = 127, upper_p = 255, lower_p = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
#pragma unroll
  for (int step = 64; step > 0; step >>= 1) {
    if (x > val) {
      lower_p = pivot;
      lower = val;
      pivot += step;
    } else {
      upper_p = pivot;
      upper = val;
      pivot -= step;
    }
    val = code[pivot];
  }
  if (upper_p == 255) upper = code[255];
  if (lower_p == 0) lower = code[0];
  if (x > val) return x > (upper + val) * 0.5f ? upper_p : pivot;
  return x < (lower + val) * 0.5f ? lower_p : pivot;
}

template <typename T>
__device__ __forceinline__ void load8(const T* A, int64_t i, int64_t n, bool vec, float (&v)[8]) {
  if (vec && i + 8 <= n) {
    if constexpr (sizeof(T) == 2) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(A + i));
      const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = to_f32(h[e]);
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

__device__ __forceinline__ void encode_store8(const float (&v)[8], float inv, const float* code,
                                              uint8_t* q, int64_t i, int64_t n, bool vec) {
  uint32_t lo = 0, hi = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const uint32_t c = encode_8bit(v[e] * inv, code);
    if (e < 4) lo |= c << (8 * e);
    else hi |= c << (8 * (e - 4));
  }
  if (vec && i + 8 <= n) {
    *reinterpret_cast<uint2*>(q + i) = make_uint2(lo, hi);
  } else {
    for (int e = 0; e < 8 && i + e < n; ++e) q[i + e] = uint8_t((e < 4 ? lo : hi) >> (8 * (e & 3)));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) quantize_8bit_kernel(const T* __restrict__ A,
                                                                 const float* __restrict__ code_g,
                                                                 int64_t n, int bs_log2, bool vec,
                                                                 uint8_t* __restrict__ q,
                                                                 float* __restrict__ absmax) {
  __shared__ float code[256];
  for (int i = threadIdx.x; i < 256; i += kThreads) code[i] = code_g[i];
  __syncthreads();

  const int lane = threadIdx.x & 31;
  const int64_t bs = int64_t(1) << bs_log2;
  const int group = bs >= 256 ? 32 : int(bs / 8);
  const int64_t span = bs >= 256 ? bs : 256;
  const int iters = int(span / 256);
  const int64_t warps = ceil_div(n, span);
  const int64_t stride = int64_t(gridDim.x) * (kThreads / 32);

  for (int64_t w = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; w < warps; w += stride) {
    const int64_t base = w * span;
    if (iters == 1) {
      const int64_t i = base + lane * 8;
      float v[8];
      load8(A, i, n, vec, v);
      float m = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(v[e]));
      for (int off = group / 2; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
      if (i < n) {
        if (lane % group == 0) absmax[i >> bs_log2] = m;
        encode_store8(v, __frcp_rn(m), code, q, i, n, vec);
      }
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
        encode_store8(v, inv, code, q, i, n, vec);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dequantize_8bit_kernel(const uint8_t* __restrict__ q,
                                                                   const float* __restrict__ absmax,
                                                                   const float* __restrict__ code_g,
                                                                   int64_t n, int bs_log2, bool vec,
                                                                   T* __restrict__ out) {
  __shared__ float code[256];
  for (int i = threadIdx.x; i < 256; i += kThreads) code[i] = code_g[i];
  __syncthreads();
  const int64_t groups = ceil_div(n, 16);
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t g = int64_t(blockIdx.x) * kThreads + threadIdx.x; g < groups; g += stride) {
    const int64_t i0 = g * 16;
    const float sc = __ldg(absmax + (i0 >> bs_log2));
    if (vec && i0 + 16 <= n) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(q) + g);
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
      float v[16];
#pragma unroll
      for (int e = 0; e < 16; ++e) v[e] = code[(w[e / 4] >> (8 * (e % 4))) & 0xffu] * sc;
      if constexpr (sizeof(T) == 2) {
        uint32_t o[8];
#pragma unroll
        for (int p = 0; p < 8; ++p) o[p] = pack2<T>(v[2 * p], v[2 * p + 1]);
        uint4* dst = reinterpret_cast<uint4*>(out + i0);
        dst[0] = make_uint4(o[0], o[1], o[2], o[3]);
        dst[1] = make_uint4(o[4], o[5], o[6], o[7]);
      } else {
        float4* dst = reinterpret_cast<float4*>(out + i0);
#pragma unroll
        for (int p = 0; p < 4; ++p) dst[p] = make_float4(v[4 * p], v[4 * p + 1], v[4 * p + 2], v[4 * p + 3]);
      }
    } else {
      for (int e = 0; e < 16 && i0 + e < n; ++e) out[i0 + e] = from_f32<T>(code[q[i0 + e]] * sc);
    }
  }
}

int grid_for(int64_t items, int per_block) {
  const int64_t blocks = ceil_div(items, per_block);
  const int64_t cap = int64_t(sm_count()) * 16;
  return int(blocks < cap ? (blocks > 0 ? blocks : 1) : cap);
}

template <typename T>
cudaError_t launch_quantize(const void* A, const float* code, int64_t n, int64_t blocksize, uint8_t* q,
                            float* absmax, cudaStream_t stream) {
  const int64_t span = blocksize >= 256 ? blocksize : 256;
  const int grid = grid_for(ceil_div(n, span), kThreads / 32);
  const bool vec = aligned16(A) && (reinterpret_cast<uintptr_t>(q) & 7) == 0;
  quantize_8bit_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(A), code, n,
                                                         log2_exact(blocksize), vec, q, absmax);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dequantize(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                              int64_t blocksize, void* out, cudaStream_t stream) {
  const int grid = grid_for(ceil_div(n, 16), kThreads);
  const bool vec = aligned16(q) && aligned16(out);
  dequantize_8bit_kernel<T><<<grid, kThreads, 0, stream>>>(q, absmax, code, n, log2_exact(blocksize),
                                                           vec, static_cast<T*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t quantize_blockwise(const void* A, DType dtype, const float* code, int64_t n,
                               int64_t blocksize, uint8_t* q, float* absmax, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::F32: return launch_quantize<float>(A, code, n, blocksize, q, absmax, stream);
    case DType::F16: return launch_quantize<__half>(A, code, n, blocksize, q, absmax, stream);
    case DType::BF16: return launch_quantize<__nv_bfloat16>(A, code, n, blocksize, q, absmax, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t dequantize_blockwise(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                                 int64_t blocksize, void* out, DType dtype, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::F32: return launch_dequantize<float>(q, absmax, code, n, blocksize, out, stream);
    case DType::F16: return launch_dequantize<__half>(q, absmax, code, n, blocksize, out, stream);
    case DType::BF16: return launch_dequantize<__nv_bfloat16>(q, absmax, code, n, blocksize, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kbit::cuda
