// bfloat16 4-bit GEMM with AVX512-BF16 (see gemm_4bit_avx512bf16.h). The kernel functions carry
// target attributes, so the rest of the library keeps the baseline ISA and this file is only
// entered after a run-time CPU check.
#include "core/gemm_4bit_avx512bf16.h"

#include <algorithm>
#include <array>
#include <utility>

#include "core/parallel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KBIT_HAVE_BF16_KERNEL 1
#define KBIT_BF16DOT __attribute__((target("avx512f,avx512bw,avx512bf16")))
#endif

namespace kbit::core {
namespace {

constexpr int kRowsPerPass = 8;             // rows of A whose sums stay in registers
constexpr int64_t kTileN = 32;              // weight rows per pass of A's rows

#ifdef KBIT_HAVE_BF16_KERNEL
// The 32 weights of one group as bfloat16: 16 packed bytes -> 32 nibble indices (element 2j is the
// high nibble of byte j: the low 16 bits of 32-bit lane j; 2j + 1 the high ones) -> the block's
// values in lut.
KBIT_BF16DOT __m512bh decode32(const uint8_t* p, __m512i lut) {
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i idx = _mm512_or_si512(_mm512_srli_epi32(bytes, 4),
                                      _mm512_slli_epi32(_mm512_and_si512(bytes, _mm512_set1_epi32(15)), 16));
  return reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(idx, lut));
}

// s[i] = dot(A row i, dequantized weight row) for one weight row of K columns whose element 0 is
// flat element e0, for MR rows of A (bfloat16, row stride K); code16: the 16 code values. Two groups per step into two sets of sums, so that even one
// row of A has two chains of dot products in flight.
template <int MR>
KBIT_BF16DOT void row_dots(const bfloat16* A, const uint8_t* packed, const float* absmax, int64_t e0, int64_t K,
                           int bs_log2, const float* code16, float* s) {
  const __m512 code = _mm512_loadu_ps(code16);
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K;) {  // one quantization block (or the row's part of it) at a time
    const int64_t e = e0 + k, block = e >> bs_log2;  // blocksize is a power of two: no division
    const int64_t end = k + std::min(K - k, ((block + 1) << bs_log2) - e);
    // The block's 16 values rounded to bfloat16, in the low 256 bits (the permute reads those).
    const __m512i lut = _mm512_castsi256_si512(
        reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_mul_ps(code, _mm512_set1_ps(absmax[block])))));
    const uint8_t* p = packed + e0 / 2;
    for (; k + 64 <= end; k += 64) {
      const __m512bh w0 = decode32(p + k / 2, lut), w1 = decode32(p + k / 2 + 16, lut);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        acc0[i] = _mm512_dpbf16_ps(acc0[i], reinterpret_cast<__m512bh>(_mm512_loadu_si512(A + i * K + k)), w0);
        acc1[i] = _mm512_dpbf16_ps(acc1[i], reinterpret_cast<__m512bh>(_mm512_loadu_si512(A + i * K + k + 32)), w1);
      }
    }
    if (k < end) {  // an odd group: the block (or the row's part of it) holds 32 more columns
      const __m512bh w0 = decode32(p + k / 2, lut);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i)
        acc0[i] = _mm512_dpbf16_ps(acc0[i], reinterpret_cast<__m512bh>(_mm512_loadu_si512(A + i * K + k)), w0);
      k += 32;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) s[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i]));
}

using RowDots = void (*)(const bfloat16*, const uint8_t*, const float*, int64_t, int64_t, int, const float*, float*);

template <int... Rows>
constexpr auto row_dots_table(std::integer_sequence<int, Rows...>) {
  return std::array<RowDots, sizeof...(Rows)>{&row_dots<Rows + 1>...};
}
#endif

}  // namespace

bool gemm_4bit_avx512bf16_applies(int64_t K, int64_t blocksize) {
#ifdef KBIT_HAVE_BF16_KERNEL
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512bf16");
  return cpu && K > 0 && K % 32 == 0 && blocksize >= 32 && (blocksize & (blocksize - 1)) == 0;
#else
  (void)K, (void)blocksize;
  return false;
#endif
}

void gemm_4bit_avx512bf16(const bfloat16* A, const uint8_t* packed, const float* absmax, const bfloat16* bias,
                          int64_t M, int64_t N, int64_t K, int64_t blocksize, QuantType type, bfloat16* C) {
#ifdef KBIT_HAVE_BF16_KERNEL
  if (M <= 0 || N <= 0 || !gemm_4bit_avx512bf16_applies(K, blocksize)) return;
  static const auto table = row_dots_table(std::make_integer_sequence<int, kRowsPerPass>{});
  const float* code16 = code_4bit(type).data();
  int bs_log2 = 0;
  while ((int64_t(1) << bs_log2) < blocksize) ++bs_log2;
  // Rows of A in passes of up to kRowsPerPass over tiles of kTileN weight rows (in L2 for the next
  // pass), each weight row taken whole (A from L2), so a row's sums are formed the same way in any
  // batch. (Chunks of K sized for L1 cost a reduction and a call per chunk, which made one and two
  // rows 1.4x slower.)
  parallel_for(0, N, kTileN, [&](int64_t t0, int64_t t1) {
    float sums[kRowsPerPass];
    for (int64_t n0 = t0; n0 < t1; n0 += kTileN)
      for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
        const int64_t mr = std::min<int64_t>(kRowsPerPass, M - m0);
        for (int64_t n = n0; n < std::min(t1, n0 + kTileN); ++n) {
          table[size_t(mr - 1)](A + m0 * K, packed, absmax, n * K, K, bs_log2, code16, sums);
          for (int64_t i = 0; i < mr; ++i) {
            float v = sums[i];
            if (bias) v += to_float(bias[n]);
            C[(m0 + i) * N + n] = from_float<bfloat16>(v);
          }
        }
      }
  });
#else
  (void)A, (void)packed, (void)absmax, (void)bias, (void)M, (void)N, (void)K, (void)blocksize, (void)type, (void)C;
#endif
}

}  // namespace kbit::core
