// LLM.int8() activation quantization on the GPU: row statistics, int8 values and the column
// outlier mask in one pass over A, and the small follow-up that turns the mask into a sorted list.
//
// int8_row_quant: one block of 256 threads per row. Pass 1 reads the row in 16-byte vectors,
// keeps the largest |x| below the threshold (compared as float bit patterns, like the CPU
// reference) and marks outlier columns; the block reduces the maximum; pass 2 writes
// round(x * scale) with scale = 127 * (1 / row_stats), two float32 roundings, bit-identical to
// core/int8_rowwise.cpp. Rows of up to 16 vectors per thread (4096 floats, 32768 16-bit values)
// stay in registers between the passes, with all of a thread's loads issued at once; longer rows
// are read again in pass 2 (from L1/L2: the block just read them, so DRAM sees them once).
// The mask is shared by all rows: with many rows, blocks atomicOr their bits into a cleared mask
// (outliers are rare, so atomics are too); with few rows (decode), extra blocks each own 1024
// columns, read them in every row and write their 32 mask words whole, which needs no clearing
// pass (one launch less on the latency-bound decode path).
//
// int8_outlier_prep: every block ranks the mask's set bits with a block scan (the mask is K/8
// bytes); block 0 writes the sorted list and the count, each thread the ranks of its own mask
// words. Each block gathers its slice of W's first kOutlierGather outlier columns for the fused
// epilogues and, when there are at most kOutlierCompact, of A's and W's outlier columns for
// int8_outlier_matmul (the (row, column) pairs spread over all its threads so the scattered reads
// overlap); and it zeroes q's outlier columns in its slice of rows: up to kOutlierCompact columns
// by plain byte stores from the list (no reads, so nothing waits on memory), past that 8 columns at
// a time by the mask byte that covers them (at most one pass over q, however many columns). For
// few columns that walk was a chain of dependent L2 reads (benchmarks/RESULTS.md, session 12).
#include <algorithm>

#include "cuda/int8_common.cuh"

namespace kbit::cuda {
namespace {

using namespace int8;

constexpr int kThreads = 256;
constexpr int kMaskCols = 1024;        // columns per mask-owning block
constexpr int64_t kMaskBlockRows = 16;  // at most this many rows: mask-owning blocks, no memset

// The i-th element (i a compile-time constant after unrolling) of a 16-byte vector of T.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  static constexpr int kN = 4;
  __device__ static float get(const uint4& u, int i) {
    return __uint_as_float(i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w);
  }
};
__device__ __forceinline__ uint32_t half_word(const uint4& u, int i) {
  const int w = i >> 1;
  const uint32_t x = w == 0 ? u.x : w == 1 ? u.y : w == 2 ? u.z : u.w;
  return (i & 1) ? x >> 16 : x & 0xffffu;
}
template <>
struct Vec<__half> {
  static constexpr int kN = 8;
  __device__ static float get(const uint4& u, int i) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(half_word(u, i))));
  }
};
template <>
struct Vec<__nv_bfloat16> {
  static constexpr int kN = 8;
  __device__ static float get(const uint4& u, int i) { return __uint_as_float(half_word(u, i) << 16); }
};

__device__ __forceinline__ uint32_t block_max(uint32_t m, uint32_t* scratch) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, d));
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = m;
  __syncthreads();
  m = 0;
  for (int w = 0; w < kThreads / 32; ++w) m = max(m, scratch[w]);
  return m;
}

// Every row of an outlier column hits the same mask word: read it from L2 first and only issue
// the atomic when a bit is still missing, else thousands of same-address atomics serialize.
__device__ __forceinline__ void set_bits(uint32_t* word, uint32_t bits) {
  if ((__ldcg(word) & bits) != bits) atomicOr(word, bits);
}

__device__ __forceinline__ int8_t quantize(float x, uint32_t keep_below, float scale) {
  const float v = abs_bits(x) < keep_below ? __fmul_rn(x, scale) : 0.0f;
  return static_cast<int8_t>(max(-127, min(127, __float2int_rn(v))));
}

