// Fused 4-bit linear for many tokens on Hopper (sm_90a): out = A @ dequant(W)^T + bias with
// warpgroup MMAs (wgmma), the weight dequantized in registers.
//
// Operands as in linear_4bit_mma.cuh, swapped: wgmma's A (64 x 16, from registers) holds 64 weight
// rows, its B (16 x 128, from shared memory) 128 tokens, and the accumulators out^T. The A
// registers of one warp of a warpgroup have mma.sync's m16n8k16 layout, so the byte-table
// dequantization and the k permutation of linear_4bit_mma.cuh carry over unchanged: each lane reads
// one 16-byte group (32 columns) per row per 128-column chunk.
//
// Block: 2 warpgroups (8 warps), 128 weight rows x 128 tokens; warpgroup h owns rows [64h, 64h+64).
// Per 128-column chunk of K:
//   - B: the 128 x 128 activation tile goes to shared memory in wgmma's K-major, unswizzled
//     layout: for k-step j (16 slots) and token group n8, two 8 x 16-byte core matrices (slots
//     0..7 and 8..15) at j * kStepBytes + n8 * 256 + {0, 128}; within one, token n % 8 at
//     16-byte row n % 8. Slots hold the permuted columns, so each 16-byte global load (8 real
//     columns of one token) is stored as four 4-byte pairs (load_b / store_b), one chunk ahead.
//   - A: every warp dequantizes its 16 rows' 8 k-steps (32 registers) while the previous chunk's
//     wgmmas run; two register sets alternate.
// Two B stages: chunk c+1's tile is written while chunk c's wgmmas read the other one. Blocks are
// ordered token tile fastest, so blocks sharing weight rows run together and meet them in L2.
// Measured limits and what was tried: benchmarks/RESULTS.md (session 3).
#include "cuda/linear_4bit_mma.cuh"
#include "cuda/wgmma.cuh"

namespace kbit::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRows = 128;     // weight rows per block
constexpr int kToks = 128;     // tokens per block (wgmma N)
constexpr int kChunk = 128;    // columns of K per stage
constexpr int kStepBytes = kToks / 8 * 256 + 16;  // one k16 step of B (16 bytes of padding)
constexpr int kStageBytes = 8 * kStepBytes;  // 32 KB
constexpr int kStages = 2;
constexpr int kSmem = mma::kLutBytes + kStages * kStageBytes + 256 * 4 + 128;

#ifdef KBIT_SM90A_DEVICE

struct WChunk {
  uint4 w[2];
  mma::RawScale s[2];
};

template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc);

// One m64n128k16 warpgroup MMA, A from registers, B from shared memory (descriptor), D += A B.
// PTX names the 16-bit type; the rest is the same for bf16 and fp16.
#define KBIT_ACC8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), \
                     "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define KBIT_WGMMA_M64N128K16(T, PTX_TYPE)                                                             \
  template <>                                                                                          \
  __device__ __forceinline__ void wgmma_m64n128k16<T>(float (&d)[64], const uint32_t(&a)[4],          \
                                                      uint64_t desc) {                                 \
    asm volatile(                                                                                      \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                  \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTX_TYPE "." PTX_TYPE " {"                      \
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"  \
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                              \
        : KBIT_ACC8(0), KBIT_ACC8(8), KBIT_ACC8(16), KBIT_ACC8(24), KBIT_ACC8(32), KBIT_ACC8(40),      \
          KBIT_ACC8(48), KBIT_ACC8(56)                                                                 \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));                              \
  }
KBIT_WGMMA_M64N128K16(__nv_bfloat16, "bf16")
KBIT_WGMMA_M64N128K16(__half, "f16")
#undef KBIT_WGMMA_M64N128K16
#undef KBIT_ACC8

