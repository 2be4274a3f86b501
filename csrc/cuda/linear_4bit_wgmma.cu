// Fused 4-bit linear for many tokens on Hopper (sm_90a): out = A @ dequant(W)^T + bias with
// warpgroup MMAs (wgmma), the weight dequantized in registers.
//
// Operands swapped as in linear_4bit_mma.cuh: wgmma's A (64 x 16, from registers) holds 64 weight
// rows, its B (16 x TOK, from shared memory) TOK tokens, and the accumulators out^T.
//
// Block: 2 warpgroups (8 warps), 128 weight rows x TOK tokens (TOK = 128 or 256); warpgroup h owns
// rows [64h, 64h+64), warp w of it rows 16w..16w+15. Per 64-column chunk of K a stage holds
//   - the activations, TOK rows x 128 bytes in wgmma's K-major 128-byte swizzle, copied by one
//     TMA (thread 0) and counted on the stage's mbarrier; zeros past M and K;
//   - the packed weights, 128 rows x 32 bytes by cp.async (all threads), rows padded to 48 bytes
//     so that a warp's reads of its 8 rows hit distinct banks.
// In natural column order the A registers of lane (g, t) at k step j are the column pairs
// 16j + 2t and 16j + 8 + 2t of rows g and g+8: byte t of 32-bit words 2j and 2j+1 of the row's
// 32 bytes. Each lane reads the row's 32 bytes (the quad's four lanes read the same ones: a
// broadcast) and picks byte t with one rotate before the byte-table read of linear_4bit_mma.cuh.
// A chunk spans two 32-column groups, each inside one quantization block; their decoded
// (double-quantized) scales are computed once per block into shared memory, two chunks ahead.
//
// Pipeline, one barrier per chunk: chunk c's wgmmas are issued behind chunk c-1's (the tensor
// pipe does not drain at a chunk boundary), then every warp waits for chunk c-1's and dequantizes
// chunk c+1 into the register set those used; activations are loaded kStages-2 chunks ahead, the
// weights kStages (they are dequantized a chunk before they are multiplied). The output tile
// leaves through shared memory in whole 16-byte pieces of output rows. Blocks are ordered token
// tile fastest, so blocks sharing weight rows run together and meet them in L2.
// Measurements and what was tried: benchmarks/RESULTS.md (sessions 3 and 7).
#include "cuda/cp_async.cuh"
#include "cuda/linear_4bit_mma.cuh"
#include "cuda/tensor_map.cuh"
#include "cuda/wgmma.cuh"

namespace kbit::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRows = 128;   // weight rows per block
constexpr int kChunk = 64;   // columns of K per stage: one 128-byte swizzle panel, 4 k16 steps
constexpr int kWRow = 48;    // bytes of a staged weight row: 32, padded
constexpr int kWStage = kRows * kWRow;
constexpr int kScaleSlot = kRows * 2 * 4;  // per row two 32-column groups, one T2 register each
constexpr int kOutRow = kRows + 8;  // elements per token of the staged output tile (padded by 16 bytes)

template <int TOK>
struct Tile {
  static constexpr int kActStage = TOK * 128;  // TOK rows x 128 bytes
  static constexpr int kStages = TOK == 128 ? 8 : 5;
  static constexpr int kLutAt = kStages * kActStage;  // offsets from the 1024-aligned base
  static constexpr int kWAt = kLutAt + mma::kLutBytes;
  static constexpr int kScaleAt = kWAt + kStages * kWStage;
  static constexpr int kCodeAt = kScaleAt + 2 * kScaleSlot;
  static constexpr int kBarAt = kCodeAt + 256 * 4;  // one mbarrier per activation stage
  static constexpr int kSmem = 1024 + kBarAt + kStages * 8;
};
static_assert(Tile<128>::kSmem <= 227 * 1024 && Tile<256>::kSmem <= 227 * 1024, "shared memory");
static_assert(Tile<128>::kLutAt >= 128 * kOutRow * 2 && Tile<256>::kLutAt >= 256 * kOutRow * 2,
              "the output tile fits in the activation stages");