// Mask-owning block: columns [c0, c0 + kMaskCols) over all rows.
template <typename T, bool kVector>
__device__ void mask_columns(const T* __restrict__ A, int64_t rows, int64_t cols, uint32_t thr,
                             int64_t c0, uint32_t* __restrict__ colmask) {
  __shared__ uint32_t s_mask[kMaskCols / 32];
  if (threadIdx.x < kMaskCols / 32) s_mask[threadIdx.x] = 0;
  __syncthreads();
  if (kVector) {
    constexpr int V = Vec<T>::kN;
    constexpr int kPerRow = kMaskCols / V;  // vectors per row of the block's columns
    constexpr int kRowStep = kThreads / kPerRow;
    const int vi = threadIdx.x % kPerRow;
    const int64_t c = c0 + int64_t(vi) * V;
    if (c < cols) {
      uint32_t bits = 0;
#pragma unroll 4
      for (int64_t r = threadIdx.x / kPerRow; r < rows; r += kRowStep) {
        const uint4 u = *reinterpret_cast<const uint4*>(A + r * cols + c);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const uint32_t b = abs_bits(Vec<T>::get(u, i));
          bits |= uint32_t(b >= thr && b <= kInfBits) << i;
        }
      }
      if (bits) atomicOr(&s_mask[(c - c0) >> 5], bits << (c & 31));
    }
  } else {
    for (int ci = threadIdx.x; ci < kMaskCols; ci += kThreads) {
      const int64_t c = c0 + ci;
      if (c >= cols) break;
      bool hit = false;
      for (int64_t r = 0; r < rows; ++r) {
        const uint32_t b = abs_bits(to_f32(A[r * cols + c]));
        hit |= b >= thr && b <= kInfBits;
      }
      if (hit) atomicOr(&s_mask[ci >> 5], 1u << (ci & 31));
    }
  }
  __syncthreads();
  const int64_t nw = (cols + 31) / 32, w = c0 / 32 + threadIdx.x;
  if (threadIdx.x < kMaskCols / 32 && w < nw) colmask[w] = s_mask[threadIdx.x];
}

// kRegs: -1 reads the row element by element (unaligned rows); 0 reads it twice in 16-byte vectors
// (pass 2 from L1/L2); > 0 keeps each thread's (at most kRegs) vectors in registers between the
// passes, so a short row costs one memory latency instead of one per vector and pass.
template <typename T, int kRegs>
__global__ void __launch_bounds__(kThreads)
    row_quant_kernel(const T* __restrict__ A, int64_t rows, int64_t cols, uint32_t thr,
                     int8_t* __restrict__ q, float* __restrict__ row_stats,
                     uint32_t* __restrict__ colmask, bool atomic_mask) {
  griddep_launch();  // the GEMM that consumes q may start loading W now
  constexpr bool kVector = kRegs >= 0;
  if (blockIdx.x >= rows) {
    mask_columns<T, kVector>(A, rows, cols, thr, int64_t(blockIdx.x - rows) * kMaskCols, colmask);
    return;
  }
  __shared__ uint32_t s_red[kThreads / 32];
  const int64_t r = blockIdx.x;
  const T* a = A + r * cols;
  int8_t* qr = q + r * cols;
  constexpr int V = Vec<T>::kN;
  const int64_t nv = cols / V;
  uint32_t m = 0;
  // Pass 1 on vector v: the largest |x| below the threshold, and the outlier columns' bits.
  auto scan = [&](const uint4& u, int64_t v) {
    uint32_t bits = 0;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const uint32_t b = abs_bits(Vec<T>::get(u, i));
      m = max(m, b < thr ? b : 0u);
      bits |= uint32_t(b >= thr && b <= kInfBits) << i;
    }
    // V consecutive columns starting at a multiple of V never straddle a mask word.
    if (atomic_mask && bits) set_bits(colmask + ((v * V) >> 5), bits << ((v * V) & 31));
  };
  uint4 held[kRegs > 0 ? kRegs : 1];
  auto each_held = [&](auto f) {  // f(j, v) for this thread's vectors v, held in held[j]
#pragma unroll
    for (int j = 0; j < kRegs; ++j) {
      const int64_t v = threadIdx.x + int64_t(j) * kThreads;
      if (v < nv) f(j, v);
    }
  };
  if (kRegs > 0) {
    each_held([&](int j, int64_t v) { held[j] = *reinterpret_cast<const uint4*>(a + v * V); });
    each_held([&](int j, int64_t v) { scan(held[j], v); });
  } else if (kVector) {
    for (int64_t v = threadIdx.x; v < nv; v += kThreads) scan(*reinterpret_cast<const uint4*>(a + v * V), v);
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
      const uint32_t b = abs_bits(to_f32(a[c]));
      m = max(m, b < thr ? b : 0u);
      if (atomic_mask && b >= thr && b <= kInfBits) set_bits(colmask + (c >> 5), 1u << (c & 31));
    }
  }
  m = block_max(m, s_red);
  const float s = __uint_as_float(m);
  if (threadIdx.x == 0) row_stats[r] = s;
  const float scale = s > 0.0f ? __fmul_rn(127.0f, __frcp_rn(s)) : 0.0f;
  const uint32_t keep_below = min(thr, kInfBits);
  // Pass 2 on vector v: round(x * scale), 0 in the outlier columns.
  auto store = [&](const uint4& u, int64_t v) {
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const uint32_t byte = static_cast<uint8_t>(quantize(Vec<T>::get(u, i), keep_below, scale));
      if (i < 4)
        lo |= byte << (8 * i);
      else
        hi |= byte << (8 * (i - 4));
    }
    if (V == 8)
      *reinterpret_cast<uint2*>(qr + v * V) = make_uint2(lo, hi);
    else
      *reinterpret_cast<uint32_t*>(qr + v * V) = lo;
  };
  if (kRegs > 0) {
    each_held([&](int j, int64_t v) { store(held[j], v); });
  } else if (kVector) {
    for (int64_t v = threadIdx.x; v < nv; v += kThreads) store(*reinterpret_cast<const uint4*>(a + v * V), v);
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) qr[c] = quantize(to_f32(a[c]), keep_below, scale);
  }
}