// Keeps a register live (and unmoved) up to this point: the A registers of in-flight wgmmas must
// not be reused before the wait.
__device__ __forceinline__ void keep(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
__device__ __forceinline__ void keep(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Shared-memory descriptor of a K-major, unswizzled operand: core matrices adjacent in K are 128
// bytes apart (leading offset), adjacent 8-token groups 256 bytes (stride offset).
__device__ __forceinline__ uint64_t b_desc(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(128 >> 4) << 16) | (uint64_t(256 >> 4) << 32);
}

// 16 bytes from global memory where `ok`, else zeros: a predicated load, no branch.
__device__ __forceinline__ uint4 ld_if(const void* p, bool ok) {
  uint4 r = make_uint4(0, 0, 0, 0);
  asm("{\n.reg .pred q;\nsetp.ne.b32 q, %4, 0;\n@q ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%5];\n}"
      : "+r"(r.x), "+r"(r.y), "+r"(r.z), "+r"(r.w)
      : "r"(int(ok)), "l"(p));
  return r;
}

// What a lane needs to find its pieces of every chunk, computed once (per-chunk work is then a
// few adds: the kernel is otherwise short of issue slots).
template <typename T>
struct LaneMap {
  int64_t w_elem[2];  // flat weight index of (row g / g+8, column k0 + 32t); -1 past N
  int64_t kcols;      // columns of the block's K range [k0, k0 + kcols)
  int w_col;          // 32t
  const T* b_ptr;     // activations: token tok0 + 2 warp + lane / 16, column k0 + 8 (lane % 16)
  int64_t b_step;     // 16 tokens
  int b_valid;        // passes i with a token below M
  int b_col;          // 8 (lane % 16)
  uint32_t b_sts;     // lane part of store_b's shared offset
};

// Chunk c of this block's K range (kcols columns from the range's start, which w_elem includes).
template <bool DQ>
__device__ __forceinline__ void load_w(WChunk& ch, const Linear4bitArgs& a, int bs_log2, const int64_t (&w_elem)[2],
                                       int w_col, int64_t kcols, int64_t c, bool valid) {
  const bool kok = valid && c * kChunk + w_col < kcols;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = kok && w_elem[r] >= 0;
    const int64_t e = w_elem[r] + c * kChunk;
    ch.w[r] = ld_if(a.W + (ok ? e / 2 : 0), ok);
    ch.s[r] = mma::load_scale<DQ>(a.scales, e >> bs_log2, ok);
  }
}

template <typename T, bool DQ>
__device__ __forceinline__ void dequant(uint32_t (&af)[8][4], const WChunk& ch, const char* lut, uint32_t lane4,
                                        const float* code8, float offset) {
  const float f0 = mma::decode_scale<DQ>(ch.s[0], code8, offset);
  const float f1 = mma::decode_scale<DQ>(ch.s[1], code8, offset);
  const uint32_t s0 = pack2<T>(f0, f0), s1 = pack2<T>(f1, f1);
#pragma unroll
  for (int j = 0; j < 8; ++j) mma::a_frag<T>(af[j], j, lut, lane4, ch.w[0], ch.w[1], s0, s1);
}

// The activation tile of one chunk (128 tokens x 128 columns) passes through registers on its
// way to shared memory: load_b reads it (zeros past M and K), store_b writes it into a stage in
// wgmma's layout. Pass i of a warp reads two tokens' 256 contiguous bytes (16 lanes each, column
// group p = lane % 16) and stores each 16-byte group as four 4-byte pairs: columns 8p..8p+7 came
// from lane-of-origin p / 4 and fill steps 2 (p % 4) and 2 (p % 4) + 1, halves 0 and 1. With steps
// kStepBytes apart (16 bytes of padding each), a warp's 32 stores hit 32 distinct banks.
template <typename T>
__device__ __forceinline__ void load_b(uint4 (&v)[8], const LaneMap<T>& m, int64_t kcols, int64_t c, bool valid) {
  const bool kok = valid && c * kChunk + m.b_col < kcols;
  const T* p = m.b_ptr + c * kChunk;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    v[i] = ld_if(p, kok && i < m.b_valid);
    p += m.b_step;
  }
}

__device__ __forceinline__ void store_b(uint32_t dst, const uint4 (&v)[8], uint32_t lane_part) {
  const uint32_t base = dst + lane_part;
#pragma unroll
  for (int i = 0; i < 8; ++i) {  // token n + 16 i: two token groups (512 bytes) further
    const uint32_t at = base + i * 512;
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(at), "r"(v[i].x));
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(at + 128), "r"(v[i].y));
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(at + kStepBytes), "r"(v[i].z));
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(at + kStepBytes + 128), "r"(v[i].w));
  }
}

