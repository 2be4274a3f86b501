// Fused 4-bit linear for M <= 16 tokens (decode): out = A @ dequant(W)^T + bias.
//
// Bandwidth-bound: the packed weight is read once, 16 bytes per lane per row, with streaming
// loads; everything else (activations, scales) is small and cached. Fragment layout and the k
// permutation are described in linear_4bit_mma.cuh.
//
// Decomposition: a block (8 warps) owns a tile of 16 weight rows at a time (one m16 tile) and the
// warps split K: warp w takes 128-column chunks w, w+8, w+16, ... Each lane needs, per chunk,
// 16 bytes of each of its two rows, their two scales, and 64 bytes of activations per token it
// holds (token g, and g+8 when NT = 2), then runs 8 mma steps per 8-token group. At the end of a
// tile the 8 warps' partial sums meet in shared memory and one pass adds them, adds the bias and
// writes out[token, row]. The grid is persistent and balanced (every block gets the same number of
// tiles) so the 32 KB table is built once per block.
//
// Weight streaming (the default, "ring"): each lane copies its own weight bytes and scales with
// cp.async into a private slot of a 3-deep shared-memory ring and later reads back only what it
// copied, so no barrier is needed and two chunks stay in flight per warp, across tile boundaries.
// Activations are read when a chunk is used (they are shared by all warps: L1/L2 hits).
// The older variant ("regs", KBIT_LINEAR4_SKINNY=regs) double-buffers everything in registers.
#include "cuda/linear_4bit_mma.cuh"

namespace kbit::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;      // weight rows per tile
constexpr int kChunk = 128;    // columns of K per chunk

template <int NT>
struct Chunk {
  uint4 w[2];         // rows g, g+8: 32 nibbles each
  mma::RawScale s[2];
  uint4 x[NT][4];     // tokens g + 8 * nt: 32 activations each
};

template <typename T, int NT>
constexpr int smem_bytes() {
  return mma::kLutBytes + kWarps * NT * 128 * 4 + 256 * 4;
}

template <typename T, int NT, bool DQ>
__device__ __forceinline__ void load_chunk(Chunk<NT>& ch, const Linear4bitArgs& a, int bs_log2,
                                           int64_t tile, int64_t ntiles, int64_t c, int64_t nchunks,
                                           int g, int t) {
  const int64_t k0 = c * kChunk + 32 * t;
  const bool kok = tile < ntiles && c < nchunks && k0 < a.K;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = tile * kRows + g + 8 * r;
    const bool ok = kok && row < a.N;
    const int64_t e = row * a.K + k0;  // flat element index of the 32-column group
    ch.w[r] = ok ? ld_stream(a.W + e / 2) : make_uint4(0, 0, 0, 0);
    ch.s[r] = mma::load_scale<DQ>(a.scales, e >> bs_log2, ok);
  }
  const T* A = static_cast<const T*>(a.A);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int64_t tok = nt * 8 + g;
    const bool ok = kok && tok < a.M;
    const uint4* src = reinterpret_cast<const uint4*>(A + tok * a.K + k0);
#pragma unroll
    for (int q = 0; q < 4; ++q) ch.x[nt][q] = ok ? __ldg(src + q) : make_uint4(0, 0, 0, 0);
  }
}

template <typename T, int NT, bool DQ>
__device__ __forceinline__ void compute_chunk(const Chunk<NT>& ch, float (&acc)[NT][4], const char* lut,
                                              uint32_t lane4, const float* code8, float offset) {
  const float f0 = mma::decode_scale<DQ>(ch.s[0], code8, offset);
  const float f1 = mma::decode_scale<DQ>(ch.s[1], code8, offset);
  const uint32_t s0 = pack2<T>(f0, f0), s1 = pack2<T>(f1, f1);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    uint32_t af[4];
    mma::a_frag<T>(af, j, lut, lane4, ch.w[0], ch.w[1], s0, s1);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const uint4& x = ch.x[nt][j / 2];
      mma::mma16816<T>(acc[nt], af, (j % 2) ? x.z : x.x, (j % 2) ? x.w : x.y);
    }
  }
}

