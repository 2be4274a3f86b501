// int8 x int8 -> int32 GEMM with LLM.int8() dequantization and bias fused (CPU reference).
// Decomposition: tasks own tiles of kTileN output columns (rows of W). For M >= 4 a task widens
// its W tile to int16 once, then takes A four rows at a time (also widened) and forms 4 x 2 blocks
// of dot products: 8 independent int32 sums over k, which GCC / Clang vectorize as int16
// multiply-adds (pmaddwd on x86). Fewer rows of A use the int8 rows directly, 1 x 2 at a time.
// Sums are exact: int32 over chunks of at most 2^16 products (|sum| <= 2^30), then int64.
#include "core/int8_gemm.h"

#include <algorithm>
#include <vector>

#include "core/parallel.h"

namespace kbit::core {
namespace {

constexpr int64_t kTileN = 32;
constexpr int64_t kRowsA = 4;  // rows of A per micro-kernel call
constexpr int64_t kChunkK = 1 << 16;
constexpr float kInv127Sq = 1.0f / (127.0f * 127.0f);

// acc[i][j] += sum_k a_i[k] * w_j[k] for MR rows of a (stride lda) and 2 rows of w (stride ldw).
template <int MR, typename X>
void dot_block(const X* a, int64_t lda, const X* w, int64_t ldw, int64_t K, int64_t acc[][2]) {
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t k1 = std::min(K, k0 + kChunkK);
    int32_t s[MR][2] = {};
    for (int64_t k = k0; k < k1; ++k) {
      const int32_t y0 = w[k], y1 = w[ldw + k];
      for (int i = 0; i < MR; ++i) {
        const int32_t x = a[i * lda + k];
        s[i][0] += x * y0;
        s[i][1] += x * y1;
      }
    }
    for (int i = 0; i < MR; ++i) {
      acc[i][0] += s[i][0];
      acc[i][1] += s[i][1];
    }
  }
}

template <typename X>
int64_t dot_one(const X* a, const X* w, int64_t K) {
  int64_t total = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
    const int64_t k1 = std::min(K, k0 + kChunkK);
    int32_t s = 0;
    for (int64_t k = k0; k < k1; ++k) s += int32_t(a[k]) * int32_t(w[k]);
    total += s;
  }
  return total;
}

struct Epilogue {
  const float* a_stats;
  const float* w_stats;
  int64_t N;
  template <typename T>
  void store(const T* bias, T* C, int64_t m, int64_t n, int64_t acc) const {
    float v = float(acc) * (a_stats[m] * w_stats[n]) * kInv127Sq;
    if (bias) v += to_float(bias[n]);
    C[m * N + n] = from_float<T>(v);
  }
};

// Rows [m0, m0 + MR) of A against the column tile [n0, n1): a and w point at the rows of A and W
// (int8 or widened int16) with row strides lda, K.
template <int MR, typename X, typename T>
void rows_x_tile(const X* a, int64_t lda, const X* w, int64_t n0, int64_t n1, int64_t m0, int64_t K,
                 const Epilogue& ep, const T* bias, T* C) {
  int64_t n = n0;
  for (; n + 1 < n1; n += 2) {
    int64_t acc[MR][2] = {};
    dot_block<MR>(a, lda, w + (n - n0) * K, K, K, acc);
    for (int i = 0; i < MR; ++i) {
      ep.store(bias, C, m0 + i, n, acc[i][0]);
      ep.store(bias, C, m0 + i, n + 1, acc[i][1]);
    }
  }
  if (n < n1)
    for (int i = 0; i < MR; ++i) ep.store(bias, C, m0 + i, n, dot_one(a + i * lda, w + (n - n0) * K, K));
}

template <typename T>
void tile_int8(const int8_t* A, const int8_t* W, int64_t M, int64_t K, int64_t n0, int64_t n1,
               const Epilogue& ep, const T* bias, T* C) {
  for (int64_t m = 0; m < M; ++m) rows_x_tile<1>(A + m * K, K, W + n0 * K, n0, n1, m, K, ep, bias, C);
}

template <typename T>
void tile_int16(const int8_t* A, const int8_t* W, int64_t M, int64_t K, int64_t n0, int64_t n1,
                const Epilogue& ep, const T* bias, T* C, std::vector<int16_t>& wt, std::vector<int16_t>& at) {
  wt.assign(W + n0 * K, W + n1 * K);
  int64_t m = 0;
  for (; m + kRowsA <= M; m += kRowsA) {
    at.assign(A + m * K, A + (m + kRowsA) * K);
    rows_x_tile<kRowsA>(at.data(), K, wt.data(), n0, n1, m, K, ep, bias, C);
  }
  for (; m < M; ++m) rows_x_tile<1>(A + m * K, K, W + n0 * K, n0, n1, m, K, ep, bias, C);
}

}  // namespace

template <typename T>
void int8_linear(const int8_t* A, const int8_t* W, const float* a_stats, const float* w_stats,
                 const T* bias, int64_t M, int64_t N, int64_t K, T* C) {
  if (M <= 0 || N <= 0) return;
  const Epilogue ep{a_stats, w_stats, N};
  const int64_t tiles = (N + kTileN - 1) / kTileN;
  // Aim for tasks of at least ~1M multiply-adds.
  const int64_t grain = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, kTileN * M * K));
  parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    std::vector<int16_t> wt, at;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kTileN, n1 = std::min(N, n0 + kTileN);
      if (M >= kRowsA)
        tile_int16(A, W, M, K, n0, n1, ep, bias, C, wt, at);
      else
        tile_int8(A, W, M, K, n0, n1, ep, bias, C);
    }
  });
}

template void int8_linear<float>(const int8_t*, const int8_t*, const float*, const float*, const float*,
                                 int64_t, int64_t, int64_t, float*);
template void int8_linear<half>(const int8_t*, const int8_t*, const float*, const float*, const half*,
                                int64_t, int64_t, int64_t, half*);
template void int8_linear<bfloat16>(const int8_t*, const int8_t*, const float*, const float*,
                                    const bfloat16*, int64_t, int64_t, int64_t, bfloat16*);

}  // namespace kbit::core
