// C = A @ dequant(W)^T + bias with AVX-512 (see gemm_4bit_avx512.h). The kernel functions carry
// target attributes, so the rest of the library keeps the baseline ISA and this file is only
// entered after a run-time CPU check.
#include "core/gemm_4bit_avx512.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/parallel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KBIT_HAVE_AVX512_KERNEL 1
#define KBIT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#endif

namespace kbit::core {
namespace {

constexpr int kMR = 8;  // rows of A whose accumulators stay in registers per pass over a weight row

#ifdef KBIT_HAVE_AVX512_KERNEL
// out[i] = dot(A row i, dequantized weight row starting at flat element e0), for MR rows of A
// (float32, stride K).
template <int MR>
KBIT_AVX512 void row_dots(const float* A, int64_t K, const uint8_t* packed, const float* absmax, int64_t e0,
                          int64_t bs, __m512 code, float* out) {
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  const __m128i low4 = _mm_set1_epi8(15);
  for (int64_t e = e0; e < e0 + K;) {  // one quantization block (or the row's part of it) at a time
    const int64_t seg_end = std::min(e0 + K, (e / bs + 1) * bs);
    const __m512 lut = _mm512_mul_ps(code, _mm512_set1_ps(absmax[e / bs]));
    for (; e < seg_end; e += 16) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + e / 2));
      // Element 2j is the high nibble of byte j: interleave high and low nibbles in that order.
      const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
      const __m128i nib = _mm_unpacklo_epi8(hi, _mm_and_si128(bytes, low4));
      const __m512 w = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nib), lut);
      const int64_t k = e - e0;
      for (int i = 0; i < MR; ++i) acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(A + i * K + k), w, acc[i]);
    }
  }
  for (int i = 0; i < MR; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

KBIT_AVX512 void rows_dots(int mr, const float* A, int64_t K, const uint8_t* packed, const float* absmax,
                           int64_t e0, int64_t bs, __m512 code, float* out) {
  switch (mr) {
    case 1: return row_dots<1>(A, K, packed, absmax, e0, bs, code, out);
    case 2: return row_dots<2>(A, K, packed, absmax, e0, bs, code, out);
    case 3: return row_dots<3>(A, K, packed, absmax, e0, bs, code, out);
    case 4: return row_dots<4>(A, K, packed, absmax, e0, bs, code, out);
    case 5: return row_dots<5>(A, K, packed, absmax, e0, bs, code, out);
    case 6: return row_dots<6>(A, K, packed, absmax, e0, bs, code, out);
    case 7: return row_dots<7>(A, K, packed, absmax, e0, bs, code, out);
    default: return row_dots<8>(A, K, packed, absmax, e0, bs, code, out);
  }
}

KBIT_AVX512 void gemm_rows(const float* Af, const uint8_t* packed, const float* absmax, int64_t M, int64_t n0,
                           int64_t n1, int64_t K, int64_t bs, const float* code16, float* sums) {
  const __m512 code = _mm512_loadu_ps(code16);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m0 = 0; m0 < M; m0 += kMR) {
      const int mr = int(std::min<int64_t>(kMR, M - m0));
      float out[kMR];
      rows_dots(mr, Af + m0 * K, K, packed, absmax, n * K, bs, code, out);
      for (int i = 0; i < mr; ++i) sums[(m0 + i) * (n1 - n0) + (n - n0)] = out[i];
    }
}
#endif

}  // namespace

bool gemm_4bit_avx512_applies(int64_t K, int64_t blocksize) {
#ifdef KBIT_HAVE_AVX512_KERNEL
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return cpu && K % 16 == 0 && blocksize % 16 == 0 && blocksize > 0;
#else
  (void)K, (void)blocksize;
  return false;
#endif
}

template <typename T>
void gemm_4bit_avx512(const T* A, const uint8_t* packed, const float* absmax, const T* bias, int64_t M,
                      int64_t N, int64_t K, int64_t blocksize, QuantType type, T* C) {
#ifdef KBIT_HAVE_AVX512_KERNEL
  if (M <= 0 || N <= 0) return;
  std::vector<float> converted;  // A as float32 once, shared by every task
  const float* Af;
  if constexpr (std::is_same_v<T, float>) {
    Af = A;
  } else {
    converted.resize(size_t(M * K));
    for (int64_t i = 0; i < M * K; ++i) converted[size_t(i)] = to_float(A[i]);
    Af = converted.data();
  }
  const float* code16 = code_4bit(type).data();
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, K * M));
  parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    std::vector<float> sums(size_t(M * (n1 - n0)));
    gemm_rows(Af, packed, absmax, M, n0, n1, K, blocksize, code16, sums.data());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = n0; n < n1; ++n) {
        float v = sums[size_t(m * (n1 - n0) + (n - n0))];
        if (bias) v += to_float(bias[n]);
        C[m * N + n] = from_float<T>(v);
      }
  });
#else
  (void)A, (void)packed, (void)absmax, (void)bias, (void)M, (void)N, (void)K, (void)blocksize, (void)type,
      (void)C;
#endif
}

template void gemm_4bit_avx512<float>(const float*, const uint8_t*, const float*, const float*, int64_t, int64_t,
                                      int64_t, int64_t, QuantType, float*);
template void gemm_4bit_avx512<half>(const half*, const uint8_t*, const float*, const half*, int64_t, int64_t,
                                     int64_t, int64_t, QuantType, half*);
template void gemm_4bit_avx512<bfloat16>(const bfloat16*, const uint8_t*, const float*, const bfloat16*, int64_t,
                                         int64_t, int64_t, int64_t, QuantType, bfloat16*);

}  // namespace kbit::core