#ifdef KBIT_SM90A_DEVICE

// One m64nNk16 warpgroup MMA (N = 2 * ACC), A from registers, B from shared memory, D += A B.
template <typename T, int ACC>
__device__ __forceinline__ void wgmma_rs(float (&d)[ACC], const uint32_t (&a)[4], uint64_t desc);

#define KBIT_ACC8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), \
                     "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define KBIT_ACC64 KBIT_ACC8(0), KBIT_ACC8(8), KBIT_ACC8(16), KBIT_ACC8(24), KBIT_ACC8(32), KBIT_ACC8(40), \
                   KBIT_ACC8(48), KBIT_ACC8(56)
#define KBIT_ACC128 KBIT_ACC64, KBIT_ACC8(64), KBIT_ACC8(72), KBIT_ACC8(80), KBIT_ACC8(88), KBIT_ACC8(96), \
                    KBIT_ACC8(104), KBIT_ACC8(112), KBIT_ACC8(120)
#define KBIT_REGS64                                                                                      \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, "     \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "     \
  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "     \
  "%59, %60, %61, %62, %63"
#define KBIT_REGS128                                                                                     \
  KBIT_REGS64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, "                \
  "%78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, "     \
  "%97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, "       \
  "%113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
// PTX names the 16-bit type; the rest is the same for bf16 and fp16.
#define KBIT_WGMMA_RS(T, PTX_TYPE, ACC, N, REGS, IA, IB, IC, ID, IDESC, IP, ACCS)                      \
  template <>                                                                                          \
  __device__ __forceinline__ void wgmma_rs<T, ACC>(float (&d)[ACC], const uint32_t(&a)[4], uint64_t desc) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " IP ", 0;\n"                                      \
                 "wgmma.mma_async.sync.aligned.m64n" N "k16.f32." PTX_TYPE "." PTX_TYPE " {" REGS      \
                 "}, {" IA ", " IB ", " IC ", " ID "}, " IDESC ", p, 1, 1, 0;\n}\n"                   \
                 : ACCS                                                                                \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));                   \
  }
KBIT_WGMMA_RS(__nv_bfloat16, "bf16", 64, "128", KBIT_REGS64, "%64", "%65", "%66", "%67", "%68", "%69", KBIT_ACC64)
KBIT_WGMMA_RS(__half, "f16", 64, "128", KBIT_REGS64, "%64", "%65", "%66", "%67", "%68", "%69", KBIT_ACC64)
KBIT_WGMMA_RS(__nv_bfloat16, "bf16", 128, "256", KBIT_REGS128, "%128", "%129", "%130", "%131", "%132", "%133",
              KBIT_ACC128)
KBIT_WGMMA_RS(__half, "f16", 128, "256", KBIT_REGS128, "%128", "%129", "%130", "%131", "%132", "%133", KBIT_ACC128)
#undef KBIT_WGMMA_RS
#undef KBIT_REGS128
#undef KBIT_REGS64
#undef KBIT_ACC128
#undef KBIT_ACC64
#undef KBIT_ACC8

