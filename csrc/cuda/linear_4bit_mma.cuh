// Device pieces shared by the fused 4-bit linear kernels (linear_4bit_skinny.cu, _tiled.cu).
//
// Swapped operands. The tensor-core op is mma.sync m16n8k16: its "A" operand (16 x 16) holds 16
// rows of the weight W (output features), its "B" operand (16 x 8) holds 8 tokens of the
// activations, and C (16 x 8) is out^T. So one token or eight cost the same instruction, and the
// weight, which dominates traffic, feeds the 16-row side.
//
// k permutation. In a warp, lane = 4 * g + t. For A the lane holds rows g and g+8 at k-slots
// {2t, 2t+1} and {2t+8, 2t+9}; for B it holds token g at the same four k-slots. A dot product does
// not care which real k sits in which slot as long as A and B agree, so in a 128-wide chunk of K
// lane t owns the 32 real columns [32t, 32t+32) and step j (0..7) puts columns 32t+4j+{0,1} in
// slots {2t, 2t+1} and 32t+4j+{2,3} in slots {2t+8, 2t+9}. Then
//   - each lane reads its weights as ONE 16-byte load per row (32 nibbles): byte 2j feeds the
//     low register pair of step j, byte 2j+1 the high pair; no shuffles;
//   - each lane reads its activations as contiguous 64 bytes per token: 32-bit word 2j is B's
//     first register at step j and word 2j+1 the second.
// A 32-column group always lies inside one quantization block (blocksize >= 32, K % 32 == 0), so a
// lane needs one scale per row per chunk.
//
// Dequantization through a byte table. A packed byte holds two adjacent columns, which is exactly
// one 32-bit A register (two 16-bit values, low half = even column = high nibble). A 256-entry
// shared-memory table maps the byte to that register of unscaled code values; it is replicated 32
// times so that lane L always reads bank L (conflict-free for any data): entry v of lane L sits at
// byte (v << 7) | (L << 2), 32 KB in all. One lookup + one 16-bit multiply by the scale per two
// weights. (A 64 KB table with a 256-byte entry stride, whose offsets take one byte permute
// instead of a shift and an and-or, measured no faster at 1 token and slower above: it left too
// little L1 for the activations and halved the tiled kernel's occupancy.)
#pragma once
#include "cuda/common.cuh"
#include "cuda/linear_4bit.cuh"
#include "cuda/mma_sync.cuh"

#include <type_traits>

namespace kbit::cuda::mma {

constexpr int kLutBytes = 256 * 32 * 4;

// Calls f(T{}, std::bool_constant<DQ>{}) for the arguments' activation type (bf16 or fp16) and
// whether the absmax is double-quantized: the launchers' one type switch.
template <typename F>
cudaError_t with_types(const Linear4bitArgs& a, F&& f) {
  const bool dq = a.scales.nested();
  if (a.dtype == DType::BF16) return dq ? f(__nv_bfloat16{}, std::true_type{}) : f(__nv_bfloat16{}, std::false_type{});
  return dq ? f(__half{}, std::true_type{}) : f(__half{}, std::false_type{});
}

// Grid of a persistent kernel over `tiles` work units: as many blocks as fit on the GPU at once,
// at most one per unit. The caller keeps, per kernel instantiation, the per-device flags of its
// shared-memory limit (`smem_allowed`) and its blocks per SM (`per_sm`, -1 until known; the same on
// every device we target).
template <typename Kernel>
cudaError_t persistent_grid(Kernel kernel, int threads, int smem, int64_t tiles, bool (&smem_allowed)[64],
                            int& per_sm, int& grid) {
  cudaError_t e = allow_dynamic_smem(kernel, smem, smem_allowed);
  if (e != cudaSuccess) return e;
  if (per_sm < 0) {
    int n = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem);
    if (e != cudaSuccess) return e;
    per_sm = n > 0 ? n : 1;
  }
  const int64_t cap = int64_t(per_sm) * sm_count();
  grid = int(tiles < cap ? tiles : cap);
  return cudaSuccess;
}

// Fills the replicated byte table (kLutBytes of shared memory) for code `qt` in type T. Each
// thread computes an entry once and stores its 32 copies (8 x 16 bytes); a thread's stores start
// at different pieces, so that a quarter-warp's fall in different banks. (Computing the value per
// store read the constant code table with 16 different addresses per warp every time, which
// serializes; it took about a sixth of the one-token kernel's time.)
template <typename T>
__device__ __forceinline__ void fill_lut(uint4* lut, int qt) {
  for (int v = threadIdx.x; v < 256; v += blockDim.x) {
    const uint32_t w = pack2<T>(kCode4[qt][v >> 4], kCode4[qt][v & 15]);
    const uint4 w4 = make_uint4(w, w, w, w);
#pragma unroll
    for (int k = 0; k < 8; ++k) lut[v * 8 + ((k + v) & 7)] = w4;
  }
}

