// int8 x int8 GEMM for few rows with AVX-512 VNNI (see int8_gemm_vnni.h). The kernel functions
// carry target attributes, so the rest of the library keeps the baseline ISA and this file is only
// entered after a run-time CPU check.
#include "core/int8_gemm_vnni.h"

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "core/parallel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KBIT_HAVE_VNNI_KERNEL 1
#define KBIT_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))
#endif

namespace kbit::core {
namespace {

constexpr int kMaxRows = 32;
constexpr int kRowsPerPass = 8;           // rows of A whose accumulators stay in registers
constexpr int64_t kTileN = 64;            // weight rows per pass over one chunk of K
constexpr int64_t kChunkBytes = 16 << 10;  // of A (offset to uint8) per chunk of K
constexpr float kInv127Sq = 1.0f / (127.0f * 127.0f);

#ifdef KBIT_HAVE_VNNI_KERNEL
KBIT_VNNI int64_t reduce64(__m512i v) {
  const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
  const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
  return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}

// s[j][i] += sum_k A[i, k] * w_j[k] over K columns, for MR rows of A given as au = A + 128 (uint8,
// row stride lda) and NR weight rows w_j = w + j * ldw. Each A load feeds NR multiply-adds and each
// W load MR (+1 for sum(w)): at 1 x 8 the loads, not the multiply-adds, set the pace.
template <int MR, int NR>
KBIT_VNNI void block_sums(const uint8_t* au, int64_t lda, const int8_t* w, int64_t ldw, int64_t K,
                          int64_t (*s)[kRowsPerPass]) {
  __m512i acc[NR][MR], wsum[NR];
#pragma GCC unroll 2
  for (int j = 0; j < NR; ++j) {
    wsum[j] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[j][i] = _mm512_setzero_si512();
  }
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t k = 0; k < K; k += 64) {
    // The tail's missing bytes load as zero weights: they add nothing to either sum.
    const __mmask64 m = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
    __m512i wv[NR];
#pragma GCC unroll 2
    for (int j = 0; j < NR; ++j) {
      wv[j] = _mm512_maskz_loadu_epi8(m, w + j * ldw + k);
      wsum[j] = _mm512_dpbusd_epi32(wsum[j], ones, wv[j]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_maskz_loadu_epi8(m, au + i * lda + k);
#pragma GCC unroll 2
      for (int j = 0; j < NR; ++j) acc[j][i] = _mm512_dpbusd_epi32(acc[j][i], av, wv[j]);
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < NR; ++j) {
    const int64_t offset = 128 * reduce64(wsum[j]);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) s[j][i] += reduce64(acc[j][i]) - offset;
  }
}

using BlockSums = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int64_t (*)[kRowsPerPass]);

// block_sums<MR, NR> for MR = 1..kRowsPerPass, by MR - 1.
template <int NR, int... Rows>
constexpr auto block_sums_table(std::integer_sequence<int, Rows...>) {
  return std::array<BlockSums, sizeof...(Rows)>{&block_sums<Rows + 1, NR>...};
}
#endif

}  // namespace

bool int8_linear_vnni_applies(int64_t M, int64_t K) {
#ifdef KBIT_HAVE_VNNI_KERNEL
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vnni");
  return cpu && M >= 1 && M <= kMaxRows && K > 0 && K < (int64_t(1) << 20);
#else
  (void)M, (void)K;
  return false;
#endif
}

template <typename T>
void int8_linear_vnni(const int8_t* A, const int8_t* W, const float* a_stats, const float* w_stats,
                      const T* bias, int64_t M, int64_t N, int64_t K, T* C) {
#ifdef KBIT_HAVE_VNNI_KERNEL
  if (!int8_linear_vnni_applies(M, K) || N <= 0) return;
  std::vector<uint8_t> au(size_t(M * K));
  for (int64_t i = 0; i < M * K; ++i) au[size_t(i)] = uint8_t(int(A[i]) + 128);
  static const auto pairs = block_sums_table<2>(std::make_integer_sequence<int, kRowsPerPass>{});
  static const auto singles = block_sums_table<1>(std::make_integer_sequence<int, kRowsPerPass>{});
  // Rows of A in passes of up to kRowsPerPass (the accumulators of two weight rows fill the
  // registers), K in chunks whose slice of a pass's rows (at most 16 KB) stays in L1 while a tile
  // of kTileN weight rows (in L2) goes over it: W streams from memory once.
  const int64_t pass_rows = std::min<int64_t>(M, kRowsPerPass);
  const int64_t chunk = std::max<int64_t>(64, (kChunkBytes / pass_rows) / 64 * 64);
  parallel_for(0, N, kTileN, [&](int64_t t0, int64_t t1) {
    int64_t sums[kTileN][kRowsPerPass];
    for (int64_t n0 = t0; n0 < t1; n0 += kTileN) {
      const int64_t n1 = std::min(t1, n0 + kTileN);
      for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
        const int64_t mr = std::min<int64_t>(kRowsPerPass, M - m0);
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t i = 0; i < mr; ++i) sums[n - n0][i] = 0;
        for (int64_t k0 = 0; k0 < K; k0 += chunk) {
          const int64_t kl = std::min(chunk, K - k0);
          const uint8_t* a = au.data() + m0 * K + k0;
          int64_t n = n0;
          for (; n + 1 < n1; n += 2) pairs[size_t(mr - 1)](a, K, W + n * K + k0, K, kl, sums + (n - n0));
          if (n < n1) singles[size_t(mr - 1)](a, K, W + n * K + k0, K, kl, sums + (n - n0));
        }
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t i = 0; i < mr; ++i) {
            const int64_t m = m0 + i;
            // int8_linear's epilogue, operation for operation.
            float v = float(sums[n - n0][i]) * (a_stats[m] * w_stats[n]) * kInv127Sq;
            if (bias) v += to_float(bias[n]);
            C[m * N + n] = from_float<T>(v);
          }
      }
    }
  });
#else
  (void)A, (void)W, (void)a_stats, (void)w_stats, (void)bias, (void)M, (void)N, (void)K, (void)C;
#endif
}

template void int8_linear_vnni<float>(const int8_t*, const int8_t*, const float*, const float*, const float*,
                                      int64_t, int64_t, int64_t, float*);
template void int8_linear_vnni<half>(const int8_t*, const int8_t*, const float*, const float*, const half*,
                                     int64_t, int64_t, int64_t, half*);
template void int8_linear_vnni<bfloat16>(const int8_t*, const int8_t*, const float*, const float*,
                                         const bfloat16*, int64_t, int64_t, int64_t, bfloat16*);

}  // namespace kbit::core