// Copies elements src[row * cols + list[j]] to dst[row * compact + j] for the block's rows, j < cnt.
template <typename T>
__device__ void gather_rows(const T* __restrict__ src, T* __restrict__ dst, int64_t cols, int64_t compact,
                            int64_t r0, int64_t nr, const int* list, int cnt) {
  batched_copy<8>(
      nr * cnt, [&](int64_t i) { return src[(r0 + i / cnt) * cols + list[i % cnt]]; },
      [&](int64_t i, T v) { dst[(r0 + i / cnt) * compact + i % cnt] = v; });
}

__global__ void __launch_bounds__(kThreads)
    outlier_prep_kernel(const OutlierPrep p, int64_t rows_per_block, int64_t n_per_block, bool q_vec) {
  __shared__ int scratch[32];
  __shared__ int s_list[kOutlierCompact];
  griddep_wait();    // int8_row_quant's mask and q
  griddep_launch();  // the GEMM may set up and load W meanwhile (it waits before reading ours)
  OutlierWalk walk;
  walk.begin(p.colmask, p.cols, scratch);
  if (blockIdx.x == 0) {  // each thread writes the ranks of its own mask words
    if (threadIdx.x == 0) *p.count = walk.total;
    if (p.list32) walk.fill(0, walk.total, p.list32);
    if (p.list64) walk.fill(0, walk.total, p.list64);
  }
  if (walk.total == 0) return;
  const int64_t r0 = int64_t(blockIdx.x) * rows_per_block, nr = max(int64_t(0), min(p.rows, r0 + rows_per_block) - r0);
  const int64_t n0 = int64_t(blockIdx.x) * n_per_block, nn = max(int64_t(0), min(p.N, n0 + n_per_block) - n0);
  if (p.Wo || p.Wc || p.q) {
    walk.fill(0, kOutlierCompact, s_list);
    __syncthreads();
  }
  if (p.Wo) {  // the fused epilogues' first kOutlierGather columns of W
    const int cnt = min(kOutlierGather, walk.total);
    batched_copy<8>(
        cnt * nn, [&](int64_t i) { return p.W[(n0 + i % nn) * p.cols + s_list[i / nn]]; },
        [&](int64_t i, int8_t v) { p.Wo[(i / nn) * p.N + n0 + i % nn] = v; });
  }
  // int8_outlier_matmul's compact copies: only when it runs (past kOutlierGather columns) and all
  // the outlier columns fit in them (it reads the list otherwise).
  if (p.Wc && walk.total > kOutlierGather && walk.total <= p.compact) {
    gather_rows(p.W, p.Wc, p.cols, p.compact, n0, nn, s_list, walk.total);
    if (p.a_dtype == kI8F32)
      gather_rows(static_cast<const float*>(p.A), static_cast<float*>(p.Ac), p.cols, p.compact, r0, nr, s_list,
                  walk.total);
    else
      gather_rows(static_cast<const uint16_t*>(p.A), static_cast<uint16_t*>(p.Ac), p.cols, p.compact, r0, nr,
                  s_list, walk.total);
  }
  if (p.q && walk.total <= kOutlierCompact) {  // q zeroed in the outlier columns: one byte store each
    const int cnt = walk.total;  // nr * cnt < 2^30: rows < 2^31 over at most 1024 blocks
    for (int i = threadIdx.x; i < int(nr) * cnt; i += kThreads) p.q[(r0 + i / cnt) * p.cols + s_list[i % cnt]] = 0;
  } else if (p.q) {  // many columns: warps take rows, lanes 8-column pieces (by the mask byte)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t c = int64_t(lane) * 8; c < p.cols; c += 32 * 8) {
      const uint32_t bits = (p.colmask[c >> 5] >> (c & 31)) & 0xffu;
      if (!bits) continue;
      uint64_t keep = ~uint64_t(0);
#pragma unroll
      for (int b = 0; b < 8; ++b)
        if ((bits >> b) & 1) keep &= ~(uint64_t(0xff) << (8 * b));
      for (int64_t r = r0 + warp; r < r0 + nr; r += kThreads / 32) {
        int8_t* qc = p.q + r * p.cols + c;
        if (q_vec) {
          *reinterpret_cast<uint64_t*>(qc) &= keep;
        } else {
          for (int b = 0; b < 8; ++b)
            if ((bits >> b) & 1) qc[b] = 0;  // mask bits lie below cols
        }
      }
    }
  }
}