// The byte table and, when the absmax is double-quantized, the 256-value nested code (code8) in
// shared memory; returns the nested offset (0 without double quantization). The global loads are
// issued before the table is built and used after, so that their latency overlaps the build
// instead of stalling the block at its start (callers have 128 or 256 threads: one or two code
// values per thread; the last loop only serves smaller blocks).
template <typename T, bool DQ>
__device__ __forceinline__ float fill_tables(uint4* lut, float* code8, const Linear4bitArgs& a) {
  const float offset = DQ ? __ldg(a.scales.nested_offset) : 0.0f;
  float v[2] = {0.0f, 0.0f};
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (DQ && i < 256) v[k] = __ldg(a.scales.nested_code + i);
  }
  fill_lut<T>(lut, a.quant_type);
  if constexpr (DQ) {
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < 256) code8[i] = v[k];
    }
    for (int i = threadIdx.x + 2 * blockDim.x; i < 256; i += blockDim.x) code8[i] = a.scales.nested_code[i];
  }
  return offset;
}

// The A register for byte p (0..3) of w: a table read at (byte << 7) | lane4. Callers unroll
// their loops, so p is a constant and this is one shift, one and-or and one shared load.
__device__ __forceinline__ uint32_t lut_at(const char* lut, uint32_t w, int p, uint32_t lane4) {
  const uint32_t off = p == 0 ? ((w << 7) & 0x7f80u) : ((w >> (8 * p - 7)) & 0x7f80u);
  return *reinterpret_cast<const uint32_t*>(lut + (off | lane4));
}

template <typename T>
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
  using T2 = typename Half2Of<T>::type;
  T2 r = __hmul2(*reinterpret_cast<T2*>(&a), *reinterpret_cast<T2*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// Where a warp's item lies in the persistent decode kernels (skinny, decode): item `within` of tile
// `tile` (the kernel maps it to a chunk of K). Advanced one item at a time without division; a
// block's tiles are blockIdx.x, + gridDim.x, ...
struct ItemPos {
  int tile;
  int within;
  __device__ __forceinline__ void next(int per_tile) {
    if (++within == per_tile) {
      within = 0;
      tile += gridDim.x;
    }
  }
};

// A row's scale for one chunk, as loaded (prefetched) and then decoded.
struct RawScale {
  float a;     // absmax, or nested absmax when double-quantized
  uint32_t q;  // uint8 absmax code when double-quantized
};

// Raw scale of quantization block b (zero where !ok). I: the index type (the one-token kernel
// indexes in 32 bits, the others in 64).
template <bool DQ, typename I>
__device__ __forceinline__ RawScale load_scale(const AbsmaxRef& s, I b, bool ok) {
  RawScale r{0.0f, 0u};
  if (ok) {
    if constexpr (DQ) {
      r.q = __ldg(s.qabsmax + b);
      r.a = __ldg(s.nested_absmax + (b >> s.nested_log2));
    } else {
      r.a = __ldg(s.absmax + b);
    }
  }
  return r;
}

// code8: the 256-value nested code in shared memory. No FMA contraction, to match the reference.
template <bool DQ>
__device__ __forceinline__ float decode_scale(const RawScale& r, const float* code8, float offset) {
  if constexpr (DQ) return __fadd_rn(__fmul_rn(code8[r.q], r.a), offset);
  return r.a;
}

// Step j's A fragment of unscaled code values for rows g (w0) and g+8 (w1) of one 16-row tile.
// j must be a constant after unrolling (it selects registers).
__device__ __forceinline__ void a_frag_unscaled(uint32_t (&a)[4], int j, const char* lut, uint32_t lane4,
                                                const uint4& w0, const uint4& w1) {
  const uint32_t x0 = (j / 2 == 0) ? w0.x : (j / 2 == 1) ? w0.y : (j / 2 == 2) ? w0.z : w0.w;
  const uint32_t x1 = (j / 2 == 0) ? w1.x : (j / 2 == 1) ? w1.y : (j / 2 == 2) ? w1.z : w1.w;
  const int p = 2 * (j % 2);
  a[0] = lut_at(lut, x0, p, lane4);
  a[1] = lut_at(lut, x1, p, lane4);
  a[2] = lut_at(lut, x0, p + 1, lane4);
  a[3] = lut_at(lut, x1, p + 1, lane4);
}

// The same fragment with rows g scaled by s0 and g+8 by s1 (two equal T in each).
template <typename T>
__device__ __forceinline__ void a_frag(uint32_t (&a)[4], int j, const char* lut, uint32_t lane4,
                                       const uint4& w0, const uint4& w1, uint32_t s0, uint32_t s1) {
  a_frag_unscaled(a, j, lut, lane4, w0, w1);
  a[0] = hmul2<T>(a[0], s0);
  a[1] = hmul2<T>(a[1], s1);
  a[2] = hmul2<T>(a[2], s0);
  a[3] = hmul2<T>(a[3], s1);
}

}  // namespace kbit::cuda::mma
