// LLM.int8() GEMM for many tokens on Hopper (sm_90a): out = dequant(Aq @ W^T) + outliers + bias in
// one kernel, on warpgroup MMAs (wgmma s8 x s8 -> s32), so no int32 product ever goes to memory.
//
// Block: 2 warpgroups, 128 tokens x 256 output features; warpgroup h owns tokens [64h, 64h + 64)
// and issues m64n256k32 wgmmas with both operands in shared memory. Per 128-byte K tile a stage
// holds the 128 token rows (16 KB) and the 256 weight rows (32 KB) in wgmma's K-major 128-byte
// swizzle: row r at r * 128, its 16-byte chunk c at position c ^ (r % 8) (1024-byte aligned atoms
// of 8 rows). Thread 0 fills a stage with two TMA copies (zeros past M, N and K) counted on the
// stage's mbarrier; until session 7 every thread copied 12 chunks with cp.async, which held the
// load/store units and was slower. Four stages: two tiles are in flight while a third is
// multiplied, and each warpgroup keeps one tile's wgmmas running while it waits at the next
// barrier.
//
// Epilogue: out[m, n] = w_stats[n] * (acc * a_stats[m] / 127^2 + sum_j A[m, c_j] * W[n, c_j] / 127)
// + bias[n], over the outlier columns c_j (count[0] of them, list[]; Aq zeroed there by
// int8_outlier_prep), whose A and W values are staged 32 columns at a time in the idle stages;
// past kOutlierGather columns the sum is left out here and int8_outlier_matmul adds it.
//
// Split-K (few tokens on narrow layers): blocks of grid.z add their int32 partial tile into a
// zeroed workspace; the last block of a tile to finish (a counter per tile) runs the epilogue.
// Integer sums, so the result does not depend on the order.
#include "cuda/int8_common.cuh"
#include "cuda/tensor_map.cuh"
#include "cuda/wgmma.cuh"

