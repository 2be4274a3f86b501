// 4-bit blockwise quantize / dequantize (NF4, FP4), byte-exact with bitsandbytes.
//
// Quantize: the walk of blockwise_walk.cuh (a thread owns 8 consecutive elements, one 16-byte load
// for 16-bit inputs, and writes their 4 packed bytes; min(blocksize / 8, 32) lanes share a block's
// absmax through shuffles; larger blocks take a warp and are read twice). Scaling multiplies by the
// float32 reciprocal of absmax, as bitsandbytes does, so an all-zero block encodes NaN -> index 0
// (it still dequantizes to 0), and the pad nibble of an odd count is the code of 0.0 (0x7 for NF4).
// NF4 is encoded through a bucket table (one read and one compare, below).
//
// Dequantize: a lane-step turns 4 packed bytes into 8 16-bit outputs (2 into 4 floats): 16 bytes
// per lane, so each warp store is 512 contiguous bytes. A step never crosses a quantization block
// (blocksize >= 32), so one scale per step; codes come from a 16-entry float table in shared memory
// (distinct banks, no conflicts).
#include "cuda/blockwise_4bit.cuh"
#include "cuda/blockwise_walk.cuh"
#include "cuda/common.cuh"

namespace kbit::cuda {

namespace {

constexpr int kThreads = 256;

// NF4 by bucket. A scaled value x in [-1, 1] falls in bucket round(16 x + 16) (0..32, 1/16 wide),
// which one float add leaves in the low mantissa bits (x * 16 + 1.5 * 2^23 + 16, rounded to an
// integer there). NF4's 15 thresholds lie at least 0.08 apart, so a bucket holds at most one, and x
// encodes as the count of thresholds in lower buckets plus whether x > its own bucket's threshold:
// one shared-memory read and one compare instead of a 4-level search (three dependent reads and
// twice the instructions). A NaN x (an all-zero block scales 0 by inf) makes the FMA return the
// GPU's canonical NaN, 0x7fffffff, whose low bits select entry 63: no threshold, none below, so it
// encodes as 0, as bitsandbytes' search does. Entries 33..62 (past 1) are never reached.
struct alignas(8) Nf4Bucket {
  int below;  // thresholds in lower buckets
  float thr;  // this bucket's threshold, or inf
};
constexpr float kBucketMagic = 12582912.0f;  // 1.5 * 2^23

__device__ __forceinline__ int nf4_bucket(float x) {
  return (__float_as_int(fmaf(x, 16.0f, kBucketMagic + 16.0f)) - __float_as_int(kBucketMagic)) & 63;
}

// Threads 0..63 each fill one entry (the caller syncs).
__device__ __forceinline__ void fill_nf4_buckets(Nf4Bucket* t) {
  const int b = threadIdx.x;
  if (b >= 64) return;
  int below = 0;
  float thr = INFINITY;
  for (int k = 0; k < 15; ++k) {
    const int kb = nf4_bucket(kNF4Mid[k]);
    below += kb < b;
    if (kb == b) thr = kNF4Mid[k];
  }
  t[b] = Nf4Bucket{b == 63 ? 0 : below, thr};
}

__device__ __forceinline__ uint32_t encode_nf4(float x, const Nf4Bucket* t) {
  const Nf4Bucket e = t[nf4_bucket(x)];
  return uint32_t(e.below) + (x > e.thr ? 1u : 0u);
}

// Encodes 8 scaled elements and stores their 4 bytes at packed[i/2 ...], clipped to ceil(n/2).
__device__ __forceinline__ void encode_store8(const float (&v)[8], float inv, int qt,
                                              const Nf4Bucket* buckets, uint8_t* packed, int64_t i,
                                              int64_t n) {
  uint32_t word = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float x = v[e] * inv;
    const uint32_t q = qt == 0 ? encode_nf4(x, buckets) : encode_fp4(x);
    // Element 2j -> high nibble of byte j, 2j+1 -> low nibble.
    word |= q << (8 * (e / 2) + ((e & 1) ? 0 : 4));
  }
  if (i + 8 <= n) {
    *reinterpret_cast<uint32_t*>(packed + i / 2) = word;
  } else {
    for (int b = 0; b < 4; ++b)
      if (i + 2 * b < n) packed[i / 2 + b] = uint8_t(word >> (8 * b));
  }
}

// 8 blocks per SM (32 registers): at 39 registers and 6 blocks the 16-bit kernel measured 3-9% slower.
template <typename T>
__global__ void __launch_bounds__(kThreads, 8) quantize_4bit_kernel(const T* __restrict__ A, int64_t n,
                                                                 int bs_log2, int qt, bool vec,
                                                                 uint8_t* __restrict__ packed,
                                                                 float* __restrict__ absmax) {
  __shared__ Nf4Bucket buckets[64];
  fill_nf4_buckets(buckets);
  __syncthreads();

  quantize_blocks<kThreads>(A, n, bs_log2, vec, absmax, [&](const float (&v)[8], float inv, int64_t i) {
    encode_store8(v, inv, qt, buckets, packed, i, n);
  });
}

// Scale of quantization block b (float32 math without FMA contraction, as the reference does).
template <bool DQ>
__device__ __forceinline__ float block_scale(const AbsmaxRef& s, int64_t b, float offset) {
  if constexpr (DQ) {
    const float c = __ldg(s.nested_code + s.qabsmax[b]);
    return __fadd_rn(__fmul_rn(c, __ldg(s.nested_absmax + (b >> s.nested_log2))), offset);
  } else {
    return __ldg(s.absmax + b);
  }
}

// Each lane-step turns kPB packed bytes into 16 bytes of output (8 bf16/fp16 or 4 float), so a
// warp's stores are 512 contiguous bytes; kU independent steps per thread keep enough loads in
// flight. Steps that run past n or meet unaligned pointers take the per-element path.
template <typename T, bool DQ>
__global__ void __launch_bounds__(kThreads) dequantize_4bit_kernel(const uint8_t* __restrict__ packed,
                                                                   AbsmaxRef s, int64_t n, int bs_log2,
                                                                   int qt, bool vec, T* __restrict__ out) {
  constexpr int kE = 16 / sizeof(T);  // elements per step
  constexpr int kPB = kE / 2;         // packed bytes per step
  constexpr int kU = 16 / kPB;        // steps per thread per iteration
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kCode4[qt][threadIdx.x];
  __syncthreads();
  const float offset = DQ ? __ldg(s.nested_offset) : 0.0f;
  dequantize_steps<kThreads, kE, kU, uint32_t>(
      n,
      [&](int64_t st, uint32_t& raw, float& sc) {
        sc = block_scale<DQ>(s, (st * kE) >> bs_log2, offset);
        if (vec && st * kE + kE <= n) {
          if constexpr (kPB == 4) raw = __ldg(reinterpret_cast<const uint32_t*>(packed) + st);
          else raw = __ldg(reinterpret_cast<const uint16_t*>(packed) + st);
        }
      },
      [&](int64_t i0, uint32_t raw, float sc) {
        if (vec && i0 + kE <= n) {
          uint32_t o[4];
          if constexpr (sizeof(T) == 2) {
#pragma unroll
            for (int b = 0; b < 4; ++b) {
              const uint32_t byte = (raw >> (8 * b)) & 0xffu;
              o[b] = pack2<T>(code[byte >> 4] * sc, code[byte & 15] * sc);
            }
          } else {
#pragma unroll
            for (int b = 0; b < 2; ++b) {
              const uint32_t byte = (raw >> (8 * b)) & 0xffu;
              o[2 * b] = __float_as_uint(code[byte >> 4] * sc);
              o[2 * b + 1] = __float_as_uint(code[byte & 15] * sc);
            }
          }
          *reinterpret_cast<uint4*>(out + i0) = make_uint4(o[0], o[1], o[2], o[3]);
        } else {
          for (int e = 0; e < kE && i0 + e < n; ++e) {
            const uint32_t byte = packed[(i0 + e) / 2];
            out[i0 + e] = from_f32<T>(code[(i0 + e) % 2 ? byte & 15 : byte >> 4] * sc);
          }
        }
      });
}

template <typename T>
cudaError_t launch_quantize(const void* A, int64_t n, int64_t blocksize, int qt, uint8_t* packed,
                            float* absmax, cudaStream_t stream) {
  const int64_t span = blocksize >= 256 ? blocksize : 256;
  const int grid = grid_for(ceil_div(n, span), kThreads / 32);
  quantize_4bit_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(A), n,
                                                         log2_exact(blocksize), qt, aligned16(A),
                                                         packed, absmax);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dequantize(const uint8_t* packed, const AbsmaxRef& s, int64_t n, int64_t blocksize,
                              int qt, void* out, cudaStream_t stream) {
  const int grid = grid_for(ceil_div(n, 32), kThreads);  // 32 elements per thread-iteration
  const bool vec = (reinterpret_cast<uintptr_t>(packed) & 3) == 0 && aligned16(out);
  if (s.nested())
    dequantize_4bit_kernel<T, true><<<grid, kThreads, 0, stream>>>(packed, s, n, log2_exact(blocksize),
                                                                   qt, vec, static_cast<T*>(out));
  else
    dequantize_4bit_kernel<T, false><<<grid, kThreads, 0, stream>>>(packed, s, n, log2_exact(blocksize),
                                                                    qt, vec, static_cast<T*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t quantize_4bit(const void* A, DType dtype, int64_t n, int64_t blocksize, int quant_type,
                          uint8_t* packed, float* absmax, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::F32: return launch_quantize<float>(A, n, blocksize, quant_type, packed, absmax, stream);
    case DType::F16: return launch_quantize<__half>(A, n, blocksize, quant_type, packed, absmax, stream);
    case DType::BF16:
      return launch_quantize<__nv_bfloat16>(A, n, blocksize, quant_type, packed, absmax, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t dequantize_4bit(const uint8_t* packed, const AbsmaxRef& scales, int64_t n,
                            int64_t blocksize, int quant_type, void* out, DType dtype,
                            cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  switch (dtype) {
    case DType::F32:
      return launch_dequantize<float>(packed, scales, n, blocksize, quant_type, out, stream);
    case DType::F16:
      return launch_dequantize<__half>(packed, scales, n, blocksize, quant_type, out, stream);
    case DType::BF16:
      return launch_dequantize<__nv_bfloat16>(packed, scales, n, blocksize, quant_type, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kbit::cuda
