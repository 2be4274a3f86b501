// Fused 4-bit linear for M > 16 tokens: out = A @ dequant(W)^T + bias, on tensor cores.
//
// Block tile: 128 weight rows x 64 tokens, 4 warps; warp w owns rows [32w, 32w+32) (two m16
// tiles) against all 64 tokens (eight n8 tiles): 16 mma per k16 step, 64 float accumulators per
// lane. K runs in 128-column chunks (the k permutation of linear_4bit_mma.cuh):
//   - activations: a 64 x 128 tile per chunk is copied to shared memory with cp.async (16-byte
//     pieces, zero-filled past M and K), three stages deep. Each lane then reads its B fragments
//     with one 16-byte shared load per token group per two k16 steps. Rows are 256 bytes, so the
//     16-byte piece c of token row r is stored at position c ^ (((c >> 3) & 1) << 1) ^ (r & 1):
//     the eight lanes of each quarter-warp then hit eight distinct bank groups on both the copy
//     (8 consecutive pieces of one row) and the fragment reads (pieces 4t + s of rows 2q, 2q+1).
//   - weights: each lane loads its four rows' 16-byte groups straight into registers (one chunk
//     ahead) and dequantizes them through the byte table; the 4 warps' rows are disjoint, so the
//     weight tile is dequantized exactly once per block.
// Blocks are ordered token tile fastest, so the blocks that share weight rows run together and the
// second reader finds them in L2. When there are too few tiles to fill the GPU, K is split across
// blockIdx.z; partial sums go to a float32 workspace with atomics and a second kernel casts them
// and adds the bias.
#include "cuda/cp_async.cuh"
#include "cuda/linear_4bit_mma.cuh"

namespace kbit::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 128;          // weight rows per block
constexpr int kToks = 64;           // tokens per block
constexpr int kChunk = 128;         // columns of K per stage
constexpr int kStages = 3;
constexpr int kMT = 2, kNT = 8;     // m16 tiles and n8 tiles per warp
constexpr int kStageBytes = kToks * kChunk * 2;
constexpr int kSmem = mma::kLutBytes + kStages * kStageBytes + 256 * 4;

struct WChunk {
  uint4 w[kMT][2];
  mma::RawScale s[kMT][2];
};

__device__ __forceinline__ int swz(int row, int piece) {
  return piece ^ (((piece >> 3) & 1) << 1) ^ (row & 1);
}

// Copies the 64 x 128 activation tile of chunk c into stage buffer `dst` (shared address).
template <typename T>
__device__ __forceinline__ void load_act(uint32_t dst, const T* A, int64_t M, int64_t K, int64_t tok0,
                                         int64_t c) {
#pragma unroll
  for (int r = 0; r < kToks * 16 / kThreads; ++r) {
    const int idx = threadIdx.x + r * kThreads;
    const int row = idx >> 4, piece = idx & 15;
    const int64_t tok = tok0 + row, k = c * kChunk + piece * 8;
    const bool ok = tok < M && k < K;
    cp_async16(dst + row * 256 + swz(row, piece) * 16, ok ? static_cast<const void*>(A + tok * K + k) : A, ok ? 16 : 0);
  }
}

template <bool DQ>
__device__ __forceinline__ void load_w(WChunk& ch, const Linear4bitArgs& a, int bs_log2, int64_t row0,
                                       int64_t c, bool valid, int g, int t) {
  const int64_t k0 = c * kChunk + 32 * t;
  const bool kok = valid && k0 < a.K;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = row0 + mt * 16 + g + 8 * r;
      const bool ok = kok && row < a.N;
      const int64_t e = row * a.K + k0;
      ch.w[mt][r] = ok ? __ldg(reinterpret_cast<const uint4*>(a.W + e / 2)) : make_uint4(0, 0, 0, 0);
      ch.s[mt][r] = mma::load_scale<DQ>(a.scales, e >> bs_log2, ok);
    }
}

template <typename T, bool DQ>
__device__ __forceinline__ void compute(const WChunk& ch, uint32_t stage, float (&acc)[kMT][kNT][4],
                                        const char* lut, uint32_t lane4, const float* code8, float offset,
                                        int g, int t) {
  uint32_t s[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float f = mma::decode_scale<DQ>(ch.s[mt][r], code8, offset);
      s[mt][r] = pack2<T>(f, f);
    }
#pragma unroll
  for (int jj = 0; jj < 4; ++jj) {
    uint4 b[kNT];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const int row = nt * 8 + g;
      b[nt] = lds128(stage + row * 256 + swz(row, 4 * t + jj) * 16);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = 2 * jj + h;
      uint32_t af[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
        mma::a_frag<T>(af[mt], j, lut, lane4, ch.w[mt][0], ch.w[mt][1], s[mt][0], s[mt][1]);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
          mma::mma16816<T>(acc[mt][nt], af[mt], h ? b[nt].z : b[nt].x, h ? b[nt].w : b[nt].y);
    }
  }
}