namespace kbit::cuda {

namespace {

using namespace int8;

constexpr int kThreads = 256;
constexpr int kTileM = 128;  // tokens per block: 64 per warpgroup (wgmma M)
constexpr int kTileN = 256;  // output features per block (wgmma N)
constexpr int kTileK = 128;  // bytes of K per stage: 4 wgmma k32 steps
constexpr int kAStage = kTileM * kTileK;
constexpr int kStageBytes = kAStage + kTileN * kTileK;  // 48 KB
constexpr int kStages = 4;
constexpr int kBarAt = kStages * kStageBytes;         // one mbarrier per stage, after the stages
constexpr int kSmem = kBarAt + kStages * 8 + 1024;    // + alignment of the swizzle atoms
constexpr int kRound = 32;  // outlier columns staged per round of the epilogue
static_assert(kRound * (kTileM + kTileN) * 4 <= kBarAt, "outlier staging fits in the stages");

struct GemmParams {
  const int8_t* Aq;
  const float* a_stats;
  const int8_t* W;
  const float* w_stats;
  const float* bias;
  int64_t M, N, K;
  const int32_t* list;
  const int32_t* count;
  const int8_t* Wo;
  const void* A;
  int a_dtype;
  void* out;
  int64_t per;        // K tiles per split
  int32_t* ws;        // split-K: M x N partial sums, then one counter per tile; null without
};

#ifdef KBIT_SM90A_DEVICE

// Pins the accumulators around the asynchronous MMAs (no reordering of their reads and writes).
__device__ __forceinline__ void fence_acc(int (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

#define KBIT_ACC8(i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), \
                     "+r"(d[i + 5]), "+r"(d[i + 6]), "+r"(d[i + 7])
// D (64 x 256, int32) += A (64 x 32, s8) B (32 x 256, s8), both from shared memory.
__device__ __forceinline__ void wgmma_m64n256k32(int (&d)[128], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p;\n}\n"
      : KBIT_ACC8(0), KBIT_ACC8(8), KBIT_ACC8(16), KBIT_ACC8(24), KBIT_ACC8(32), KBIT_ACC8(40), KBIT_ACC8(48),
        KBIT_ACC8(56), KBIT_ACC8(64), KBIT_ACC8(72), KBIT_ACC8(80), KBIT_ACC8(88), KBIT_ACC8(96), KBIT_ACC8(104),
        KBIT_ACC8(112), KBIT_ACC8(120)
      : "l"(da), "l"(db), "r"(1));
}
#undef KBIT_ACC8

template <typename TO>
__device__ __forceinline__ void store2(TO* p, float a, float b) {
  if constexpr (sizeof(TO) == 4) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  } else {
    TO v[2] = {from_f32<TO>(a), from_f32<TO>(b)};
    *reinterpret_cast<uint32_t*>(p) = *reinterpret_cast<const uint32_t*>(v);
  }
}

#endif  // KBIT_SM90A_DEVICE

template <typename TO>
__global__ void __launch_bounds__(kThreads, 1) gemm_kernel(const __grid_constant__ CUtensorMap amap,
                                                           const __grid_constant__ CUtensorMap wmap,
                                                           const GemmParams p) {
#ifdef KBIT_SM90A_DEVICE
  extern __shared__ __align__(128) uint8_t smem_raw[];
  const uint32_t raw = uint32_t(__cvta_generic_to_shared(smem_raw));
  const uint32_t sbase = (raw + 1023u) & ~1023u;
  uint8_t* smem = smem_raw + (sbase - raw);
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32;
  const int64_t M = p.M, N = p.N, K = p.K;
  const int64_t m0 = int64_t(blockIdx.x) * kTileM, n0 = int64_t(blockIdx.y) * kTileN;
  const int64_t kt0 = int64_t(blockIdx.z) * p.per;
  const int nkt = int(min(ceil_div(K, kTileK), kt0 + p.per) - kt0);

  // Thread 0 copies K tile kt into stage s with two TMAs (128 token rows, 256 weight rows, zeros
  // past M, N and K); mbarrier s counts their bytes.
  const uint32_t bar = sbase + kBarAt;
  auto load_w = [&](int s, int64_t kt) {
    wgmma::mbar_arrive_expect(bar + 8 * s, kStageBytes);
    wgmma::tma_load_2d(sbase + s * kStageBytes + kAStage, &wmap, int32_t(kt * kTileK), int32_t(n0), bar + 8 * s);
  };
  auto load_a = [&](int s, int64_t kt) {
    wgmma::tma_load_2d(sbase + s * kStageBytes, &amap, int32_t(kt * kTileK), int32_t(m0), bar + 8 * s);
  };

  int acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0;
  // When chained (launched with PDL behind the kernel that writes Aq, the statistics and the
  // outlier list, never W), the first stages' weight tiles are requested before waiting for that
  // kernel and the activations after; otherwise the wait returns at once.
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) wgmma::mbar_init(bar + 8 * s, 1);
    wgmma::mbar_init_fence();
    for (int s = 0; s < kStages - 2 && s < nkt; ++s) load_w(s, kt0 + s);
  }
  griddep_wait();
  if (tid == 0)
    for (int s = 0; s < kStages - 2 && s < nkt; ++s) load_a(s, kt0 + s);
  for (int it = 0; it < nkt; ++it) {
    // Every warpgroup is done with tile it - 2, whose stage the next copy overwrites (and, at the
    // first tile, the mbarriers are initialized).
    __syncthreads();
    if (tid == 0 && it + kStages - 2 < nkt) {
      load_w((it + kStages - 2) % kStages, kt0 + it + kStages - 2);
      load_a((it + kStages - 2) % kStages, kt0 + it + kStages - 2);
    }
    wgmma::mbar_wait(bar + 8 * (it % kStages), uint32_t(it / kStages) & 1u);
    const uint32_t st = sbase + (it % kStages) * kStageBytes;
    wgmma::fence();
    fence_acc(acc);
#pragma unroll
    for (int j = 0; j < kTileK / 32; ++j)
      wgmma_m64n256k32(acc, wgmma::desc_sw128(st + wg * 64 * 128 + j * 32), wgmma::desc_sw128(st + kAStage + j * 32));
    wgmma::commit();
    wgmma::wait<1>();
  }
  wgmma::wait<0>();
  fence_acc(acc);
  griddep_launch();  // int8_outlier_matmul may start (it waits for this kernel's output)

  // Fragment element k = 4i + 2h + e: token row rl + 8h, feature column 8i + 2(lane % 4) + e.
  const int rl = 64 * wg + 16 * warp + lane / 4, cl = 2 * (lane % 4);
  const int64_t mlo = m0 + rl, mhi = mlo + 8;
  if (p.ws) {
    int32_t* counters = p.ws + M * N;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int64_t n = n0 + 8 * i + cl;
      if (n >= N) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = h ? mhi : mlo;
        if (m >= M) continue;
        atomicAdd(p.ws + m * N + n, acc[4 * i + 2 * h]);
        atomicAdd(p.ws + m * N + n + 1, acc[4 * i + 2 * h + 1]);
      }
    }
    __threadfence();
    __syncthreads();
    __shared__ int s_last;
    if (tid == 0)
      s_last = atomicAdd(counters + blockIdx.x + int64_t(gridDim.x) * blockIdx.y, 1) == int(gridDim.z) - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int64_t n = n0 + 8 * i + cl;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = h ? mhi : mlo;
        const bool ok = n < N && m < M;
        acc[4 * i + 2 * h] = ok ? __ldcg(p.ws + m * N + n) : 0;
        acc[4 * i + 2 * h + 1] = ok ? __ldcg(p.ws + m * N + n + 1) : 0;
      }
    }
  }

  // The accumulators now hold floats (bit patterns): acc * a_stats / 127^2, w_stats still to come.
  {
    const float slo = mlo < M ? p.a_stats[mlo] * (1.0f / (127.0f * 127.0f)) : 0.0f;
    const float shi = mhi < M ? p.a_stats[mhi] * (1.0f / (127.0f * 127.0f)) : 0.0f;
#pragma unroll
    for (int k = 0; k < 128; ++k) acc[k] = __float_as_int(float(acc[k]) * ((k & 2) ? shi : slo));
  }
  if (p.count) {
    // Past kOutlierGather columns int8_outlier_matmul adds the whole outlier product instead.
    const int total = *p.count <= kOutlierGather ? *p.count : 0;
    float* s_a = reinterpret_cast<float*>(smem);  // [kRound][kTileM]: A / 127
    float* s_w = s_a + kRound * kTileM;           // [kRound][kTileN]: W
    for (int base = 0; base < total; base += kRound) {
      __syncthreads();  // the stages (or the previous round) are no longer read
      const int cnt = min(kRound, total - base);
      // Only the round's cnt columns: the staging is most of the epilogue's time when outliers exist.
      for (int i = tid; i < cnt * kTileM; i += kThreads) {
        const int j = i / kTileM;
        const int64_t m = m0 + i % kTileM;
        s_a[i] = m < M ? load_any(p.A, m * K + p.list[base + j], p.a_dtype) * (1.0f / 127.0f) : 0.0f;
      }
      for (int i = tid; i < cnt * kTileN; i += kThreads) {
        const int j = i / kTileN;
        const int64_t n = n0 + i % kTileN;
        s_w[i] = n < N ? float(p.Wo[(base + j) * N + n]) : 0.0f;
      }
      __syncthreads();
      for (int j = 0; j < cnt; ++j) {
        const float alo = s_a[j * kTileM + rl], ahi = s_a[j * kTileM + rl + 8];
#pragma unroll
        for (int i = 0; i < 32; ++i) {
          const float2 w = *reinterpret_cast<const float2*>(s_w + j * kTileN + 8 * i + cl);
          acc[4 * i] = __float_as_int(__int_as_float(acc[4 * i]) + alo * w.x);
          acc[4 * i + 1] = __float_as_int(__int_as_float(acc[4 * i + 1]) + alo * w.y);
          acc[4 * i + 2] = __float_as_int(__int_as_float(acc[4 * i + 2]) + ahi * w.x);
          acc[4 * i + 3] = __float_as_int(__int_as_float(acc[4 * i + 3]) + ahi * w.y);
        }
      }
    }
  }

  // The finished tile goes through shared memory (rows padded by 16 bytes: no bank conflicts for
  // the fragments' 8-row stores) so that global stores are whole 16-byte row pieces; straight from
  // the fragments, each 32-byte sector would be written in two halves.
  constexpr int kRowBytes = kTileN * int(sizeof(TO)) + 16;
  static_assert(kTileM * kRowBytes <= kBarAt, "output tile fits in the stages");
  __syncthreads();  // the stages and the outlier staging are no longer read
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int64_t n = n0 + 8 * i + cl;
    const bool ok = n < N;  // N % 8 == 0: n + 1 < N too
    const float2 ws = ok ? make_float2(p.w_stats[n], p.w_stats[n + 1]) : make_float2(0.0f, 0.0f);
    const float2 b = ok && p.bias ? make_float2(p.bias[n], p.bias[n + 1]) : make_float2(0.0f, 0.0f);
