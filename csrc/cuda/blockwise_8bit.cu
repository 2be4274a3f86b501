// 8-bit blockwise quantize / dequantize with a sorted 256-value code, byte-exact with
// bitsandbytes.
//
// Quantize: the walk of blockwise_walk.cuh, shared with the 4-bit kernel (a thread owns 8
// consecutive elements, min(blocksize / 8, 32) lanes share a block's absmax through shuffles, and
// larger blocks take a warp and are read twice). Each element is scaled by the float32 reciprocal of
// absmax and encoded with bitsandbytes' search: 7 halving steps from pivot 127 over the code held
// in shared memory, then the nearer of the final pivot and the neighbour that bracketed x, decided
// against the float32 midpoint. (That search never reaches index 255 from above and settles ties and
// NaN the way bitsandbytes does, which a plain nearest-value search would not.)
// For a code whose midpoints lie strictly above their lower neighbours (every sorted code of
// distinct, finite values a few ulps apart; the dynamic map), that search's answer is the number of
// the 255 midpoints x has passed, where passing midpoint j (between code[j - 1] and code[j]) means
// x > mid for odd j and x >= mid for even j (the landing index is even). So the kernel counts them:
// an 8-level search over the thresholds in breadth-first order (Eytzinger), where each level's
// entries are contiguous. Searched in sorted order, a level's candidates sit 2^k words apart, all
// in one or two banks, and the warp's loads serialized up to 8 ways; this layout has at most 4.
// Other codes keep bitsandbytes' search.
//
// Dequantize: a lane-step writes 16 bytes (8 16-bit or 4 float outputs, always inside one block
// since blocksize >= 32), so warp stores are coalesced.
#include "cuda/blockwise_8bit.cuh"
#include "cuda/blockwise_walk.cuh"
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

// The next float above finite x: x >= next_up(m) is x > m for every non-NaN x.
__device__ __forceinline__ float next_up(float x) {
  if (x == 0.0f) return __uint_as_float(1u);  // from -0 as from +0
  return __uint_as_float(__float_as_uint(x) + (x > 0.0f ? 1 : -1));
}

// The thresholds of the counting encoder (above) in breadth-first order: node i (1..255) has
// children 2i and 2i + 1. Threshold j (1-based rank) sits at level 7 - ctz(j). Each block builds it;
// returns whether the code qualifies (all threads).
__device__ __forceinline__ bool build_thresholds(const float* code, float* tree) {
  bool ok = true;
  for (int j = threadIdx.x + 1; j < 256; j += blockDim.x) {
    const float mid = (code[j - 1] + code[j]) * 0.5f;
    ok = ok && code[j - 1] < mid;  // false for NaN, unsorted or repeated values
    const int tz = __ffs(j) - 1;
    tree[(1 << (7 - tz)) + (j >> (tz + 1))] = (j & 1) ? next_up(mid) : mid;
  }
  return __syncthreads_and(ok);
}

__device__ __forceinline__ uint32_t encode_counting(float x, const float* tree) {
  uint32_t i = 1;
#pragma unroll
  for (int level = 0; level < 8; ++level) i = 2 * i + (x >= tree[i] ? 1u : 0u);
  return i - 256;  // NaN passes nothing: 0
}

template <bool kCounting>
__device__ __forceinline__ void encode_store8(const float (&v)[8], float inv, const float* table,
                                              uint8_t* q, int64_t i, int64_t n, bool vec) {
  uint32_t lo = 0, hi = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const uint32_t c = kCounting ? encode_counting(v[e] * inv, table) : encode_8bit(v[e] * inv, table);
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
  __shared__ float code[256], tree[256];
  for (int i = threadIdx.x; i < 256; i += kThreads) code[i] = code_g[i];
  __syncthreads();
  if (build_thresholds(code, tree)) {
    quantize_blocks<kThreads>(A, n, bs_log2, vec, absmax, [&](const float (&v)[8], float inv, int64_t i) {
      encode_store8<true>(v, inv, tree, q, i, n, vec);
    });
  } else {
    quantize_blocks<kThreads>(A, n, bs_log2, vec, absmax, [&](const float (&v)[8], float inv, int64_t i) {
      encode_store8<false>(v, inv, code, q, i, n, vec);
    });
  }
}

// A lane-step turns kE codes into 16 bytes of output (8 bf16/fp16 or 4 float): coalesced 512-byte
// warp stores; kU independent steps per thread keep loads in flight.
template <typename T>
__global__ void __launch_bounds__(kThreads) dequantize_8bit_kernel(const uint8_t* __restrict__ q,
                                                                   const float* __restrict__ absmax,
                                                                   const float* __restrict__ code_g,
                                                                   int64_t n, int bs_log2, bool vec,
                                                                   T* __restrict__ out) {
  constexpr int kE = 16 / sizeof(T);
  constexpr int kU = 4;
  __shared__ float code[256];
  for (int i = threadIdx.x; i < 256; i += kThreads) code[i] = code_g[i];
  __syncthreads();
  dequantize_steps<kThreads, kE, kU, uint2>(
      n,
      [&](int64_t st, uint2& raw, float& sc) {
        sc = __ldg(absmax + ((st * kE) >> bs_log2));
        if (vec && st * kE + kE <= n) {
          if constexpr (kE == 8) raw = __ldg(reinterpret_cast<const uint2*>(q) + st);
          else raw.x = __ldg(reinterpret_cast<const uint32_t*>(q) + st);
        }
      },
      [&](int64_t i0, uint2 raw, float sc) {
        if (vec && i0 + kE <= n) {
          float v[8];
#pragma unroll
          for (int e = 0; e < kE; ++e) v[e] = code[((e < 4 ? raw.x : raw.y) >> (8 * (e % 4))) & 0xffu] * sc;
          uint4 o;
          if constexpr (sizeof(T) == 2)
            o = make_uint4(pack2<T>(v[0], v[1]), pack2<T>(v[2], v[3]), pack2<T>(v[4], v[5]), pack2<T>(v[6], v[7]));
          else
            o = make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
          *reinterpret_cast<uint4*>(out + i0) = o;
        } else {
          for (int e = 0; e < kE && i0 + e < n; ++e) out[i0 + e] = from_f32<T>(code[q[i0 + e]] * sc);
        }
      });
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
  const int grid = grid_for(ceil_div(n, 4 * 16 / sizeof(T)), kThreads);
  const bool vec = (reinterpret_cast<uintptr_t>(q) & 7) == 0 && aligned16(out);
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