template <typename T, int NT, bool DQ>
__global__ void __launch_bounds__(kThreads) skinny_kernel(Linear4bitArgs a, int bs_log2) {
  extern __shared__ uint4 smem[];
  char* lut = reinterpret_cast<char*>(smem);
  float* red = reinterpret_cast<float*>(lut + mma::kLutBytes);
  float* code8 = red + kWarps * NT * 128;
  mma::fill_lut<T>(smem, a.quant_type);
  if (DQ)
    for (int i = threadIdx.x; i < 256; i += kThreads) code8[i] = a.scales.nested_code[i];
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t lane4 = uint32_t(lane) << 2;
  const float offset = DQ ? __ldg(a.scales.nested_offset) : 0.0f;
  const int64_t ntiles = ceil_div(a.N, kRows);
  const int64_t nchunks = ceil_div(a.K, kChunk);
  const T* bias = static_cast<const T*>(a.bias);
  T* C = static_cast<T*>(a.C);

  Chunk<NT> cur;
  load_chunk<T, NT, DQ>(cur, a, bs_log2, blockIdx.x, ntiles, warp, nchunks, g, t);
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    for (int64_t c = warp; c < nchunks; c += kWarps) {
      // Prefetch this warp's next chunk: the next of this tile, else the first of the next tile.
      int64_t ntile = tile, nc = c + kWarps;
      if (nc >= nchunks) ntile = tile + gridDim.x, nc = warp;
      Chunk<NT> nxt;
      load_chunk<T, NT, DQ>(nxt, a, bs_log2, ntile, ntiles, nc, nchunks, g, t);
      compute_chunk<T, NT, DQ>(cur, acc, lut, lane4, code8, offset);
      cur = nxt;
    }
    // Split-K reduction over the 8 warps; then one value per (row, token) to global memory.
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      *reinterpret_cast<float4*>(red + (warp * NT + nt) * 128 + lane * 4) =
          make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]);
    __syncthreads();
    for (int o = threadIdx.x; o < NT * 128; o += kThreads) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += red[w * NT * 128 + o];
      const int nt = o / 128, l = (o % 128) / 4, i = o % 4;
      const int64_t row = tile * kRows + l / 4 + 8 * (i / 2);
      const int64_t tok = nt * 8 + 2 * (l % 4) + (i % 2);
      if (row < a.N && tok < a.M) {
        if (bias) sum += to_f32(bias[row]);
        C[tok * a.N + row] = from_f32<T>(sum);
      }
    }
    __syncthreads();
  }
}


// ---- ring variant ----------------------------------------------------------------------------
constexpr int kRing = 3;                       // chunks per lane slot ring; kRing - 1 in flight
constexpr int kSlotBytes = 3 * kThreads * 16;  // per stage: row g, row g+8, scale words; 16 B each per lane

template <int NT>
constexpr int ring_smem_bytes() {
  return mma::kLutBytes + kRing * kSlotBytes + kWarps * NT * 128 * 4 + 256 * 4;
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 r;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "r"(addr) : "memory");
  return r;
}

// The block's tiles are blockIdx.x + k * gridDim.x; this warp's chunks of each are warp + 8 i,
// i < cpw. Item j of the warp is (k, i) = (j / cpw, j % cpw).
struct Items {
  int64_t ntiles, nchunks, cpw, total;
};

// Issues the copies of item j into ring slot `slot` (this lane's bytes only); past the end, or past
// N / K, the copies zero-fill.
template <bool DQ>
__device__ __forceinline__ void issue_item(uint32_t ring, int slot, int64_t j, const Items& it,
                                           const Linear4bitArgs& a, int bs_log2, int64_t nblocks, int warp,
                                           int g, int t) {
  const uint32_t base = ring + slot * kSlotBytes + threadIdx.x * 16;
  int64_t tile = -1, c = 0;
  if (j < it.total) {
    tile = blockIdx.x + (j / it.cpw) * int64_t(gridDim.x);
    c = warp + kWarps * (j % it.cpw);
  }
  const int64_t k0 = c * 128 + 32 * t;
  const bool kok = tile >= 0 && tile < it.ntiles && k0 < a.K;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = tile * kRows + g + 8 * r;
    const bool ok = kok && row < a.N;
    const int64_t e = ok ? row * a.K + k0 : 0;
    const int64_t b = e >> bs_log2;
    cp_async16(base + r * kThreads * 16, a.W + e / 2, ok);
    const uint32_t sdst = base + 2 * kThreads * 16 + 4 * r;
    if constexpr (DQ) {
      const int64_t w = b & ~int64_t(3);  // the aligned word holding byte b; clipped at the end
      const int64_t avail = nblocks - w;
      cp_async4(sdst, a.scales.nested_absmax + (b >> a.scales.nested_log2), ok ? 4 : 0);
      cp_async4(sdst + 8, a.scales.qabsmax + w, ok ? int(avail < 4 ? avail : 4) : 0);
    } else {
      cp_async4(sdst, a.scales.absmax + b, ok ? 4 : 0);
    }
  }
}