// Keeps a register live (and unmoved) up to this point: the A registers of in-flight wgmmas must
// not be reused before the wait.
__device__ __forceinline__ void keep(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void keep(float& r) { asm volatile("" : "+f"(r)::"memory"); }

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// What a thread needs to issue its copies and find its pieces, computed once: piece wp (bytes
// 16wp.., columns 32wp..) of block row wr, whose weight it copies and whose scale it decodes.
struct Lane {
  int64_t elem;    // flat weight index of the piece's first column at k0; -1 past N
  int col;         // 32 wp
  uint32_t w_dst;  // offset in a weight stage
  uint32_t s_dst;  // offset in a scale slot
};

// Whether the thread's piece of chunk c lies inside the weight (N and this split's K columns).
__device__ __forceinline__ bool piece_ok(const Lane& l, int64_t kcols, int64_t c) {
  return l.elem >= 0 && c * kChunk + l.col < kcols;
}

__device__ __forceinline__ void copy_w(uint32_t stage, const Lane& l, const uint8_t* W, int64_t kcols, int64_t c) {
  const bool ok = piece_ok(l, kcols, c);
  cp_async16(stage + l.w_dst, ok ? W + (l.elem + c * kChunk) / 2 : W, ok ? 16 : 0);
}

// Raw scale of this thread's piece in chunk c (zero past N and K).
template <bool DQ>
__device__ __forceinline__ void load_scale(mma::RawScale& s, bool& ok, const Linear4bitArgs& a, int bs_log2,
                                           const Lane& l, int64_t kcols, int64_t c) {
  ok = piece_ok(l, kcols, c);
  s = mma::load_scale<DQ>(a.scales, (l.elem + c * kChunk) >> bs_log2, ok);
}

template <typename T, bool DQ>
__device__ __forceinline__ void store_scale(uint32_t* slot, const mma::RawScale& s, bool ok, const Lane& l,
                                            const float* code8, float offset) {
  const float f = ok ? mma::decode_scale<DQ>(s, code8, offset) : 0.0f;
  slot[l.s_dst >> 2] = pack2<T>(f, f);
}

__device__ __forceinline__ uint2 lds64(uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(addr) : "memory");
  return v;
}

// The A registers of one chunk for rows g (r = 0) and g+8 (r = 1) of this warp's 16.
template <typename T>
__device__ __forceinline__ void dequant(uint32_t (&af)[4][4], uint32_t wrow, uint32_t srow, const char* lut,
                                        uint32_t lane4, uint32_t rot) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const uint2 sc = lds64(srow + r * 8 * 8);
    const uint4 w[2] = {lds128(wrow + r * 8 * kWRow), lds128(wrow + r * 8 * kWRow + 16)};
#pragma unroll
    for (int m = 0; m < 8; ++m) {  // word m: step m / 2, columns 8 (m % 2) + 2t of it; group m / 4
      const uint32_t x = word_of(w[m / 4], m % 4);
      const uint32_t off = (__funnelshift_r(x, x, rot) & 0x7f80u) | lane4;
      const uint32_t v = *reinterpret_cast<const uint32_t*>(lut + off);
      af[m / 2][r + 2 * (m % 2)] = mma::hmul2<T>(v, m / 4 ? sc.y : sc.x);
    }
  }
}

template <typename T, int ACC>
__device__ __forceinline__ void issue(float (&acc)[ACC], uint32_t (&af)[4][4], uint32_t stage) {
  wgmma::fence();
#pragma unroll
  for (int j = 0; j < 4; ++j) wgmma_rs<T, ACC>(acc, af[j], wgmma::desc_sw128(stage + j * 32));
  wgmma::commit();
}

// Waits until at most one wgmma group (the one just issued) runs; `af`, read by the group before
// it, stays live (and unmoved) up to here.
__device__ __forceinline__ void retire_all_but_one(uint32_t (&af)[4][4]) {
  wgmma::wait<1>();
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) keep(af[j][i]);
}

template <int ACC>
__device__ __forceinline__ void retire(float (&acc)[ACC], uint32_t (&af)[4][4]) {
  wgmma::wait<0>();
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) keep(af[j][i]);
#pragma unroll
  for (int i = 0; i < ACC; ++i) keep(acc[i]);
}

#endif  // KBIT_SM90A_DEVICE

