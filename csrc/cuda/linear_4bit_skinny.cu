// Fused 4-bit linear for M <= 16 tokens (decode): out = A @ dequant(W)^T + bias.
//
// Bandwidth-bound in principle: the packed weight is read once with streaming loads; everything
// else (activations, scales) is small and cached. Fragment layout, the k permutation and the byte
// table are described in linear_4bit_mma.cuh.
//
// Decomposition: a block of W warps owns a tile of 16 weight rows at a time (one m16 tile) and
// the warps split K into chunks of 128 * H columns: warp w takes chunks w, w+W, w+2W, ..., and
// lane t of a chunk owns 32H contiguous columns (16H contiguous bytes per row; a row's chunk is
// 64H contiguous bytes over 4 lanes). Every warp walks the same number of chunks per tile, and its
// chunks over all of the block's tiles form one sequence of "items"; each lane keeps the weights
// and scales of the next D items in a register ring, so loads stay in flight across tile ends.
// Activations are read at use (they are small and stay in L1). At the end of a tile the W warps'
// partial sums meet in shared memory and one pass adds them, adds the bias and writes
// out[token, row]. The grid is persistent (what fits on the GPU at once), so the 32 KB table is
// built once per block.
//
// Measured on an H100 (benchmarks/RESULTS.md) this reaches ~40% of copy bandwidth in a decode
// graph: the limit is the L1/shared-memory pipe (a table read per two weights, plus scattered
// scale loads) and issue, not loads in flight; deeper rings (D = 2, 4) did not help.
#include "cuda/linear_4bit_mma.cuh"

namespace kbit::cuda {
namespace {

constexpr int kRows = 16;    // weight rows per tile

// One item of a lane: H groups of 32 columns of rows g and g+8 (32 nibbles = 16 bytes each).
template <int H>
struct Stage {
  uint4 w[H][2];
  mma::RawScale s[H][2];
};

template <int W, int NT>
constexpr int smem_bytes() {
  return mma::kLutBytes + W * NT * 128 * 4 + 256 * 4;
}

// Where item i of a warp lies: the block's (i / per_tile)-th tile, chunk warp + W * (i % per_tile).
struct ItemMap {
  int per_tile;      // chunks per warp per tile
  int64_t ntiles, nchunks;
};

// A chunk is 128 * H columns of K; lane t owns its columns [32Ht, 32H(t+1)), so each row's bytes
// of a chunk are 64H contiguous bytes read by 4 lanes.
template <int W, int H, bool DQ>
__device__ __forceinline__ void load_stage(Stage<H>& st, const Linear4bitArgs& a, int bs_log2, const ItemMap& m,
                                           int64_t item, int warp, int g, int t) {
  const int64_t tile = blockIdx.x + (item / m.per_tile) * gridDim.x;
  const int64_t c = warp + W * (item % m.per_tile);
  const bool tok = tile < m.ntiles && c < m.nchunks;
#pragma unroll
  for (int h = 0; h < H; ++h) {
    const int64_t k0 = c * 128 * H + 32 * (H * t + h);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = tile * kRows + g + 8 * r;
      const bool ok = tok && k0 < a.K && row < a.N;
      const int64_t e = row * a.K + k0;  // flat element index of the 32-column group
      st.w[h][r] = ok ? ld_stream(a.W + e / 2) : make_uint4(0, 0, 0, 0);
      st.s[h][r] = mma::load_scale<DQ>(a.scales, e >> bs_log2, ok);
    }
  }
}

// Group h of a stage: the 32 columns from k0 (A fragments as in linear_4bit_mma.cuh).
template <typename T, int NT, bool DQ>
__device__ __forceinline__ void compute_group(const uint4 (&w)[2], const mma::RawScale (&rs)[2], int64_t k0,
                                              const Linear4bitArgs& a, float (&acc)[NT][4], const char* lut,
                                              uint32_t lane4, const float* code8, float offset, int g) {
  const bool kok = k0 < a.K;
  const T* A = static_cast<const T*>(a.A);
  uint4 x[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int64_t tok = nt * 8 + g;
    const bool ok = kok && tok < a.M;
    const uint4* src = reinterpret_cast<const uint4*>(A + tok * a.K + k0);
#pragma unroll
    for (int q = 0; q < 4; ++q) x[nt][q] = ok ? __ldg(src + q) : make_uint4(0, 0, 0, 0);
  }
  const float f0 = mma::decode_scale<DQ>(rs[0], code8, offset);
  const float f1 = mma::decode_scale<DQ>(rs[1], code8, offset);
  const uint32_t s0 = pack2<T>(f0, f0), s1 = pack2<T>(f1, f1);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    uint32_t af[4];
    mma::a_frag<T>(af, j, lut, lane4, w[0], w[1], s0, s1);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const uint4& xv = x[nt][j / 2];
      mma::mma16816<T>(acc[nt], af, (j % 2) ? xv.z : xv.x, (j % 2) ? xv.w : xv.y);
    }
  }
}

template <typename T, int NT, int H, bool DQ>
__device__ __forceinline__ void compute_stage(const Stage<H>& st, int64_t c, const Linear4bitArgs& a,
                                              float (&acc)[NT][4], const char* lut, uint32_t lane4,
                                              const float* code8, float offset, int g, int t) {
#pragma unroll
  for (int h = 0; h < H; ++h)
    compute_group<T, NT, DQ>(st.w[h], st.s[h], c * 128 * H + 32 * (H * t + h), a, acc, lut, lane4, code8, offset, g);
}