template <typename T, int NT, bool DQ>
__global__ void __launch_bounds__(kThreads) skinny_ring_kernel(Linear4bitArgs a, int bs_log2) {
  extern __shared__ uint4 smem[];
  char* lut = reinterpret_cast<char*>(smem);
  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(lut + mma::kLutBytes));
  float* red = reinterpret_cast<float*>(lut + mma::kLutBytes + kRing * kSlotBytes);
  float* code8 = red + kWarps * NT * 128;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t lane4 = uint32_t(lane) << 2;
  Items it;
  it.ntiles = ceil_div(a.N, kRows);
  it.nchunks = ceil_div(a.K, 128);
  it.cpw = it.nchunks > warp ? ceil_div(it.nchunks - warp, kWarps) : 0;
  const int64_t my_tiles = it.ntiles > blockIdx.x ? ceil_div(it.ntiles - blockIdx.x, gridDim.x) : 0;
  it.total = my_tiles * it.cpw;
  const int64_t nblocks = ceil_div(a.N * a.K, int64_t(1) << bs_log2);

  // Start streaming before building the table, so the first copies overlap it.
#pragma unroll
  for (int s = 0; s < kRing - 1; ++s) {
    issue_item<DQ>(ring, s, s, it, a, bs_log2, nblocks, warp, g, t);
    cp_commit();
  }
  mma::fill_lut<T>(smem, a.quant_type);
  if (DQ)
    for (int i = threadIdx.x; i < 256; i += kThreads) code8[i] = a.scales.nested_code[i];
  __syncthreads();
  const float offset = DQ ? __ldg(a.scales.nested_offset) : 0.0f;
  const T* A = static_cast<const T*>(a.A);
  const T* bias = static_cast<const T*>(a.bias);
  T* C = static_cast<T*>(a.C);

  int64_t j = 0;
  for (int64_t k = 0; k < my_tiles; ++k) {
    const int64_t tile = blockIdx.x + k * int64_t(gridDim.x);
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    for (int64_t i = 0; i < it.cpw; ++i, ++j) {
      const int64_t k0 = (warp + kWarps * i) * 128 + 32 * t;
      // Activations first (cache hits), then this chunk's weights from the ring.
      uint4 x[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int64_t tok = nt * 8 + g;
        const bool ok = tok < a.M && k0 < a.K;
        const uint4* src = reinterpret_cast<const uint4*>(A + (ok ? tok * a.K + k0 : 0));
#pragma unroll
        for (int q = 0; q < 4; ++q) x[nt][q] = ok ? __ldg(src + q) : make_uint4(0, 0, 0, 0);
      }
      cp_wait<kRing - 2>();
      const uint32_t slot = ring + int(j % kRing) * kSlotBytes + threadIdx.x * 16;
      const uint4 w0 = lds128(slot), w1 = lds128(slot + kThreads * 16), sw = lds128(slot + 2 * kThreads * 16);
      // Refill the slot read in the previous step (its values are consumed).
      issue_item<DQ>(ring, int((j + kRing - 1) % kRing), j + kRing - 1, it, a, bs_log2, nblocks, warp, g, t);
      cp_commit();
      float f0, f1;
      if constexpr (DQ) {
        const int64_t e0 = (tile * kRows + g) * a.K + k0, e1 = e0 + 8 * a.K;
        const uint32_t q0 = (sw.z >> (8 * ((e0 >> bs_log2) & 3))) & 0xffu;
        const uint32_t q1 = (sw.w >> (8 * ((e1 >> bs_log2) & 3))) & 0xffu;
        f0 = __fadd_rn(__fmul_rn(code8[q0], __uint_as_float(sw.x)), offset);
        f1 = __fadd_rn(__fmul_rn(code8[q1], __uint_as_float(sw.y)), offset);
      } else {
        f0 = __uint_as_float(sw.x);
        f1 = __uint_as_float(sw.y);
      }
      const uint32_t s0 = pack2<T>(f0, f0), s1 = pack2<T>(f1, f1);
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        uint32_t af[4];
        mma::a_frag<T>(af, jj, lut, lane4, w0, w1, s0, s1);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint4& xv = x[nt][jj / 2];
          mma::mma16816<T>(acc[nt], af, (jj % 2) ? xv.z : xv.x, (jj % 2) ? xv.w : xv.y);
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      *reinterpret_cast<float4*>(red + (warp * NT + nt) * 128 + lane * 4) =
          make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]);
    __syncthreads();
    for (int o = threadIdx.x; o < NT * 128; o += kThreads) {
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += red[w * NT * 128 + o];
      const int nt = o / 128, l = (o % 128) / 4, i = o % 4;
      const int64_t row = tile * kRows + l / 4 + 8 * (i / 2);
      const int64_t tok = nt * 8 + 2 * (l % 4) + (i % 2);
      if (row < a.N && tok < a.M) {
        if (bias) sum += to_f32(bias[row]);
        C[tok * a.N + row] = from_f32<T>(sum);
      }
    }
    __syncthreads();
  }
  cp_wait<0>();
}