// Block (token tile x, row tile y, K range z): chunks [z * per, (z + 1) * per) of K. With ws, the
// partial sums are added to it (float32 atomics) and linear_4bit_finish_splits writes C.
template <typename T, bool DQ, int TOK>
__global__ void __launch_bounds__(kThreads, 1) wgmma_kernel(const __grid_constant__ CUtensorMap amap, Linear4bitArgs a, int bs_log2, int64_t per, float* ws) {
#ifdef KBIT_SM90A_DEVICE
  using L = Tile<TOK>;
  constexpr int S = L::kStages, ACC = TOK / 2;
  extern __shared__ __align__(128) uint8_t smem_raw[];
  const uint32_t raw = uint32_t(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gen = smem_raw + (base - raw);  // generic pointer to `base`
  char* lut = reinterpret_cast<char*>(gen + L::kLutAt);
  uint32_t* scales = reinterpret_cast<uint32_t*>(gen + L::kScaleAt);
  float* code8 = reinterpret_cast<float*>(gen + L::kCodeAt);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int64_t tok0 = int64_t(blockIdx.x) * TOK;
  const int64_t rows0 = int64_t(blockIdx.y) * kRows;
  const int64_t k0 = int64_t(blockIdx.z) * per * kChunk;
  const int64_t kcols = min(a.K, k0 + per * kChunk) - k0;
  const int64_t nchunks = ceil_div(kcols, kChunk);

  Lane l;
  {
    const int wp = tid % 2, wr = tid / 2;
    const int64_t row = rows0 + wr;
    l.col = 32 * wp;
    l.elem = row < a.N ? row * a.K + k0 + l.col : -1;
    l.w_dst = wr * kWRow + 16 * wp;
    l.s_dst = (wr * 2 + wp) * 4;
  }
  const uint32_t act = base, wst = base + L::kWAt, sst = base + L::kScaleAt, bar = base + L::kBarAt;
  // Thread 0 copies the activations of chunk c (TMA, TOK x 64 from (tok0, k0 + 64c); zeros past M
  // and K) into stage c % S; mbarrier c % S counts its bytes.
  auto load_act = [&](int64_t c) {
    const int s = int(c % S);
    wgmma::mbar_arrive_expect(bar + 8 * s, L::kActStage);
    wgmma::tma_load_2d(act + s * L::kActStage, &amap, int32_t(k0 + c * kChunk), int32_t(tok0), bar + 8 * s);
  };
  if (tid == 0) {
    for (int s = 0; s < S; ++s) wgmma::mbar_init(bar + 8 * s, 1);
    wgmma::mbar_init_fence();
  }

  // Weight copies (cp.async): group 0 holds chunks 0..S-1, groups 1..S-2 nothing; the loop's
  // group c then carries chunk c+S, so waiting for group c finds chunk c+1.
#pragma unroll
  for (int w = 0; w < S; ++w)
    if (w < nchunks) copy_w(wst + w * kWStage, l, a.W, kcols, w);
#pragma unroll
  for (int s = 0; s < S - 1; ++s) cp_async_commit();
  const float offset = mma::fill_tables<T, DQ>(reinterpret_cast<uint4*>(lut), code8, a);
  __syncthreads();
  if (tid == 0)
    for (int64_t c = 0; c < S - 2 && c < nchunks; ++c) load_act(c);
  mma::RawScale rs;
  bool rok;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    load_scale<DQ>(rs, rok, a, bs_log2, l, kcols, c);
    store_scale<T, DQ>(scales + c * (kScaleSlot / 4), rs, rok, l, code8, offset);
  }
  load_scale<DQ>(rs, rok, a, bs_log2, l, kcols, 2);
  cp_async_wait<S - 2>();
  __syncthreads();

  const uint32_t lane4 = uint32_t(lane) << 2, rot = (8u * t + 25u) & 31u;
  const int row_l = 64 * (warp / 4) + 16 * (warp % 4) + g;  // this lane's first row in the block
  const uint32_t wrow = wst + row_l * kWRow, srow = sst + row_l * 8;
  uint32_t a0[4][4], a1[4][4];
  dequant<T>(a0, wrow, srow, lut, lane4, rot);
  float acc[ACC];
#pragma unroll
  for (int i = 0; i < ACC; ++i) acc[i] = 0.0f;

  // Chunk c's wgmmas are issued while chunk c-1's may still run (the tensor pipe never drains at
  // a chunk boundary); then waiting for chunk c-1 frees its registers for chunk c+1.
  auto chunk = [&](int64_t c, uint32_t(&cur)[4][4], uint32_t(&nxt)[4][4]) {
    // Chunk c+1's weights have landed for every thread, and every warp has retired chunk c-2's
    // wgmmas, whose activation stage the next TMA overwrites.
    cp_async_wait<S - 2>();
    __syncthreads();
    if (tid == 0 && c + S - 2 < nchunks) load_act(c + S - 2);
    wgmma::mbar_wait(bar + 8 * (c % S), uint32_t(c / S) & 1u);
    issue<T>(acc, cur, act + (c % S) * L::kActStage);
    retire_all_but_one(nxt);  // chunk c-1, which read `nxt`
    if (c + S < nchunks) copy_w(wst + ((c + S) % S) * kWStage, l, a.W, kcols, c + S);
    cp_async_commit();
    if (c + 2 < nchunks) {
      store_scale<T, DQ>(scales + (c % 2) * (kScaleSlot / 4), rs, rok, l, code8, offset);
      load_scale<DQ>(rs, rok, a, bs_log2, l, kcols, c + 3);
    }
    if (c + 1 < nchunks)
      dequant<T>(nxt, wrow + ((c + 1) % S) * kWStage, srow + ((c + 1) % 2) * kScaleSlot, lut, lane4, rot);
  };
  for (int64_t c = 0; c < nchunks; c += 2) {
    chunk(c, a0, a1);
    if (c + 1 < nchunks) chunk(c + 1, a1, a0);
  }
  retire(acc, a0);
  retire(acc, a1);

  const int64_t row0 = rows0 + row_l;
  if (ws) {
#pragma unroll
    for (int i = 0; i < ACC; ++i) {
      const int64_t row = row0 + 8 * ((i / 2) % 2);
      const int64_t tok = tok0 + 8 * (i / 4) + 2 * t + (i % 2);
      if (row < a.N && tok < a.M) atomicAdd(ws + tok * a.N + row, acc[i]);
    }
    return;
  }
  // The output tile goes through shared memory (the activation stages, now idle) so that global
  // stores are whole 16-byte pieces of output rows instead of scattered 2-byte values.
  __syncthreads();
  T* tile = reinterpret_cast<T*>(gen);
  const T* bias = static_cast<const T*>(a.bias);
  float b[2] = {0.0f, 0.0f};
#pragma unroll
  for (int h = 0; h < 2; ++h)
    if (bias && row0 + 8 * h < a.N) b[h] = to_f32(bias[row0 + 8 * h]);
#pragma unroll
  for (int i = 0; i < ACC; ++i) {
    const int tok = 8 * (i / 4) + 2 * t + (i % 2), h = (i / 2) % 2;
    tile[tok * kOutRow + row_l + 8 * h] = from_f32<T>(acc[i] + b[h]);
  }
  __syncthreads();
  T* C = static_cast<T*>(a.C);
  const bool vec = a.N % 8 == 0 && aligned16(a.C);
  const int p = tid % 16;
  const int64_t col = rows0 + 8 * p;
  for (int tk = tid / 16; tk < TOK; tk += kThreads / 16) {
    const int64_t tok = tok0 + tk;
    if (tok >= a.M) break;
    const T* src = tile + tk * kOutRow + 8 * p;
    T* dst = C + tok * a.N + col;
    if (vec && col + 8 <= a.N) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int e = 0; e < 8 && col + e < a.N; ++e) dst[e] = src[e];
    }
  }