#pragma unroll
    for (int h = 0; h < 2; ++h)
      store2(reinterpret_cast<TO*>(smem + (rl + 8 * h) * kRowBytes) + 8 * i + cl,
             __int_as_float(acc[4 * i + 2 * h]) * ws.x + b.x, __int_as_float(acc[4 * i + 2 * h + 1]) * ws.y + b.y);
  }
  __syncthreads();
  constexpr int kPieces = kTileN * int(sizeof(TO)) / 16;  // 16-byte pieces per tile row
  TO* out = static_cast<TO*>(p.out);
  for (int i = tid; i < kTileM * kPieces; i += kThreads) {
    const int r = i / kPieces, pc = i % kPieces;
    const int64_t m = m0 + r, n = n0 + pc * (16 / int(sizeof(TO)));
    if (m < M && n < N)
      *reinterpret_cast<uint4*>(out + m * N + n) = *reinterpret_cast<const uint4*>(smem + r * kRowBytes + pc * 16);
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // another target's device code (plain sm_90 beside sm_90a); never launched
#endif
}

template <typename TO>
cudaError_t launch(const GemmParams& p, int splits, bool pdl, cudaStream_t stream) {
  static bool smem_allowed[64] = {};
  cudaError_t e = allow_dynamic_smem(gemm_kernel<TO>, kSmem, smem_allowed);
  if (e != cudaSuccess) return e;
  const dim3 grid(unsigned(ceil_div(p.M, kTileM)), unsigned(ceil_div(p.N, kTileN)), unsigned(splits));
  CUtensorMap amap, wmap;
  e = tensor_map_sw128(&amap, p.Aq, p.M, p.K, 1, kTileM);
  if (e != cudaSuccess) return e;
  e = tensor_map_sw128(&wmap, p.W, p.N, p.K, 1, kTileN);
  if (e != cudaSuccess) return e;
  return launch_maybe_pdl(gemm_kernel<TO>, grid, dim3(kThreads), kSmem, stream, pdl, amap, wmap, p);
}