template <typename T>
cudaError_t launch_row_quant(const T* A, int64_t rows, int64_t cols, uint32_t thr, int8_t* q,
                             float* row_stats, uint32_t* colmask, bool mask_blocks, bool atomic_mask,
                             cudaStream_t stream) {
  const bool vec = cols % Vec<T>::kN == 0 && reinterpret_cast<uintptr_t>(A) % 16 == 0;
  const int64_t grid = rows + (mask_blocks ? (cols + kMaskCols - 1) / kMaskCols : 0);
  const int64_t per_thread = (cols / Vec<T>::kN + kThreads - 1) / kThreads;  // vectors per thread
  auto go = [&](auto kernel) { kernel<<<grid, kThreads, 0, stream>>>(A, rows, cols, thr, q, row_stats, colmask, atomic_mask); };
  if (!vec)
    go(row_quant_kernel<T, -1>);
  else if (per_thread <= 2)
    go(row_quant_kernel<T, 2>);
  else if (per_thread <= 4)
    go(row_quant_kernel<T, 4>);
  else if (per_thread <= 8)
    go(row_quant_kernel<T, 8>);
  else if (per_thread <= 16)
    go(row_quant_kernel<T, 16>);
  else
    go(row_quant_kernel<T, 0>);
  return cudaGetLastError();
}

}  // namespace

cudaError_t int8_row_quant(const void* A, int dtype, int64_t rows, int64_t cols, float threshold,
                           int8_t* q, float* row_stats, uint32_t* colmask, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  if (rows > 0x7fffffff - (cols + kMaskCols - 1) / kMaskCols) return cudaErrorInvalidConfiguration;
  const uint32_t thr = threshold_bits(threshold);
  const bool want_mask = colmask != nullptr;
  const bool mask_blocks = want_mask && threshold > 0.0f && rows <= kMaskBlockRows;
  const bool atomic_mask = want_mask && threshold > 0.0f && !mask_blocks;
  if (want_mask && !mask_blocks) {
    // Cleared here; the row blocks then set bits (no bits at all without a threshold).
    const cudaError_t e = cudaMemsetAsync(colmask, 0, size_t((cols + 31) / 32) * 4, stream);
    if (e != cudaSuccess) return e;
  }
  return with_dtype(dtype, [&](auto t) {
    return launch_row_quant(static_cast<const decltype(t)*>(A), rows, cols, thr, q, row_stats, colmask, mask_blocks,
                            atomic_mask, stream);
  });
}

cudaError_t int8_outlier_prep(const OutlierPrep& p, cudaStream_t stream) {
  if (p.cols <= 0) return cudaMemsetAsync(p.count, 0, 4, stream);
  if ((p.Wc || p.Ac) && !(p.Wc && p.Ac && p.W && p.A && p.compact == std::min<int64_t>(p.cols, kOutlierCompact)))
    return cudaErrorInvalidValue;
  const int64_t rows = p.q || p.Ac ? p.rows : 0, N = p.W ? p.N : 0;
  int64_t blocks = std::max<int64_t>((rows + 31) / 32, (N + 63) / 64);
  blocks = std::min<int64_t>(std::max<int64_t>(blocks, 1), 1024);
  const int64_t rows_per_block = (rows + blocks - 1) / blocks, n_per_block = (N + blocks - 1) / blocks;
  const bool q_vec = p.cols % 8 == 0 && reinterpret_cast<uintptr_t>(p.q) % 8 == 0;
  return launch_maybe_pdl(outlier_prep_kernel, dim3(unsigned(blocks)), dim3(kThreads), 0, stream, pdl_allowed(), p,
                          rows_per_block, n_per_block, q_vec);
}

}  // namespace kbit::cuda