#elif defined(__CUDA_ARCH__)
  // Device code of another target (e.g. plain sm_90 beside sm_90a): never launched on purpose
  // (linear_4bit_wgmma_supported), and loud rather than silent if it ever is.
  __trap();
#endif
}

// Tokens per block unless forced. H100 (benchmarks/RESULTS.md, session 7): 128 up to 128 tokens;
// 256 above, except on small weights (4096 x 4096) up to 512 tokens, where 128 keeps more blocks.
int tile_tokens(const Linear4bitArgs& a) {
  if (a.wgmma_tile_tokens == 128 || a.wgmma_tile_tokens == 256) return a.wgmma_tile_tokens;
  if (a.M <= 128) return 128;
  return a.M > 512 || a.N * a.K >= (int64_t(1) << 25) ? 256 : 128;
}

template <typename T, bool DQ, int TOK>
cudaError_t launch(const Linear4bitArgs& a, int splits, float* ws, cudaStream_t stream) {
  static bool smem_allowed[64] = {};
  cudaError_t e = allow_dynamic_smem(wgmma_kernel<T, DQ, TOK>, Tile<TOK>::kSmem, smem_allowed);
  if (e != cudaSuccess) return e;
  CUtensorMap amap;
  e = tensor_map_sw128(&amap, a.A, a.M, a.K, 2, TOK);
  if (e != cudaSuccess) return e;
  const int64_t nchunks = ceil_div(a.K, kChunk);
  const int64_t per = ceil_div(nchunks, splits < 1 ? 1 : splits);
  const int64_t used = ceil_div(nchunks, per);  // splits that get chunks
  const dim3 grid(unsigned(ceil_div(a.M, TOK)), unsigned(ceil_div(a.N, kRows)), unsigned(used));
  wgmma_kernel<T, DQ, TOK><<<grid, kThreads, Tile<TOK>::kSmem, stream>>>(amap, a, log2_exact(a.blocksize), per,
                                                                         splits > 1 ? ws : nullptr);
  e = cudaGetLastError();
  if (e != cudaSuccess || splits <= 1) return e;
  return linear_4bit_finish_splits(a, ws, stream);
}

}  // namespace

