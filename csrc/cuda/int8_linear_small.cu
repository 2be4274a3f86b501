// LLM.int8() linear for few tokens: a "skinny" int8 GEMM on the tensor cores that streams W from
// DRAM once, with dequantization, the 16-bit outlier product and bias fused into its epilogue.
//
// Layout and decomposition. A block (8 warps) owns 16 rows of W (16 output features) and 8*MG
// tokens; its warps split K into 8 contiguous ranges of 64-wide spans, and reduce their partial
// sums through shared memory at the end. Per span, lane (g = lane / 4, t = lane % 4) loads 16
// contiguous bytes of W rows g and g + 8 at k = span*64 + 16t (each row: 64 contiguous bytes from
// 4 lanes), and 16 bytes of token rows g (+ 8, 16, 24) at the same k. These are the operands of
// two mma.m16n8k32 (s8 x s8 -> s32, A = W, B = tokens) without any shuffling: the dot product
// does not care in which order k is summed as long as A and B agree, and both register sets map
// logical k 4t + i (+16) to physical k 16t + i (+4) in the first mma and 16t + 8 + i (+4) in the
// second. W is read with L1 no-allocate + 256-byte L2 prefetch; the token rows (M x K bytes,
// reused by every block) through the read-only cache. Each warp keeps U spans of loads in flight.
//
// Outliers: colmask marks columns computed in 16-bit. Their q entries are subtracted exactly from
// the int32 sums (so q need not be zeroed there), and A[m, c] * W[n, c] is summed in float32 and
// scaled by w_stats[n] / 127. The columns are found by a block scan of the mask (K / 8 bytes), and
// their A, q and W values are staged in shared memory. Up to 16 columns (8 at 17..32 tokens), the
// usual case, are loaded into registers early in the main loop (before it, or after its first
// group where K is long) and staged after it, so that their scattered loads wait under it; more
// are handled OutlierSmem::kCap at a time, a first round early and the rest after it (L2 hits).
//
// Shapes the tensor-core kernel cannot take (K % 16 != 0, unaligned rows) go to a generic kernel:
// one warp per output, lanes along K. Correct for any shape, not fast.

#include "cuda/int8_common.cuh"

