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

constexpr int kMaxRows = 16;
constexpr int64_t kTileN = 64;            // weight rows per pass over one chunk of K
constexpr int64_t kChunkBytes = 16 << 10;  // of A (offset to uint8) per chunk of K
constexpr float kInv127Sq = 1.0f / (127.0f * 127.0f);

#ifdef KBIT_HAVE_VNNI_KERNEL
KBIT_VNNI int64_t reduce64(__m512i v) {
  const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
  const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
  return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}

// sums[i] += sum_k A[i, k] * w[k] over K columns, for MR rows of A given as au = A + 128 (uint8,
// row stride lda).
template <int MR>
KBIT_VNNI void row_sums(const uint8_t* au, int64_t lda, const int8_t* w, int64_t K, int64_t* sums) {
  __m512i acc[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_si512();
  __m512i wsum = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t k = 0; k < K; k += 64) {
    // The tail's missing bytes load as zero weights: they add nothing to either sum.
    const __mmask64 m = K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1;
    const __m512i wv = _mm512_maskz_loadu_epi8(m, w + k);
    wsum = _mm512_dpbusd_epi32(wsum, ones, wv);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_maskz_loadu_epi8(m, au + i * lda + k), wv);
  }
  const int64_t offset = 128 * reduce64(wsum);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) sums[i] += reduce64(acc[i]) - offset;
}

using RowSums = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t*);

template <int... Rows>
constexpr auto row_sums_table(std::integer_sequence<int, Rows...>) {
  return std::array<RowSums, sizeof...(Rows)>{&row_sums<Rows + 1>...};
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
  static const auto table = row_sums_table(std::make_integer_sequence<int, kMaxRows>{});
  const RowSums sums_of = table[size_t(M - 1)];
  // K in chunks whose slice of A (at most 16 KB) stays in L1 while a tile of kTileN weight rows
  // (kTileN * K bytes, in L2) passes over it; W streams from memory once.
  const int64_t chunk = std::max<int64_t>(64, (kChunkBytes / M) / 64 * 64);
  parallel_for(0, N, kTileN, [&](int64_t t0, int64_t t1) {
    int64_t sums[kTileN][kMaxRows];
    for (int64_t n0 = t0; n0 < t1; n0 += kTileN) {
      const int64_t n1 = std::min(t1, n0 + kTileN);
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m) sums[n - n0][m] = 0;
      for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        const int64_t kl = std::min(chunk, K - k0);
        for (int64_t n = n0; n < n1; ++n) sums_of(au.data() + k0, K, W + n * K + k0, kl, sums[n - n0]);
      }
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m) {
          // int8_linear's epilogue, operation for operation.
          float v = float(sums[n - n0][m]) * (a_stats[m] * w_stats[n]) * kInv127Sq;
          if (bias) v += to_float(bias[n]);
          C[m * N + n] = from_float<T>(v);
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