bool linear_4bit_wgmma_supported(const Linear4bitArgs& a) {
#ifdef KBIT_HAS_SM90A
  return compute_capability() == 90 && linear_4bit_fusable(a) && ceil_div(a.N, kRows) <= 65535;
#else
  (void)a;
  return false;
#endif
}

int linear_4bit_wgmma_splits(const Linear4bitArgs& a) {
  // One block per SM (shared memory).
  return split_k_ways(ceil_div(a.M, tile_tokens(a)) * ceil_div(a.N, kRows), sm_count(), ceil_div(a.K, kChunk));
}

bool linear_4bit_wgmma_preferred(const Linear4bitArgs& a) {
  // Measured on an H100 (benchmarks/RESULTS.md, session 7) against the tiled kernel and
  // dequantize + cuBLAS: from 64 tokens (128 on small weights, where the tiled kernel ties) to 512
  // it wins on the Llama shapes of 4096 x 4096 and up; at 1024 it wins by 4-10% where its last
  // wave of blocks is nearly full and loses by 9% where a quarter of that wave is idle (14336 x
  // 4096); from 2048 dequantize + cuBLAS wins. Past 128 tokens a small weight (1024 x 4096, 8 MB
  // once dequantized) costs so little to dequantize that cuBLAS wins from 256 tokens on.
  if (a.M < 64 || a.M > 1024 || !linear_4bit_wgmma_supported(a)) return false;
  if (a.M == 64) return a.N * a.K >= (int64_t(1) << 25);
  if (a.M <= 128) return true;
  if (a.N * a.K < (int64_t(1) << 24)) return false;
  if (a.M <= 768) return true;
  const int64_t tiles = ceil_div(a.M, tile_tokens(a)) * ceil_div(a.N, kRows) * linear_4bit_wgmma_splits(a);
  const int64_t slots = ceil_div(tiles, sm_count()) * sm_count();
  return tiles * 10 >= slots * 9;
}

cudaError_t linear_4bit_wgmma(const Linear4bitArgs& a, int splits, float* workspace, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return cudaSuccess;
  if (!linear_4bit_wgmma_supported(a) || (splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
  const bool wide = tile_tokens(a) == 256;
  return mma::with_types(a, [&](auto t, auto dq) {
    using T = decltype(t);
    constexpr bool DQ = decltype(dq)::value;
    return wide ? launch<T, DQ, 256>(a, splits, workspace, stream) : launch<T, DQ, 128>(a, splits, workspace, stream);
  });
}

}  // namespace kbit::cuda