// Split-K reduction over the W warps of one tile; then one value per (row, token) to global memory.
template <typename T, int W, int NT>
__device__ __forceinline__ void finish_tile(float (&acc)[NT][4], float* red, int64_t tile, const Linear4bitArgs& a,
                                            int warp, int lane) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    *reinterpret_cast<float4*>(red + (warp * NT + nt) * 128 + lane * 4) =
        make_float4(acc[nt][0], acc[nt][1], acc[nt][2], acc[nt][3]);
    acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
  }
  __syncthreads();
  const T* bias = static_cast<const T*>(a.bias);
  T* C = static_cast<T*>(a.C);
  for (int o = threadIdx.x; o < NT * 128; o += W * 32) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < W; ++w) sum += red[w * NT * 128 + o];
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

template <typename T, int W, int NT, bool DQ, int D, int H>
__global__ void __launch_bounds__(W * 32) skinny_kernel(Linear4bitArgs a, int bs_log2) {
  extern __shared__ uint4 smem[];
  char* lut = reinterpret_cast<char*>(smem);
  float* red = reinterpret_cast<float*>(lut + mma::kLutBytes);
  float* code8 = red + W * NT * 128;
  mma::fill_lut<T>(smem, a.quant_type);
  if (DQ)
    for (int i = threadIdx.x; i < 256; i += W * 32) code8[i] = a.scales.nested_code[i];
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t lane4 = uint32_t(lane) << 2;
  const float offset = DQ ? __ldg(a.scales.nested_offset) : 0.0f;
  ItemMap m;
  m.ntiles = ceil_div(a.N, kRows);
  m.nchunks = ceil_div(a.K, 128 * H);
  m.per_tile = int(ceil_div(m.nchunks, W));
  const int64_t my_tiles = ceil_div(m.ntiles - blockIdx.x, gridDim.x);
  const int64_t items = my_tiles * m.per_tile;

  Stage<H> ring[D];
#pragma unroll
  for (int s = 0; s < D; ++s) load_stage<W, H, DQ>(ring[s], a, bs_log2, m, s, warp, g, t);
  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

  // `items` and `per_tile` are the same for every warp of the block, so the tile ends (and their
  // __syncthreads) are reached uniformly.
  for (int64_t i0 = 0; i0 < items; i0 += D) {
#pragma unroll
    for (int s = 0; s < D; ++s) {
      const int64_t i = i0 + s;
      if (i < items) {
        const int64_t within = i % m.per_tile;
        const Stage<H> cur = ring[s];
        load_stage<W, H, DQ>(ring[s], a, bs_log2, m, i + D, warp, g, t);
        compute_stage<T, NT, H, DQ>(cur, warp + W * within, a, acc, lut, lane4, code8, offset, g, t);
        if (within == m.per_tile - 1)
          finish_tile<T, W, NT>(acc, red, blockIdx.x + (i / m.per_tile) * gridDim.x, a, warp, lane);
      }
    }
  }
}

template <typename T, int W, int NT, bool DQ, int D, int H>
cudaError_t launch(const Linear4bitArgs& a, cudaStream_t stream) {
  constexpr int smem = smem_bytes<W, NT>();
  static int per_sm = -1;  // blocks per SM of this instantiation (same on every device we target)
  if (per_sm < 0) {
    cudaError_t e = cudaFuncSetAttribute(skinny_kernel<T, W, NT, DQ, D, H>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    int n = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, skinny_kernel<T, W, NT, DQ, D, H>, W * 32, smem);
    if (e != cudaSuccess) return e;
    per_sm = n > 0 ? n : 1;
  }
  const int64_t ntiles = ceil_div(a.N, kRows);
  const int64_t cap = int64_t(per_sm) * sm_count();
  const int grid = int(ntiles < cap ? ntiles : cap);
  skinny_kernel<T, W, NT, DQ, D, H><<<grid, W * 32, smem, stream>>>(a, log2_exact(a.blocksize));
  return cudaGetLastError();
}

// 8 warps, one item ahead (D = 1). One token takes 256-column chunks (H = 2), more tokens
// 128-column ones (H = 1): on an H100 (benchmarks/RESULTS.md) H = 2 was 2-4% faster at 1 token in a
// decode graph but up to 1.5x slower at 4..16 tokens, and deeper rings were no faster anywhere.
template <typename T, int NT, bool DQ>
cudaError_t pick(const Linear4bitArgs& a, cudaStream_t stream) {
  if constexpr (NT == 1)  // only 1..8 tokens can be one token
    if (a.M == 1) return launch<T, 8, NT, DQ, 1, 2>(a, stream);
  return launch<T, 8, NT, DQ, 1, 1>(a, stream);
}

template <typename T>
cudaError_t dispatch(const Linear4bitArgs& a, cudaStream_t stream) {
  const bool dq = a.scales.nested();
  if (a.M <= 8) return dq ? pick<T, 1, true>(a, stream) : pick<T, 1, false>(a, stream);
  return dq ? pick<T, 2, true>(a, stream) : pick<T, 2, false>(a, stream);
}

}  // namespace

bool linear_4bit_fusable(const Linear4bitArgs& a) {
  return (a.dtype == DType::BF16 || a.dtype == DType::F16) && a.K % 32 == 0 && a.blocksize >= 32 &&
         aligned16(a.A) && aligned16(a.W);
}

cudaError_t linear_4bit_skinny(const Linear4bitArgs& a, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return cudaSuccess;
  if (a.M > 16 || !linear_4bit_fusable(a)) return cudaErrorInvalidValue;
  return a.dtype == DType::BF16 ? dispatch<__nv_bfloat16>(a, stream) : dispatch<__half>(a, stream);
}

}  // namespace kbit::cuda
