// Fused 4-bit linear for M <= 16 tokens (decode): out = A @ dequant(W)^T + bias.
//
// Bandwidth-bound in principle: the packed weight is read once with streaming loads; everything
// else (activations, scales) is small and cached. Fragment layout, the k permutation and the byte
// table are described in linear_4bit_mma.cuh.
//
// Decomposition: a block of W warps owns a tile of 16 R weight rows at a time (R m16 slices) and
// the warps split K into 128-column chunks: warp w takes chunks w, w+W, w+2W, ..., and lane t of
// a chunk owns 32 contiguous columns (16 contiguous bytes per row; a row's chunk is 64 contiguous
// bytes over 4 lanes). Every warp walks the same number of chunks per tile, and its chunks over
// all of the block's tiles form one sequence of "items", walked with counters (no division in the
// loop); each lane holds the weights and scales of the next item in registers, so loads stay in
// flight across tile ends. Activations are read at use (they are small and stay in L1). At the
// end of a tile the W warps' partial sums meet in shared memory and one pass adds them, adds the
// bias and writes out[token, row]. The grid is persistent (what fits on the GPU at once), so the
// 32 KB table is built once per block.
//
// One token has its own variant (see compute_item), used where the one-token kernel
// (linear_4bit_decode.cu) does not apply (blocksize 32, K % 64 != 0); 9..16 tokens use R = 2
// (see pick). On an H100 (benchmarks/RESULTS.md) this reached 41-62% of copy bandwidth on the
// large layers at one token; instruction issue is the limit (with no weight loaded at all it ran
// at two thirds of its time, session 8).
#include "cuda/linear_4bit_mma.cuh"

namespace kbit::cuda {
namespace {

// One item of a lane: 32 columns of rows g and g+8 of each of the tile's R 16-row slices
// (32 nibbles = 16 bytes per row) and their scales.
template <int R>
struct Stage {
  uint4 w[R][2];
  mma::RawScale s[R][2];
};

template <int W, int NT, int R>
constexpr int smem_bytes() {
  return mma::kLutBytes + W * R * NT * 128 * 4 + 256 * 4;
}

struct Shape {
  int per_tile;  // chunks per warp per tile
  int ntiles, nchunks;
};

// Lane t's 32 columns of the item's chunk, rows 16 rt + g and 16 rt + g + 8 of the tile.
template <int W, int R, bool DQ>
__device__ __forceinline__ void load_stage(Stage<R>& st, const Linear4bitArgs& a, int bs_log2, const Shape& m,
                                           const mma::ItemPos& pos, int warp, int g, int t) {
  const int c = warp + W * pos.within;
  const int k0 = c * 128 + 32 * t;  // N, K < 2^30 (linear_4bit_fusable)
  const bool kok = pos.tile < m.ntiles && c < m.nchunks && k0 < a.K;
#pragma unroll
  for (int rt = 0; rt < R; ++rt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = pos.tile * 16 * R + 16 * rt + g + 8 * r;
      // Rows past N and columns past K read the weight's first bytes and scale instead: their
      // products are never written (row >= N) or meet zero activations (k >= K), and the loads
      // then need no predicate and no zeroing.
      const uint64_t e = kok && row < a.N ? uint64_t(row) * uint64_t(a.K) + uint64_t(k0) : 0u;  // flat index
      st.w[rt][r] = ld_stream(a.W + (e >> 1));
      st.s[rt][r] = mma::load_scale<DQ>(a.scales, int64_t(e >> bs_log2), true);
    }
}

// One item: the 32 columns from k0 (A fragments as in linear_4bit_mma.cuh).
//
// Several tokens (ONE = false): the scales multiply the weights before the MMA, because an MMA's
// k slots come from all four lanes of a row, whose columns may lie in different quantization
// blocks.
//
// One token (ONE = true): the MMA's 8 token columns would hold one token and seven zeros, so they
// are used to keep the four lanes' k slots apart instead: lane (g, t) supplies its activations to
// B only when g == t, so column n of the product sums only lane n's columns. The MMAs run on
// unscaled code values, and each column's float32 sum is scaled once per group by its lane's
// scale (fetched with a shuffle): four multiply-adds in place of 32 16-bit multiplies. Only the
// lanes g == t load activations.
template <typename T, int NT, int R, bool DQ, bool ONE>
__device__ __forceinline__ void compute_item(const Stage<R>& st, int64_t k0, const Linear4bitArgs& a,
                                             float (&acc)[R][NT][4], const char* lut, uint32_t lane4,
                                             const float* code8, float offset, int g, int t) {
  const bool kok = k0 < a.K;
  const T* A = static_cast<const T*>(a.A);
  if constexpr (ONE) {
    static_assert(NT == 1 && R == 1, "one token is one column group of one slice");
    const uint4(&w)[2] = st.w[0];
    const float f0 = mma::decode_scale<DQ>(st.s[0][0], code8, offset);  // row g
    const float f1 = mma::decode_scale<DQ>(st.s[0][1], code8, offset);  // row g + 8
    const bool ok = kok && g == t;
    const uint4* xsrc = reinterpret_cast<const uint4*>(A + k0);
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint4 xv = ok ? __ldg(xsrc + q) : make_uint4(0, 0, 0, 0);
      uint32_t af[4];
      mma::a_frag_unscaled(af, 2 * q, lut, lane4, w[0], w[1]);
      mma::mma16816<T>(part, af, xv.x, xv.y);
      mma::a_frag_unscaled(af, 2 * q + 1, lut, lane4, w[0], w[1]);
      mma::mma16816<T>(part, af, xv.z, xv.w);
    }
    // part[i]: row g (i < 2) or g + 8, column 2t + i % 2, i.e. the columns of lane (g, 2t + i % 2)
    // (zero for t >= 2: columns 4..7 have no lane).
    const int src = (g << 2) | ((2 * t) & 3);
    float(&c)[4] = acc[0][0];
    c[0] = fmaf(__shfl_sync(0xffffffffu, f0, src), part[0], c[0]);
    c[1] = fmaf(__shfl_sync(0xffffffffu, f0, src + 1), part[1], c[1]);
    c[2] = fmaf(__shfl_sync(0xffffffffu, f1, src), part[2], c[2]);
    c[3] = fmaf(__shfl_sync(0xffffffffu, f1, src + 1), part[3], c[3]);
  } else {
    uint4 x[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int64_t tok = nt * 8 + g;
      const bool ok = kok && tok < a.M;
      const uint4* src = reinterpret_cast<const uint4*>(A + tok * a.K + k0);
#pragma unroll
      for (int q = 0; q < 4; ++q) x[nt][q] = ok ? __ldg(src + q) : make_uint4(0, 0, 0, 0);
    }
    uint32_t s0[R], s1[R];  // rows g and g + 8 of each slice, two equal T each
#pragma unroll
    for (int rt = 0; rt < R; ++rt) {
      const float f0 = mma::decode_scale<DQ>(st.s[rt][0], code8, offset);
      const float f1 = mma::decode_scale<DQ>(st.s[rt][1], code8, offset);
      s0[rt] = pack2<T>(f0, f0);
      s1[rt] = pack2<T>(f1, f1);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int rt = 0; rt < R; ++rt) {
        uint32_t af[4];
        mma::a_frag<T>(af, j, lut, lane4, st.w[rt][0], st.w[rt][1], s0[rt], s1[rt]);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint4& xv = x[nt][j / 2];
          mma::mma16816<T>(acc[rt][nt], af, (j % 2) ? xv.z : xv.x, (j % 2) ? xv.w : xv.y);
        }
      }
  }
}

