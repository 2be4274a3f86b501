// Fused 4-bit linear for one token (decode): out[n] = dot(dequant(W[n, :]), a) + bias[n].
//
// The skinny kernel (linear_4bit_skinny.cu) serves 1..16 tokens; at one token it spent about two
// thirds of its time executing instructions even with no weight loaded (benchmarks/RESULTS.md,
// session 8). This kernel issues fewer instructions per weight:
//   - Each lane's item is 64 columns of two rows (32 bytes per row, two 16-byte loads), twice the
//     skinny kernel's, so the per-item work (addresses, predicates, scales) is spread over twice
//     the weights. This needs one scale per 64 columns: blocksize >= 64 and K % 64 == 0.
//   - Indices are 32-bit (N * K < 2^31), and loads for rows or columns out of range read valid
//     memory instead of being predicated and zeroed.
//   - The next item's activations are copied into shared memory (cp.async) while the current one
//     computes, as its weights are loaded into registers; only the 4 lanes that feed them to the
//     MMAs read them.
// Tensor-core use is the skinny kernel's one-token scheme (linear_4bit_mma.cuh describes the
// fragments): mma.sync m16n8k16 with 16 weight rows as A; lane (g, t) supplies its activations as
// B column g only when g == t, so column n of the product sums lane n's columns alone, on unscaled
// code values, and each sum is scaled once per item (the lane's scale, fetched by shuffle).
//
// Decomposition: a block of 8 warps owns 16 weight rows at a time (a tile) and the warps split K
// into 256-column chunks (warp w takes chunks w, w + 8, ...); the grid is persistent. Each warp
// holds the next item's weights and scales in registers while it computes the current one. At a
// tile's end the warps' sums meet in shared memory (double-buffered, so one barrier per tile).
#include "cuda/cp_async.cuh"
#include "cuda/linear_4bit_mma.cuh"

namespace kbit::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kChunk = 256;        // columns per chunk; 64 per lane
constexpr int kXBytes = kWarps * 2 * kChunk * 2;  // per warp two chunks of 16-bit activations
constexpr int kRedFloats = 2 * kWarps * 16;
constexpr int kSmemBytes = mma::kLutBytes + kXBytes + kRedFloats * 4 + 256 * 4;

// A lane's item: 64 columns (32 bytes) of rows g and g + 8, and the rows' scales.
struct Item {
  uint4 w[2][2];  // [row g, g + 8][first, second 16 bytes]
  mma::RawScale s[2];
};

struct Dims {
  int N, K, ntiles, nchunks, per_tile, bs_log2;
};

// Rows past N and chunks past K read the weight's first bytes and scale instead of being skipped:
// their products are never written (row >= N) or meet zero activations (k >= K), and the loads
// then need no predicate and no zeroing.
template <bool DQ>
__device__ __forceinline__ void load_item(Item& it, const Linear4bitArgs& a, const Dims& d, const mma::ItemPos& c,
                                          int warp, int g, int t) {
  const int chunk = warp + kWarps * c.within;
  const int k0 = chunk * kChunk + 64 * t;
  const bool kok = c.tile < d.ntiles && k0 < d.K;  // K % 64 == 0: the 64 columns are all in range
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = c.tile * 16 + g + 8 * r;
    const uint32_t e = kok && row < d.N ? uint32_t(row) * uint32_t(d.K) + uint32_t(k0) : 0u;  // N * K < 2^31
    const uint8_t* p = a.W + (e >> 1);
    it.w[r][0] = ld_stream(p);
    it.w[r][1] = ld_stream(p + 16);
    it.s[r] = mma::load_scale<DQ>(a.scales, e >> d.bs_log2, true);
  }
}

// The 256 activations of a warp's chunk into shared memory at dst: lane L copies columns
// 8L..8L+7; columns past K are zero-filled.
__device__ __forceinline__ void copy_x(uint32_t dst, const void* x, const Dims& d, const mma::ItemPos& c, int warp,
                                       int lane) {
  const int k = (warp + kWarps * c.within) * kChunk + 8 * lane;
  const bool ok = c.tile < d.ntiles && k < d.K;
  cp_async16(dst + 16 * lane, static_cast<const uint16_t*>(x) + (ok ? k : 0), ok ? 16 : 0);
  cp_async_commit();
}