template <typename T, int NT, bool DQ>
cudaError_t launch_ring(const Linear4bitArgs& a, cudaStream_t stream) {
  constexpr int smem = ring_smem_bytes<NT>();
  static int per_sm = -1;
  if (per_sm < 0) {
    cudaError_t e = cudaFuncSetAttribute(skinny_ring_kernel<T, NT, DQ>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    int n = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, skinny_ring_kernel<T, NT, DQ>, kThreads, smem);
    if (e != cudaSuccess) return e;
    per_sm = n > 0 ? n : 1;
  }
  const int64_t ntiles = ceil_div(a.N, kRows);
  const int64_t cap = int64_t(per_sm) * sm_count();
  const int64_t per_block = ceil_div(ntiles, cap);  // balanced: every block gets the same count
  const int grid = int(ceil_div(ntiles, per_block));
  skinny_ring_kernel<T, NT, DQ><<<grid, kThreads, smem, stream>>>(a, log2_exact(a.blocksize));
  return cudaGetLastError();
}

template <typename T, int NT, bool DQ>
cudaError_t launch(const Linear4bitArgs& a, cudaStream_t stream) {
  constexpr int smem = smem_bytes<T, NT>();
  static int per_sm = -1;  // blocks per SM of this instantiation (same on every device we target)
  if (per_sm < 0) {
    cudaError_t e = cudaFuncSetAttribute(skinny_kernel<T, NT, DQ>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    int n = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, skinny_kernel<T, NT, DQ>, kThreads, smem);
    if (e != cudaSuccess) return e;
    per_sm = n > 0 ? n : 1;
  }
  const int64_t ntiles = ceil_div(a.N, kRows);
  const int64_t cap = int64_t(per_sm) * sm_count();
  const int grid = int(ntiles < cap ? ntiles : cap);
  skinny_kernel<T, NT, DQ><<<grid, kThreads, smem, stream>>>(a, log2_exact(a.blocksize));
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const Linear4bitArgs& a, bool ring, cudaStream_t stream) {
  const bool dq = a.scales.nested();
  if (ring) {
    if (a.M <= 8) return dq ? launch_ring<T, 1, true>(a, stream) : launch_ring<T, 1, false>(a, stream);
    return dq ? launch_ring<T, 2, true>(a, stream) : launch_ring<T, 2, false>(a, stream);
  }
  if (a.M <= 8) return dq ? launch<T, 1, true>(a, stream) : launch<T, 1, false>(a, stream);
  return dq ? launch<T, 2, true>(a, stream) : launch<T, 2, false>(a, stream);
}

}  // namespace

bool linear_4bit_fusable(const Linear4bitArgs& a) {
  const bool scales_aligned = a.scales.nested() ? (reinterpret_cast<uintptr_t>(a.scales.qabsmax) & 3) == 0 &&
                                                      (reinterpret_cast<uintptr_t>(a.scales.nested_absmax) & 3) == 0
                                                : (reinterpret_cast<uintptr_t>(a.scales.absmax) & 3) == 0;
  return (a.dtype == DType::BF16 || a.dtype == DType::F16) && a.K % 32 == 0 && a.blocksize >= 32 &&
         aligned16(a.A) && aligned16(a.W) && scales_aligned;
}

cudaError_t linear_4bit_skinny(const Linear4bitArgs& a, cudaStream_t stream, bool ring) {
  if (a.M <= 0 || a.N <= 0) return cudaSuccess;
  if (a.M > 16 || !linear_4bit_fusable(a)) return cudaErrorInvalidValue;
  return a.dtype == DType::BF16 ? dispatch<__nv_bfloat16>(a, ring, stream) : dispatch<__half>(a, ring, stream);
}

}  // namespace kbit::cuda
