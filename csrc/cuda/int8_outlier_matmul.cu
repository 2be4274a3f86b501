// LLM.int8()'s 16-bit outlier product on tensor cores, for when the outlier columns are many:
//   out[m, n] += w_stats[n] / 127 * sum over outlier columns c of A[m, c] * W[n, c]
// added to the output that the int8 GEMM (wgmma kernel or cuBLAS + epilogue) has written.
//
// Why: the fused epilogues do the outlier product on CUDA cores, one column at a time. That is
// right for a handful of columns, but activations can mark most columns (random-weight models'
// down projections at 1024 tokens: 13.6k of 14336), and then it cost ~8 ms per call. So the fused
// epilogues take at most kOutlierGather columns, and past that leave the whole product to this
// kernel. The count lives on the device (no host sync, CUDA graphs work), so this kernel is
// launched after every many-token GEMM that has a threshold and returns at once when the count is
// small.
//
// 128 x 128 output tiles for blocks of 8 warps (2 x 4, each 64 x 32), an mma.sync GEMM over the
// outlier columns 32 at a time (cost follows the count, not K). Up to kOutlierCompact columns it
// reads int8_outlier_prep's compact copies of them (a warp reads 64 or 32 contiguous bytes of a
// row); past that it gathers the listed columns itself: every block reads its own, so scattered
// columns cost a 32-byte sector per element, but that many columns are mostly dense runs.
// W's int8 values are exact in 16 bits, so bf16/fp16 activations give the exact products with
// float32 sums, and float32 activations are split into two bf16 parts (hi + lo, ~2^-17 relative
// error). One shared-memory stage: the next 32 columns' loads are in registers while the current
// ones' MMAs run.
#include <algorithm>

#include "cuda/int8_common.cuh"
#include "cuda/mma_sync.cuh"

namespace kbit::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileM = 128, kTileN = 128, kStepCols = 32;
constexpr int kPitch = kStepCols + 8;  // 16-bit elements per shared row: 80 bytes, ldmatrix without conflicts

struct OutlierParams {
  const int32_t* list;  // sorted outlier columns
  const int32_t* count;
  const void* A;  // M x K, dtype TA
  const int8_t* W;
  const float* w_stats;
  int64_t M, N, K;
  const void* Ac;  // M x compact: A's outlier columns, when count <= compact
  const int8_t* Wc;  // N x compact: W's
  int64_t compact;
  void* out;  // M x N, dtype TA
};

// The 16-bit type the MMAs run in: A's own, bf16 for float32 A.
template <typename TA>
struct MmaType {
  using type = TA;
};
template <>
struct MmaType<float> {
  using type = __nv_bfloat16;
};

// One step's gathered values, held in registers while the previous step's MMAs run: thread t
// owns outlier rank base + (t % 32) and tile rows (or weight rows) t / 32 + 8 i.
constexpr int kPerThread = kTileM * kStepCols / kThreads;  // 16
static_assert(kTileM == kTileN, "A and W stages share the thread mapping");

template <typename TA>
struct Stage {
  TA a[kPerThread];
  int8_t w[kPerThread];
};

template <typename TA>
__device__ __forceinline__ void load_stage(const OutlierParams& p, int64_t m0, int64_t n0, int base, int total,
                                           Stage<TA>& s) {
  const int j = threadIdx.x & 31, r = threadIdx.x >> 5;
  const bool ok = base + j < total;
  // The compact copies (lanes read consecutive bytes) when they hold every outlier column, else
  // the listed columns of A and W themselves.
  const bool compact = total <= p.compact;
  const int64_t c = ok ? (compact ? base + j : p.list[base + j]) : 0;
  const int64_t ld = compact ? p.compact : p.K;
  // Row by row with running pointers (precomputed addresses for all 16 rows would spill).
  const int64_t step = 8 * ld;
  const TA* a = static_cast<const TA*>(compact ? p.Ac : p.A) + (m0 + r) * ld + c;
  const int8_t* w = (compact ? p.Wc : p.W) + (n0 + r) * ld + c;
  const int ma = ok ? int(min(int64_t(kTileM), p.M - m0)) : 0;  // rows of the tile inside A
  const int nw = ok ? int(min(int64_t(kTileN), p.N - n0)) : 0;  // rows of the tile inside W
#pragma unroll
  for (int i = 0; i < kPerThread; ++i, a += step, w += step) {
    s.a[i] = r + 8 * i < ma ? *a : from_f32<TA>(0.0f);
    s.w[i] = r + 8 * i < nw ? *w : int8_t(0);
  }
}

// A as 16-bit values: hi (and, for float32, lo = x - hi); W's int8 values in T, exactly.
template <typename TA, typename T>
__device__ __forceinline__ void store_stage(const Stage<TA>& s, uint16_t* a_hi, uint16_t* a_lo, uint16_t* w) {
  const int j = threadIdx.x & 31, r = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int off = (r + 8 * i) * kPitch + j;
    if constexpr (sizeof(TA) == 2) {
      a_hi[off] = bits16(s.a[i]);
    } else {
      const __nv_bfloat16 h = __float2bfloat16_rn(s.a[i]);
      a_hi[off] = bits16(h);
      a_lo[off] = bits16(__float2bfloat16_rn(s.a[i] - __bfloat162float(h)));
    }
    w[off] = bits16(from_f32<T>(float(s.w[i])));
  }
}