namespace kbit::cuda {
namespace {

using namespace int8;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTileN = 16;  // rows of W per block: the mma's M dimension

struct SmallParams {
  const int8_t* Aq;
  const float* a_stats;
  const int8_t* W;
  const float* w_stats;
  const float* bias;
  const uint32_t* colmask;
  const void* A;
  int a_dtype;
  int64_t M, N, K;
  void* out;
};

// Streamed once: keep it out of L1, and let L2 fetch the whole 256-byte run of the row.
__device__ __forceinline__ uint4 load_stream(const int8_t* p) {
  uint4 v;
  // volatile: never hoisted out of the guard that keeps it inside W.
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

__device__ __forceinline__ void mma_s8(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // the launcher sends pre-Ampere devices to the generic kernel
#endif
}

template <int MT>
struct OutlierSmem {
  // Outlier columns per round: each round costs a few microseconds of latency (scattered loads,
  // barriers), so as many as ~33 KB of shared memory hold (256 for 8 tokens, 64 for 32).
  static constexpr int kCap = MT <= 8 ? 256 : MT <= 16 ? 128 : 64;
  int scan[32];
  int list[kCap];
  // Rows padded by one word: a warp reads 8 W rows and 4 tokens at the same column, which would
  // otherwise all fall in one bank.
  int w[kTileN][kCap + 1];
  int q[MT][kCap + 1];
  float a[MT][kCap + 1];
};

// Each owned output (W row nl, token ml) takes the q * W products of the cnt staged outlier
// columns out of its int32 sum and adds A * W in float32.
template <int MT, int kOuts>
__device__ __forceinline__ void outlier_apply(int cnt, const OutlierSmem<MT>& sm, const bool (&own)[kOuts],
                                              const int (&nl)[kOuts], const int (&ml)[kOuts], int (&iacc)[kOuts],
                                              float (&facc)[kOuts]) {
#pragma unroll
  for (int o = 0; o < kOuts; ++o) {
    if (!own[o]) continue;
    for (int j = 0; j < cnt; ++j) {
      const int wv = sm.w[nl[o]][j];
      iacc[o] -= sm.q[ml[o]][j] * wv;
      facc[o] += sm.a[ml[o]][j] * float(wv);
    }
  }
}

// One round of outlier columns (ranks [base, base + kCap)): stage their W, q and A values in
// shared memory, then each owned output (W row nl, token ml) takes the q * W products out of its
// int32 sum and adds A * W in float32. Called by all threads (barriers inside).
template <int MT, int kOuts>
__device__ void outlier_round(const SmallParams& p, const OutlierWalk& walk, int base, int64_t n0, int64_t m0,
                              OutlierSmem<MT>& sm, const bool (&own)[kOuts], const int (&nl)[kOuts],
                              const int (&ml)[kOuts], int (&iacc)[kOuts], float (&facc)[kOuts]) {
  const int64_t M = p.M, N = p.N, K = p.K;
  constexpr int kCap = OutlierSmem<MT>::kCap;
  const int cnt = min(kCap, walk.total - base);
  walk.fill(base, kCap, sm.list);
  __syncthreads();
  batched_copy<8>(
      cnt * kTileN,
      [&](int64_t i) {
        const int64_t r = i % kTileN;
        return n0 + r < N ? int(p.W[(n0 + r) * K + sm.list[i / kTileN]]) : 0;
      },
      [&](int64_t i, int v) { sm.w[i % kTileN][i / kTileN] = v; });
  batched_copy<8>(
      cnt * MT,
      [&](int64_t i) {
        const int64_t m = m0 + i % MT, c = sm.list[i / MT];
        return m < M ? make_float2(load_any(p.A, m * K + c, p.a_dtype), __int_as_float(int(p.Aq[m * K + c])))
                     : make_float2(0.0f, 0.0f);
      },
      [&](int64_t i, float2 v) {
        sm.a[i % MT][i / MT] = v.x;
        sm.q[i % MT][i / MT] = __float_as_int(v.y);
      });
  __syncthreads();
  outlier_apply<MT, kOuts>(cnt, sm, own, nl, ml, iacc, facc);
  __syncthreads();
}

// MG: groups of 8 tokens per block (1, 2 or 4); TO: output element type.
template <int MG, typename TO>
__global__ void __launch_bounds__(kThreads, 2) skinny_kernel(const SmallParams p) {
  constexpr int U = MG >= 4 ? 2 : 4;  // spans per warp in flight (registers: 8U + 4U*MG for loads)
  constexpr int MT = MG * 8;
  constexpr int kOuts = (MG * 128 + kThreads - 1) / kThreads;  // outputs per thread at the end
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
  const int64_t M = p.M, N = p.N, K = p.K;
  // Token tiles run fastest through the grid, so the blocks that share W rows run together and
  // all but the first read them from L2.
  const int64_t n0 = int64_t(blockIdx.y) * kTileN, m0 = int64_t(blockIdx.x) * MT;
  const int64_t spans = (K + 63) / 64;
  const int64_t s0 = spans * warp / kWarps, s1 = spans * (warp + 1) / kWarps;

  const bool v0 = n0 + g < N, v1 = n0 + g + 8 < N;
  const int8_t* w0 = p.W + (v0 ? n0 + g : 0) * K + t4 * 16;
  const int8_t* w1 = p.W + (v1 ? n0 + g + 8 : 0) * K + t4 * 16;
  const int8_t* qp[MG];
  bool qv[MG];
#pragma unroll
  for (int mg = 0; mg < MG; ++mg) {
    const int64_t m = m0 + mg * 8 + g;
    qv[mg] = m < M;
    qp[mg] = p.Aq + (qv[mg] ? m : 0) * K + t4 * 16;
  }

  int acc[MG][4];
#pragma unroll
  for (int mg = 0; mg < MG; ++mg) acc[mg][0] = acc[mg][1] = acc[mg][2] = acc[mg][3] = 0;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 wa[U], wb[U];

  // W does not depend on the kernel before (int8_row_quant): load the first spans before waiting.
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const bool ok = s0 + u < s1 && (s0 + u) * 64 + t4 * 16 < K;
    wa[u] = ok && v0 ? load_stream(w0 + (s0 + u) * 64) : zero;
    wb[u] = ok && v1 ? load_stream(w1 + (s0 + u) * 64) : zero;
  }
  griddep_wait();

  // Which outputs this thread finishes: fragment register i of lane l holds W row (l/4) + 8*(i >= 2)
  // and token mg*8 + 2*(l%4) + (i & 1); slot = mg*4 + i.
  int iacc[kOuts], nl[kOuts], ml[kOuts];
  float facc[kOuts];
  bool own[kOuts];
#pragma unroll
  for (int o = 0; o < kOuts; ++o) {
    const int idx = threadIdx.x + o * kThreads, slot = (idx >> 5) & (MG * 4 - 1), l = idx & 31, i = slot & 3;
    own[o] = idx < MG * 128;
    iacc[o] = 0;
    facc[o] = 0.0f;
    nl[o] = (l >> 2) + (i >= 2 ? 8 : 0);
    ml[o] = (slot >> 2) * 8 + (l & 3) * 2 + (i & 1);
  }

  // One group of U spans from s: its q loads, its MMAs on the W registers, the next group's W loads.
  auto group = [&](int64_t s) {
    uint4 qa[U][MG];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool ok = s + u < s1 && (s + u) * 64 + t4 * 16 < K;
#pragma unroll
      for (int mg = 0; mg < MG; ++mg)
        qa[u][mg] = ok && qv[mg] ? __ldg(reinterpret_cast<const uint4*>(qp[mg] + (s + u) * 64)) : zero;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int mg = 0; mg < MG; ++mg) {
        mma_s8(acc[mg], wa[u].x, wb[u].x, wa[u].y, wb[u].y, qa[u][mg].x, qa[u][mg].y);
        mma_s8(acc[mg], wa[u].z, wb[u].z, wa[u].w, wb[u].w, qa[u][mg].z, qa[u][mg].w);
      }
    }
    if (s + U < s1) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t sn = s + U + u;
        const bool ok = sn < s1 && sn * 64 + t4 * 16 < K;
        wa[u] = ok && v0 ? load_stream(w0 + sn * 64) : zero;
        wb[u] = ok && v1 ? load_stream(w1 + sn * 64) : zero;
      }
    }
  };
  // Where K is long (more than two groups per warp), the first group runs before the outlier
  // set-up, so that the set-up's mask reads and barriers wait under the second group's W loads.
  // With fewer groups the set-up goes first: its scattered early loads need the main loop to hide
  // under. Without outliers the peel costs nothing and helps the schedule. (With 4 token groups,
  // U = 2 and K >= 2560 already give more than two groups; deciding there spills registers.)
  int64_t s = s0;
  if (s < s1 && (MG >= 4 || !p.colmask || s1 - s0 > 2 * U)) {
    group(s);
    s += U;
  }

  // Outlier columns. A few (at most kEarly, the usual case): each thread loads at most one of
  // their W values and one A / q pair into registers now and stages them after the main loop, so
  // the scattered loads' latency hides under it instead of delaying it. More (up to kCap): one
  // round runs now, while W loads are in flight. Beyond that, further rounds run after
  // the main loop, where their scattered W reads hit the lines this block just streamed through L2.
  __shared__ OutlierSmem<MT> sm;
  constexpr int kEarly = (kThreads / kTileN < kThreads / MT) ? kThreads / kTileN : kThreads / MT;
  static_assert(kEarly <= OutlierSmem<MT>::kCap, "the early columns fit one round");
  OutlierWalk walk;
  walk.total = 0;
  bool early = false;
  int early_w = 0, early_q = 0;
  float early_a = 0.0f;
  if (p.colmask) {
    walk.begin(p.colmask, K, sm.scan);
    if (walk.total > 0 && walk.total <= kEarly) {
      early = true;
      walk.fill(0, kEarly, sm.list);
      __syncthreads();
      const int i = threadIdx.x;
      if (i < walk.total * kTileN) {
        const int64_t r = i % kTileN;
        if (n0 + r < N) early_w = int(p.W[(n0 + r) * K + sm.list[i / kTileN]]);
      }
      if (i < walk.total * MT) {
        const int64_t m = m0 + i % MT, c = sm.list[i / MT];
        if (m < M) {
          early_a = load_any(p.A, m * K + c, p.a_dtype);
          early_q = int(p.Aq[m * K + c]);
        }
      }
    } else if (walk.total > 0 && walk.total <= OutlierSmem<MT>::kCap) {
      outlier_round<MT, kOuts>(p, walk, 0, n0, m0, sm, own, nl, ml, iacc, facc);
    }
  }

  for (; s < s1; s += U) group(s);

  // Sum the 8 warps' fragments.
  __shared__ int s_red[kWarps][MG * 4][32];