template <typename T>
__device__ __forceinline__ void issue(float (&acc)[64], uint32_t (&af)[8][4], uint32_t stage) {
  wgmma::fence();
#pragma unroll
  for (int j = 0; j < 8; ++j) wgmma_m64n128k16<T>(acc, af[j], b_desc(stage + j * kStepBytes));
  wgmma::commit();
}

template <typename T>
__device__ __forceinline__ void retire(float (&acc)[64], uint32_t (&af)[8][4]) {
  wgmma::wait<0>();
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) keep(af[j][i]);
#pragma unroll
  for (int i = 0; i < 64; ++i) keep(acc[i]);
}

// One chunk: wgmmas on `cur` (already dequantized) and stage c % 2; meanwhile store chunk c+1's
// activations (loaded one chunk ago) into the other stage and load chunk c+2's, dequantize chunk
// c+1 into `nxt` and fetch chunk c+2's weights. Global loads thus have a whole chunk to land.
template <typename T, bool DQ>
__device__ __forceinline__ void chunk(int64_t c, int64_t nchunks, float (&acc)[64], uint32_t (&cur)[8][4],
                                      uint32_t (&nxt)[8][4], WChunk& wn, uint4 (&vb)[8], uint32_t act,
                                      const Linear4bitArgs& a, int bs_log2, const LaneMap<T>& m, const char* lut,
                                      uint32_t lane4, const float* code8, float offset) {
  issue<T>(acc, cur, act + (c % 2) * kStageBytes);
  if (c + 1 < nchunks) {
    store_b(act + ((c + 1) % 2) * kStageBytes, vb, m.b_sts);
    load_b<T>(vb, m, m.kcols, c + 2, c + 2 < nchunks);
    dequant<T, DQ>(nxt, wn, lut, lane4, code8, offset);
    load_w<DQ>(wn, a, bs_log2, m.w_elem, m.w_col, m.kcols, c + 2, c + 2 < nchunks);
  }
  wgmma::proxy_fence();
  retire<T>(acc, cur);
  __syncthreads();
}

#endif  // KBIT_SM90A_DEVICE

// Block (token tile x, row tile y, K range z): chunks [z * per, (z + 1) * per) of K. With ws, the
// partial sums are added to it (float32 atomics) and linear_4bit_finish_splits writes C.
template <typename T, bool DQ>
__global__ void __launch_bounds__(kThreads, 1) wgmma_kernel(Linear4bitArgs a, int bs_log2, int64_t per, float* ws) {
#ifdef KBIT_SM90A_DEVICE
  extern __shared__ uint4 smem_raw[];
  char* lut = reinterpret_cast<char*>(smem_raw);
  const uint32_t act = (static_cast<uint32_t>(__cvta_generic_to_shared(lut + mma::kLutBytes)) + 127u) & ~127u;
  float* code8 = reinterpret_cast<float*>(lut + mma::kLutBytes + kStages * kStageBytes + 128);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t lane4 = uint32_t(lane) << 2;
  const int64_t tok0 = int64_t(blockIdx.x) * kToks;
  const int64_t row0 = int64_t(blockIdx.y) * kRows + (warp / 4) * 64 + (warp % 4) * 16;
  const int64_t k0 = int64_t(blockIdx.z) * per * kChunk;
  const int64_t kend = min(a.K, k0 + per * kChunk);
  const int64_t nchunks = ceil_div(kend - k0, kChunk);

  LaneMap<T> m;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + g + 8 * r;
    m.w_elem[r] = row < a.N ? row * a.K + k0 + 32 * t : -1;
  }
  m.kcols = kend - k0;
  m.w_col = 32 * t;
  {
    const int n0 = 2 * warp + lane / 16, p = lane % 16;
    m.b_col = 8 * p;
    m.b_ptr = static_cast<const T*>(a.A) + (tok0 + n0) * a.K + k0 + m.b_col;
    m.b_step = 16 * a.K;
    const int64_t left = a.M - tok0 - n0;  // tokens from this lane's first one to M
    m.b_valid = left <= 0 ? 0 : left >= 113 ? 8 : int((left + 15) / 16);
    m.b_sts = (2 * (p % 4)) * kStepBytes + (n0 / 8) * 256 + (n0 % 8) * 16 + (p / 4) * 4;
  }

  WChunk wn;
  load_w<DQ>(wn, a, bs_log2, m.w_elem, m.w_col, m.kcols, 0, true);
  uint4 vb[8];
  load_b<T>(vb, m, m.kcols, 0, true);
  store_b(act, vb, m.b_sts);
  load_b<T>(vb, m, m.kcols, 1, nchunks > 1);
  mma::fill_lut<T>(smem_raw, a.quant_type);
  if (DQ)
    for (int i = threadIdx.x; i < 256; i += kThreads) code8[i] = a.scales.nested_code[i];
  const float offset = DQ ? __ldg(a.scales.nested_offset) : 0.0f;
  wgmma::proxy_fence();
  __syncthreads();

  uint32_t a0[8][4], a1[8][4];
  dequant<T, DQ>(a0, wn, lut, lane4, code8, offset);
  load_w<DQ>(wn, a, bs_log2, m.w_elem, m.w_col, m.kcols, 1, nchunks > 1);
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  for (int64_t c = 0; c < nchunks; c += 2) {
    chunk<T, DQ>(c, nchunks, acc, a0, a1, wn, vb, act, a, bs_log2, m, lut, lane4, code8, offset);
    if (c + 1 < nchunks) chunk<T, DQ>(c + 1, nchunks, acc, a1, a0, wn, vb, act, a, bs_log2, m, lut, lane4, code8, offset);
  }

  const T* bias = static_cast<const T*>(a.bias);
  T* C = static_cast<T*>(a.C);