// One 128 x 128 output tile: the MMA loop over the outlier columns, then the add into out.
template <typename TA>
__device__ __forceinline__ void outlier_tile(const OutlierParams& p, int total, int64_t m0, int64_t n0,
                                             uint16_t* s_ahi, uint16_t* s_alo, uint16_t* s_w) {
  using T = typename MmaType<TA>::type;
  constexpr bool kSplit = sizeof(TA) == 4;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp >> 2, wn = warp & 3;  // 64-row, 32-column warp tile
  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

  Stage<TA> st;
  load_stage<TA>(p, m0, n0, 0, total, st);
  // ldmatrix rows: A fragments (16 x 16) from rows lane % 16, columns 8 * (lane / 16); B fragments
  // for two n8 tiles from rows (lane & 7) + 8 * (lane >> 4), columns 8 * ((lane >> 3) & 1).
  const int a_row = wm * 64 + (lane & 15), a_col = (lane >> 4) * 8;
  const int b_row = wn * 32 + (lane & 7) + ((lane >> 4) << 3), b_col = ((lane >> 3) & 1) * 8;
  for (int base = 0; base < total; base += kStepCols) {
    store_stage<TA, T>(st, s_ahi, s_alo, s_w);
    __syncthreads();
    if (base + kStepCols < total) load_stage<TA>(p, m0, n0, base + kStepCols, total, st);  // flies during the MMAs
#pragma unroll
    for (int k = 0; k < kStepCols; k += 16) {
      uint32_t b[4][2];
#pragma unroll
      for (int j = 0; j < 4; j += 2) {
        uint32_t r[4];
        mma::ldmatrix_x4(r, s_w + (b_row + 8 * j) * kPitch + k + b_col);
        b[j][0] = r[0], b[j][1] = r[1], b[j + 1][0] = r[2], b[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t f[4];
        mma::ldmatrix_x4(f, s_ahi + (a_row + 16 * i) * kPitch + k + a_col);
#pragma unroll
        for (int j = 0; j < 4; ++j) mma::mma16816<T>(acc[i][j], f, b[j][0], b[j][1]);
        if constexpr (kSplit) {
          mma::ldmatrix_x4(f, s_alo + (a_row + 16 * i) * kPitch + k + a_col);
#pragma unroll
          for (int j = 0; j < 4; ++j) mma::mma16816<T>(acc[i][j], f, b[j][0], b[j][1]);
        }
      }
    }
    __syncthreads();  // the stage is rewritten next
  }

  // Accumulator (i, j, e): row wm*64 + 16i + g (+8 for e >= 2), column wn*32 + 8j + 2t (+1 for odd e).
  const int g = lane >> 2, t = lane & 3;
  TA* out = static_cast<TA*>(p.out);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t n = n0 + wn * 32 + 8 * j + 2 * t;
    if (n >= p.N) continue;  // N is even: n + 1 < N too
    const float s0 = p.w_stats[n] * (1.0f / 127.0f), s1 = p.w_stats[n + 1] * (1.0f / 127.0f);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = m0 + wm * 64 + 16 * i + g + 8 * h;
        if (m >= p.M) continue;
        TA* o = out + m * p.N + n;
        const float v0 = to_f32(o[0]) + acc[i][j][2 * h] * s0;
        const float v1 = to_f32(o[1]) + acc[i][j][2 * h + 1] * s1;
        o[0] = from_f32<TA>(v0);
        o[1] = from_f32<TA>(v1);
      }
    }
  }
}

template <typename TA>
__global__ void __launch_bounds__(kThreads, 2) outlier_matmul_kernel(const OutlierParams p) {
  griddep_wait();  // the GEMM's output, which this adds to
  const int total = *p.count;
  if (total <= kOutlierGather) return;  // the fused epilogue did it
  __shared__ __align__(16) uint16_t s_ahi[kTileM * kPitch];
  __shared__ __align__(16) uint16_t s_alo[sizeof(TA) == 4 ? kTileM * kPitch : 8];
  __shared__ __align__(16) uint16_t s_w[kTileN * kPitch];
  // A grid of at most two blocks per SM walks the tiles, so that the usual launch (few outliers:
  // return at once) costs one wave, not thousands of blocks. A tile ends with a barrier after its
  // last shared-memory read, so the next one may stage at once.
  const int64_t tiles_n = (p.N + kTileN - 1) / kTileN, tiles = tiles_n * ((p.M + kTileM - 1) / kTileM);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x)
    outlier_tile<TA>(p, total, (tile / tiles_n) * kTileM, (tile % tiles_n) * kTileN, s_ahi, s_alo, s_w);
}

}  // namespace

cudaError_t int8_outlier_matmul(const int32_t* list, const int32_t* count, const void* A, int a_dtype,
                                const int8_t* W, const float* w_stats, int64_t M, int64_t N, int64_t K,
                                const void* Ac, const int8_t* Wc, int64_t compact, void* out, cudaStream_t stream) {
  if (M <= 0 || N <= 0 || K <= 0) return cudaSuccess;
  if (N % 2 != 0) return cudaErrorInvalidValue;
  const int64_t tiles = ceil_div(N, kTileN) * ceil_div(M, kTileM);
  const OutlierParams p{list, count, A, W, w_stats, M, N, K, Ac, Wc, compact, out};
  const dim3 grid{unsigned(std::min<int64_t>(tiles, 2 * int64_t(sm_count())))};
  return int8::with_dtype(a_dtype, [&](auto t) {
    return launch_maybe_pdl(outlier_matmul_kernel<decltype(t)>, grid, dim3(kThreads), 0, stream, pdl_allowed(), p);
  });
}

}  // namespace kbit::cuda