#pragma unroll
  for (int mg = 0; mg < MG; ++mg)
#pragma unroll
    for (int i = 0; i < 4; ++i) s_red[warp][mg * 4 + i][lane] = acc[mg][i];
  __syncthreads();
#pragma unroll
  for (int o = 0; o < kOuts; ++o) {
    const int idx = threadIdx.x + o * kThreads;
    if (own[o])
      for (int w = 0; w < kWarps; ++w) iacc[o] += s_red[w][idx >> 5][idx & 31];
  }
  if (early) {  // sm.list is not read again, so no barrier is needed before these stores
    const int i = threadIdx.x;
    if (i < walk.total * kTileN) sm.w[i % kTileN][i / kTileN] = early_w;
    if (i < walk.total * MT) {
      sm.a[i % MT][i / MT] = early_a;
      sm.q[i % MT][i / MT] = early_q;
    }
    __syncthreads();
    outlier_apply<MT, kOuts>(walk.total, sm, own, nl, ml, iacc, facc);
  }
  constexpr int kCap = OutlierSmem<MT>::kCap;
  for (int base = walk.total <= kCap ? kCap : 0; base < walk.total; base += kCap)
    outlier_round<MT, kOuts>(p, walk, base, n0, m0, sm, own, nl, ml, iacc, facc);

  TO* out = static_cast<TO*>(p.out);