// One token: lane (g, t) holds rows g and g + 8 summed over the columns of lanes 2t and 2t + 1;
// after this, lanes t = 0 hold the rows' sums over all four lanes as token 0's values (slots 0
// and 2), the layout finish_tile reads.
__device__ __forceinline__ void gather_one_token(float (&acc)[1][1][4]) {
  float(&c)[4] = acc[0][0];
  float r0 = c[0] + c[1], r1 = c[2] + c[3];
  r0 += __shfl_xor_sync(0xffffffffu, r0, 1);
  r1 += __shfl_xor_sync(0xffffffffu, r1, 1);
  c[0] = r0;
  c[2] = r1;
}

// Split-K reduction over the W warps of one tile; then one value per (row, token) to global memory.
template <typename T, int W, int NT, int R>
__device__ __forceinline__ void finish_tile(float (&acc)[R][NT][4], float* red, int64_t tile,
                                            const Linear4bitArgs& a, int warp, int lane) {
  constexpr int kPerWarp = R * NT * 128;
#pragma unroll
  for (int rt = 0; rt < R; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      float(&c)[4] = acc[rt][nt];
      *reinterpret_cast<float4*>(red + warp * kPerWarp + (rt * NT + nt) * 128 + lane * 4) =
          make_float4(c[0], c[1], c[2], c[3]);
      c[0] = c[1] = c[2] = c[3] = 0.0f;
    }
  __syncthreads();
  const T* bias = static_cast<const T*>(a.bias);
  T* C = static_cast<T*>(a.C);
  for (int o = threadIdx.x; o < kPerWarp; o += W * 32) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < W; ++w) sum += red[w * kPerWarp + o];
    const int rt = o / (NT * 128), nt = (o / 128) % NT, l = (o % 128) / 4, i = o % 4;
    const int64_t row = tile * 16 * R + 16 * rt + l / 4 + 8 * (i / 2);
    const int64_t tok = nt * 8 + 2 * (l % 4) + (i % 2);
    if (row < a.N && tok < a.M) {
      if (bias) sum += to_f32(bias[row]);
      C[tok * a.N + row] = from_f32<T>(sum);
    }
  }
  __syncthreads();
}

