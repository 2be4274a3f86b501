// Fused 4-bit linear for M <= 16 tokens (decode): out = A @ dequant(W)^T + bias.
//
// Bandwidth-bound: the packed weight is read once, 16 bytes per lane per row, with streaming
// loads; everything else (activations, scales) is small and cached. Fragment layout and the k
// permutation are described in linear_4bit_mma.cuh.
//
// Decomposition: a block (8 warps) owns a tile of 16 weight rows at a time (one m16 tile) and the
// warps split K: warp w takes 128-column chunks w, w+8, w+16, ... Each lane loads, per chunk,
// 16 bytes of each of its two rows, their two scales, and 64 bytes of activations per token it
// holds (token g, and g+8 when NT = 2), then runs 8 mma steps per 8-token group. The loads of the
// next chunk (possibly of the block's next tile) are issued before the current chunk's math, so
// each warp keeps two chunks in flight. At the end of a tile the 8 warps' partial sums meet in
// shared memory and one pass adds them, adds the bias and writes out[token, row].
// The grid is persistent (at most what fits on the GPU at once) so the 32 KB table is built once
// per block.
// (A variant that streamed weights through a per-lane cp.async ring three chunks deep and read the
// activations at use measured 1.2-1.5x slower on H100 at 1-16 tokens: benchmarks/RESULTS.md.)
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
cudaError_t dispatch(const Linear4bitArgs& a, cudaStream_t stream) {
  const bool dq = a.scales.nested();
  if (a.M <= 8) return dq ? launch<T, 1, true>(a, stream) : launch<T, 1, false>(a, stream);
  return dq ? launch<T, 2, true>(a, stream) : launch<T, 2, false>(a, stream);
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