template <typename T, bool DQ>
__global__ void __launch_bounds__(kThreads) tiled_kernel(Linear4bitArgs a, int bs_log2, int64_t chunks_per_split,
                                                         float* ws) {
  extern __shared__ uint4 smem[];
  char* lut = reinterpret_cast<char*>(smem);
  const uint32_t act = static_cast<uint32_t>(__cvta_generic_to_shared(lut + mma::kLutBytes));
  float* code8 = reinterpret_cast<float*>(lut + mma::kLutBytes + kStages * kStageBytes);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t lane4 = uint32_t(lane) << 2;
  const int64_t tok0 = int64_t(blockIdx.x) * kToks;
  const int64_t row0 = int64_t(blockIdx.y) * kRows + warp * 32;
  const int64_t nchunks = ceil_div(a.K, kChunk);
  const int64_t c0 = int64_t(blockIdx.z) * chunks_per_split;
  const int64_t c1 = min(nchunks, c0 + chunks_per_split);
  const T* A = static_cast<const T*>(a.A);

  // Start the first activation stages before building the table, so the copies overlap it.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (c0 + s < c1) load_act(act + s * kStageBytes, A, a.M, a.K, tok0, c0 + s);
    cp_async_commit();
  }
  WChunk cur;
  load_w<DQ>(cur, a, bs_log2, row0, c0, c0 < c1, g, t);
  const float offset = mma::fill_tables<T, DQ>(smem, code8, a);

  float acc[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;

  for (int64_t c = c0; c < c1; ++c) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // chunk c's tile is visible; the stage read last iteration is free again
    const int64_t cn = c + kStages - 1;
    if (cn < c1) load_act(act + ((cn - c0) % kStages) * kStageBytes, A, a.M, a.K, tok0, cn);
    cp_async_commit();
    WChunk nxt;
    load_w<DQ>(nxt, a, bs_log2, row0, c + 1, c + 1 < c1, g, t);
    compute<T, DQ>(cur, act + ((c - c0) % kStages) * kStageBytes, acc, lut, lane4, code8, offset, g, t);
    cur = nxt;
  }
  cp_async_wait<0>();

  const T* bias = static_cast<const T*>(a.bias);
  T* C = static_cast<T*>(a.C);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t row = row0 + mt * 16 + g + 8 * (i / 2);
        const int64_t tok = tok0 + nt * 8 + 2 * t + (i % 2);
        if (row >= a.N || tok >= a.M) continue;
        if (ws) {
          atomicAdd(ws + tok * a.N + row, acc[mt][nt][i]);
        } else {
          float v = acc[mt][nt][i];
          if (bias) v += to_f32(bias[row]);
          C[tok * a.N + row] = from_f32<T>(v);
        }
      }
}

// out = cast(ws + bias) after a split-K run.
template <typename T>
__global__ void finish_kernel(const float* __restrict__ ws, const T* __restrict__ bias, T* __restrict__ C,
                              int64_t M, int64_t N) {
  const int64_t total = M * N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    float v = ws[i];
    if (bias) v += to_f32(bias[i % N]);
    C[i] = from_f32<T>(v);
  }
}

int blocks_per_sm() { return 2; }  // kSmem (~81 KB) twice fits in 228 KB; registers allow it too

template <typename T, bool DQ>
cudaError_t launch(const Linear4bitArgs& a, int splits, float* ws, cudaStream_t stream) {
  static bool smem_allowed[64] = {};
  cudaError_t e = allow_dynamic_smem(tiled_kernel<T, DQ>, kSmem, smem_allowed);
  if (e != cudaSuccess) return e;
  const int64_t nchunks = ceil_div(a.K, kChunk);
  if (splits < 1) splits = 1;
  const int64_t per = ceil_div(nchunks, splits);
  const int64_t used = nchunks > 0 ? ceil_div(nchunks, per) : 1;
  const dim3 grid(unsigned(ceil_div(a.M, kToks)), unsigned(ceil_div(a.N, kRows)), unsigned(used));
  tiled_kernel<T, DQ><<<grid, kThreads, kSmem, stream>>>(a, log2_exact(a.blocksize), per > 0 ? per : 1,
                                                          splits > 1 ? ws : nullptr);
  e = cudaGetLastError();
  if (e != cudaSuccess || splits <= 1) return e;
  return linear_4bit_finish_splits(a, ws, stream);
}

}  // namespace

cudaError_t linear_4bit_finish_splits(const Linear4bitArgs& a, const float* ws, cudaStream_t stream) {
  const int64_t total = a.M * a.N;
  const int64_t blocks = ceil_div(total, 256);
  const int grid = int(blocks < int64_t(sm_count()) * 8 ? blocks : int64_t(sm_count()) * 8);
  return mma::with_types(a, [&](auto t, auto) {
    using T = decltype(t);
    finish_kernel<<<grid, 256, 0, stream>>>(ws, static_cast<const T*>(a.bias), static_cast<T*>(a.C), a.M, a.N);
    return cudaGetLastError();
  });
}

int linear_4bit_tiled_splits(const Linear4bitArgs& a) {
  return split_k_ways(ceil_div(a.M, kToks) * ceil_div(a.N, kRows), int64_t(sm_count()) * blocks_per_sm(),
                           ceil_div(a.K, kChunk));
}

cudaError_t linear_4bit_tiled(const Linear4bitArgs& a, int splits, float* workspace, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return cudaSuccess;
  if (!linear_4bit_fusable(a) || (splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
  return mma::with_types(a, [&](auto t, auto dq) {
    return launch<decltype(t), decltype(dq)::value>(a, splits, workspace, stream);
  });
}

}  // namespace kbit::cuda