// Warps per SM the registers are held to (__launch_bounds__): 24 (80 registers per thread) for
// one-slice tiles, 16 (128) for two-slice tiles, whose items hold twice the weights.
template <int R>
constexpr int warps_per_sm() {
  return R == 1 ? 24 : 16;
}

template <typename T, int W, int NT, int R, bool DQ, bool ONE>
__global__ void __launch_bounds__(W * 32, warps_per_sm<R>() / W) skinny_kernel(Linear4bitArgs a, int bs_log2) {
  extern __shared__ uint4 smem[];
  char* lut = reinterpret_cast<char*>(smem);
  float* red = reinterpret_cast<float*>(lut + mma::kLutBytes);
  float* code8 = red + W * R * NT * 128;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t lane4 = uint32_t(lane) << 2;
  Shape m;
  m.ntiles = int(ceil_div(a.N, 16 * R));
  m.nchunks = int(ceil_div(a.K, 128));
  m.per_tile = int(ceil_div(m.nchunks, W));

  // One item in flight per warp: the next item's weights and scales load while this one computes.
  // The first one is issued before the table is built, which hides its latency.
  mma::ItemPos cur{int(blockIdx.x), 0}, ahead = cur;
  Stage<R> next;
  load_stage<W, R, DQ>(next, a, bs_log2, m, ahead, warp, g, t);
  ahead.next(m.per_tile);
  const float offset = mma::fill_tables<T, DQ>(smem, code8, a);
  __syncthreads();  // code8 and the table

  float acc[R][NT][4];
#pragma unroll
  for (int rt = 0; rt < R; ++rt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.0f;
  // Every warp of the block walks the same tiles with the same per_tile, so the tile ends (and
  // their __syncthreads) are reached uniformly.
  while (cur.tile < m.ntiles) {
    const Stage<R> st = next;
    load_stage<W, R, DQ>(next, a, bs_log2, m, ahead, warp, g, t);
    ahead.next(m.per_tile);
    const int64_t k0 = (warp + W * cur.within) * 128 + 32 * t;
    compute_item<T, NT, R, DQ, ONE>(st, k0, a, acc, lut, lane4, code8, offset, g, t);
    if (cur.within == m.per_tile - 1) {
      if constexpr (ONE) gather_one_token(acc);
      finish_tile<T, W, NT, R>(acc, red, cur.tile, a, warp, lane);
    }
    cur.next(m.per_tile);
  }
}

template <typename T, int W, int NT, int R, bool DQ, bool ONE = false>
cudaError_t launch(const Linear4bitArgs& a, cudaStream_t stream) {
  constexpr int smem = smem_bytes<W, NT, R>();
  auto kernel = skinny_kernel<T, W, NT, R, DQ, ONE>;
  static bool smem_allowed[64] = {};
  static int per_sm = -1;
  int grid = 0;
  const cudaError_t e = mma::persistent_grid(kernel, W * 32, smem, ceil_div(a.N, 16 * R), smem_allowed, per_sm, grid);
  if (e != cudaSuccess) return e;
  kernel<<<grid, W * 32, smem, stream>>>(a, log2_exact(a.blocksize));
  return cudaGetLastError();
}

// 8 warps. One token takes its own variant; 9..16 tokens take 32-row tiles (R = 2), which load
// each activation once for twice the weights: on an H100 (benchmarks/RESULTS.md, session 4) the
// 16-row tiles were bound by the activations' L1 traffic there, and the 32-row ones were 5-29%
// faster at 16 tokens. 256-column chunks, 2-4% faster at one token in session 2, spilled
// registers in the one-token variant and lost.
template <typename T, int NT, bool DQ>
cudaError_t pick(const Linear4bitArgs& a, cudaStream_t stream) {
  if constexpr (NT == 1) {  // only 1..8 tokens can be one token
    if (a.M == 1) return launch<T, 8, NT, 1, DQ, true>(a, stream);
    return launch<T, 8, NT, 1, DQ>(a, stream);
  } else {
    return launch<T, 8, NT, 2, DQ>(a, stream);
  }
}

}  // namespace

bool linear_4bit_fusable(const Linear4bitArgs& a) {
  // Row and column indices are 32-bit inside the kernels.
  return (a.dtype == DType::BF16 || a.dtype == DType::F16) && a.K % 32 == 0 && a.blocksize >= 32 &&
         a.N < (int64_t(1) << 30) && a.K < (int64_t(1) << 30) && aligned16(a.A) && aligned16(a.W);
}

cudaError_t linear_4bit_skinny(const Linear4bitArgs& a, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return cudaSuccess;
  if (a.M > 16 || !linear_4bit_fusable(a)) return cudaErrorInvalidValue;
  return mma::with_types(a, [&](auto t, auto dq) {
    using T = decltype(t);
    constexpr bool kDQ = decltype(dq)::value;
    return a.M <= 8 ? pick<T, 1, kDQ>(a, stream) : pick<T, 2, kDQ>(a, stream);
  });
}

}  // namespace kbit::cuda