#pragma unroll
  for (int o = 0; o < kOuts; ++o) {
    const int64_t n = n0 + nl[o], m = m0 + ml[o];
    if (!own[o] || n >= N || m >= M) continue;
    float v = float(iacc[o]) * (p.a_stats[m] * p.w_stats[n]) * (1.0f / (127.0f * 127.0f));
    if (p.colmask) v += facc[o] * (p.w_stats[n] / 127.0f);
    if (p.bias) v += p.bias[n];
    out[m * N + n] = from_f32<TO>(v);
  }
}

// One warp per output (m, n), 8 outputs per block; any shape.
template <typename TO>
__global__ void __launch_bounds__(kThreads) generic_kernel(const SmallParams p) {
  griddep_wait();
  const int lane = threadIdx.x & 31;
  const int64_t ngroups = (p.N + kWarps - 1) / kWarps;
  const int64_t m = int64_t(blockIdx.x) / ngroups;
  const int64_t n = (int64_t(blockIdx.x) % ngroups) * kWarps + (threadIdx.x >> 5);
  if (n >= p.N) return;
  const int64_t K = p.K;
  const int8_t* a = p.Aq + m * K;
  const int8_t* w = p.W + n * K;
  int acc = 0;
  float facc = 0.0f;
  for (int64_t k = lane; k < K; k += 32) {
    const int wv = w[k];
    if (p.colmask && ((p.colmask[k >> 5] >> (k & 31)) & 1u))
      facc += load_any(p.A, m * K + k, p.a_dtype) * float(wv);
    else
      acc += int(a[k]) * wv;
  }
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    acc += __shfl_xor_sync(0xffffffffu, acc, d);
    facc += __shfl_xor_sync(0xffffffffu, facc, d);
  }
  if (lane != 0) return;
  float v = float(acc) * (p.a_stats[m] * p.w_stats[n]) * (1.0f / (127.0f * 127.0f));
  if (p.colmask) v += facc * (p.w_stats[n] / 127.0f);
  if (p.bias) v += p.bias[n];
  static_cast<TO*>(p.out)[m * p.N + n] = from_f32<TO>(v);
}

template <typename Kernel>
cudaError_t launch(Kernel kernel, dim3 grid, bool pdl, cudaStream_t stream, const SmallParams& p) {
  return launch_maybe_pdl(kernel, grid, dim3(kThreads), 0, stream, pdl, p);
}

template <typename TO>
cudaError_t launch_typed(const SmallParams& p, bool fast, bool pdl, cudaStream_t stream) {
  if (!fast) {
    const int64_t blocks = p.M * ((p.N + kWarps - 1) / kWarps);
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    return launch(generic_kernel<TO>, dim3(unsigned(blocks)), pdl, stream, p);
  }
  const unsigned gy = unsigned((p.N + kTileN - 1) / kTileN);
  if (p.M <= 8) return launch(skinny_kernel<1, TO>, dim3(1, gy), pdl, stream, p);
  if (p.M <= 16) return launch(skinny_kernel<2, TO>, dim3(1, gy), pdl, stream, p);
  return launch(skinny_kernel<4, TO>, dim3(unsigned((p.M + 31) / 32), gy), pdl, stream, p);
}

}  // namespace

cudaError_t int8_linear_small(const int8_t* Aq, const float* a_stats, const int8_t* W,
                              const float* w_stats, const float* bias, const uint32_t* colmask,
                              const void* A, int a_dtype, int64_t M, int64_t N, int64_t K, void* out,
                              int out_dtype, bool chained, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  const SmallParams p{Aq, a_stats, W, w_stats, bias, colmask, A, a_dtype, M, N, K, out};
  const bool aligned = reinterpret_cast<uintptr_t>(Aq) % 16 == 0 && reinterpret_cast<uintptr_t>(W) % 16 == 0;
  const bool fast = compute_capability() >= 80 && K > 0 && K % 16 == 0 && aligned && (N + kTileN - 1) / kTileN <= 65535 &&
                    (M + 31) / 32 <= 0x7fffffff;
  const bool pdl = chained && pdl_allowed();
  return with_dtype(out_dtype, [&](auto t) { return launch_typed<decltype(t)>(p, fast, pdl, stream); });
}

}  // namespace kbit::cuda