template <typename T, bool DQ>
__global__ void __launch_bounds__(kWarps * 32, 3) decode_kernel(Linear4bitArgs a, Dims d) {
  extern __shared__ uint4 smem[];
  const char* lut = reinterpret_cast<const char*>(smem);
  float* red = reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + mma::kLutBytes + kXBytes);
  float* code8 = red + kRedFloats;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t lane4 = uint32_t(lane) << 2;
  const char* xwarp = reinterpret_cast<const char*>(smem) + mma::kLutBytes + warp * 2 * kChunk * 2;  // two slots
  const uint32_t xbuf = uint32_t(__cvta_generic_to_shared(xwarp));

  // The first item's loads are issued before the table is built, which hides their latency.
  mma::ItemPos cur{int(blockIdx.x), 0}, ahead = cur;
  Item next{};
  load_item<DQ>(next, a, d, ahead, warp, g, t);
  copy_x(xbuf, a.A, d, ahead, warp, lane);
  ahead.next(d.per_tile);
  const float offset = mma::fill_tables<T, DQ>(smem, code8, a);
  __syncthreads();

  const int src = (g << 2) | ((2 * t) & 3);  // the lane whose columns land in this lane's slot 0
  float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int buf = 0, xslot = 0;
  while (cur.tile < d.ntiles) {
    const Item it = next;
    load_item<DQ>(next, a, d, ahead, warp, g, t);
    // This item's activations have landed (each lane waits for its own copy; the warp barrier
    // makes the others' visible, and orders the last item's reads before the next copy).
    cp_async_wait<0>();
    __syncwarp();
    copy_x(xbuf + (xslot ^ 1) * kChunk * 2, a.A, d, ahead, warp, lane);
    ahead.next(d.per_tile);

    // Lanes g == t read their 64 columns; the others keep zeros (not loaded: predicated-off lanes
    // cost no shared-memory bandwidth).
    const uint4* xs = reinterpret_cast<const uint4*>(xwarp + xslot * kChunk * 2 + 128 * t);
    xslot ^= 1;
    float part[2][4] = {};  // two chains, so consecutive MMAs do not wait on each other
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      uint4 xv = make_uint4(0, 0, 0, 0);
      if (g == t) xv = xs[q];
      // Steps 2q and 2q + 1 of 16: bytes 4q..4q+3 of each row's 32, i.e. steps 2q % 8 and
      // 2q % 8 + 1 of the 16-byte half q / 4 (linear_4bit_mma.cuh's fragment of 32 columns).
      const int h = q / 4, j = 2 * q % 8;
      uint32_t af[4];
      mma::a_frag_unscaled(af, j, lut, lane4, it.w[0][h], it.w[1][h]);
      mma::mma16816<T>(part[0], af, xv.x, xv.y);
      mma::a_frag_unscaled(af, j + 1, lut, lane4, it.w[0][h], it.w[1][h]);
      mma::mma16816<T>(part[1], af, xv.z, xv.w);
    }
    // part[.][i]: row g (i < 2) or g + 8, summed over the columns of lane (g, 2t + i % 2).
    const float f0 = mma::decode_scale<DQ>(it.s[0], code8, offset);
    const float f1 = mma::decode_scale<DQ>(it.s[1], code8, offset);
    c[0] = fmaf(__shfl_sync(0xffffffffu, f0, src), part[0][0] + part[1][0], c[0]);
    c[1] = fmaf(__shfl_sync(0xffffffffu, f0, src + 1), part[0][1] + part[1][1], c[1]);
    c[2] = fmaf(__shfl_sync(0xffffffffu, f1, src), part[0][2] + part[1][2], c[2]);
    c[3] = fmaf(__shfl_sync(0xffffffffu, f1, src + 1), part[0][3] + part[1][3], c[3]);

    if (cur.within == d.per_tile - 1) {
      // Lanes t = 0 and 1 hold columns 0..3 (lanes t = 2, 3 hold zeros): sum them into lane t = 0.
      float r0 = c[0] + c[1], r1 = c[2] + c[3];
      r0 += __shfl_xor_sync(0xffffffffu, r0, 1);
      r1 += __shfl_xor_sync(0xffffffffu, r1, 1);
      float* rb = red + buf * kWarps * 16;
      if (t == 0) {
        rb[warp * 16 + g] = r0;
        rb[warp * 16 + g + 8] = r1;
      }
      c[0] = c[1] = c[2] = c[3] = 0.0f;
      __syncthreads();  // the other buffer is written only after the next tile's barrier
      const int row = cur.tile * 16 + threadIdx.x;
      if (threadIdx.x < 16 && row < d.N) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += rb[w * 16 + threadIdx.x];
        if (a.bias) sum += to_f32(static_cast<const T*>(a.bias)[row]);
        static_cast<T*>(a.C)[row] = from_f32<T>(sum);
      }
      buf ^= 1;
    }
    cur.next(d.per_tile);
  }
}

template <typename T, bool DQ>
cudaError_t launch(const Linear4bitArgs& a, cudaStream_t stream) {
  Dims d;
  d.N = int(a.N);
  d.K = int(a.K);
  d.ntiles = int(ceil_div(a.N, 16));
  d.nchunks = int(ceil_div(a.K, kChunk));
  d.per_tile = int(ceil_div(d.nchunks, kWarps));
  d.bs_log2 = log2_exact(a.blocksize);
  auto kernel = decode_kernel<T, DQ>;
  static bool smem_allowed[64] = {};
  static int per_sm = -1;
  int grid = 0;
  const cudaError_t e = mma::persistent_grid(kernel, kWarps * 32, kSmemBytes, d.ntiles, smem_allowed, per_sm, grid);
  if (e != cudaSuccess) return e;
  kernel<<<grid, kWarps * 32, kSmemBytes, stream>>>(a, d);
  return cudaGetLastError();
}

}  // namespace

bool linear_4bit_decode_supported(const Linear4bitArgs& a) {
  return a.M == 1 && linear_4bit_fusable(a) && a.K % 64 == 0 && a.blocksize >= 64 &&
         a.N * a.K < (int64_t(1) << 31);
}

cudaError_t linear_4bit_decode(const Linear4bitArgs& a, cudaStream_t stream) {
  if (a.N <= 0) return cudaSuccess;
  if (!linear_4bit_decode_supported(a)) return cudaErrorInvalidValue;
  return mma::with_types(a, [&](auto t, auto dq) {
    using T = decltype(t);
    return launch<T, decltype(dq)::value>(a, stream);
  });
}

}  // namespace kbit::cuda