int64_t k_tiles(int64_t K) { return ceil_div(K, kTileK); }

}  // namespace

bool int8_gemm_wgmma_supported(int64_t M, int64_t N, int64_t K) {
#ifdef KBIT_HAS_SM90A
  return compute_capability() == 90 && M > 0 && N > 0 && K > 0 && K % 16 == 0 && N % 8 == 0 &&
         ceil_div(M, kTileM) <= 0x7fffffff && ceil_div(N, kTileN) <= 65535;
#else
  (void)M, (void)N, (void)K;
  return false;
#endif
}

int int8_gemm_wgmma_splits(int64_t M, int64_t N, int64_t K) {
  // One block per SM (shared memory); splits that all get K tiles.
  const int64_t kt = k_tiles(K);
  const int s = split_k_ways(ceil_div(M, kTileM) * ceil_div(N, kTileN), sm_count(), kt);
  return int(ceil_div(kt, ceil_div(kt, s)));
}

int64_t int8_gemm_wgmma_workspace(int64_t M, int64_t N, int splits) {
  return splits > 1 ? M * N + ceil_div(M, kTileM) * ceil_div(N, kTileN) : 0;
}

cudaError_t int8_gemm_wgmma(const int8_t* Aq, const float* a_stats, const int8_t* W, const float* w_stats,
                            const float* bias, int64_t M, int64_t N, int64_t K, const int32_t* list,
                            const int32_t* count, const int8_t* Wo, const void* A, int a_dtype, void* out,
                            int out_dtype, int splits, int32_t* workspace, bool chained, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  if (!int8_gemm_wgmma_supported(M, N, K) || !aligned16(Aq) || !aligned16(W) || splits < 1 ||
      (splits > 1 && workspace == nullptr))
    return cudaErrorInvalidValue;
  const int64_t per = ceil_div(k_tiles(K), splits);
  const GemmParams p{Aq, a_stats, W, w_stats, bias, M, N, K, list, count, Wo, A, a_dtype, out, per,
                     splits > 1 ? workspace : nullptr};
  const int used = int(ceil_div(k_tiles(K), per));
  const bool pdl = chained && pdl_allowed();
  return with_dtype(out_dtype, [&](auto t) { return launch<decltype(t)>(p, used, pdl, stream); });
}

}  // namespace kbit::cuda