#pragma unroll
  for (int i = 0; i < 64; ++i) {
    const int64_t row = row0 + g + 8 * ((i / 2) % 2);
    const int64_t tok = tok0 + 8 * (i / 4) + 2 * t + (i % 2);
    if (row < a.N && tok < a.M) {
      if (ws) {
        atomicAdd(ws + tok * a.N + row, acc[i]);
      } else {
        float v = acc[i];
        if (bias) v += to_f32(bias[row]);
        C[tok * a.N + row] = from_f32<T>(v);
      }
    }
  }
#elif defined(__CUDA_ARCH__)
  // Device code of another target (e.g. plain sm_90 beside sm_90a): never launched on purpose
  // (linear_4bit_wgmma_supported), and loud rather than silent if it ever is.
  __trap();
#endif
}

template <typename T, bool DQ>
cudaError_t launch(const Linear4bitArgs& a, int splits, float* ws, cudaStream_t stream) {
  static bool smem_allowed[64] = {};
  cudaError_t e = allow_dynamic_smem(wgmma_kernel<T, DQ>, kSmem, smem_allowed);
  if (e != cudaSuccess) return e;
  const int64_t nchunks = ceil_div(a.K, kChunk);
  const int64_t per = ceil_div(nchunks, splits < 1 ? 1 : splits);
  const int64_t used = ceil_div(nchunks, per);  // splits that get chunks
  const dim3 grid(unsigned(ceil_div(a.M, kToks)), unsigned(ceil_div(a.N, kRows)), unsigned(used));
  wgmma_kernel<T, DQ><<<grid, kThreads, kSmem, stream>>>(a, log2_exact(a.blocksize), per, splits > 1 ? ws : nullptr);
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
  // One block per SM (kSmem).
  return split_k_ways(ceil_div(a.M, kToks) * ceil_div(a.N, kRows), sm_count(), ceil_div(a.K, kChunk));
}

bool linear_4bit_wgmma_preferred(const Linear4bitArgs& a) {
  // Measured on an H100 (benchmarks/RESULTS.md, session 4): from 64 to 256 tokens it beats the
  // tiled kernel and dequantize + cuBLAS on every Llama shape (narrow layers through split-K),
  // except on small weights at 64 tokens (4096 x 4096: tiled 0.025 ms, wgmma 0.027); at 1024
  // tokens and more it loses to dequantize + cuBLAS.
  return a.M >= 64 && a.M <= 256 && (a.M > 64 || a.N * a.K >= (int64_t(1) << 25)) &&
         linear_4bit_wgmma_supported(a);
}

cudaError_t linear_4bit_wgmma(const Linear4bitArgs& a, int splits, float* workspace, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return cudaSuccess;
  if (!linear_4bit_wgmma_supported(a) || (splits > 1 && workspace == nullptr)) return cudaErrorInvalidValue;
  return mma::with_types(a, [&](auto t, auto dq) {
    return launch<decltype(t), decltype(dq)::value>(a, splits, workspace, stream);
  });
}

}  // namespace kbit::cuda
