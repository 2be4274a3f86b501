// C = A @ dequant(W)^T + bias against a 4-bit blockwise weight (see gemm_4bit.h).
// Decomposition: tasks own tiles of kTileN output columns. A task dequantizes its kTileN rows of W
// once into float32 (so W is read once for any M), then walks A kTileM rows at a time (converted
// to float32 once per tile when T is 16-bit) and forms blocks of 4 rows x 2 columns (1 x 4 for
// leftover rows) of dot products, each with 4 partial sums in a fixed order (see v4f below).
#include "core/gemm_4bit.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/blockwise_4bit.h"
#include "core/gemm_4bit_avx512.h"
#include "core/parallel.h"

namespace kbit::core {
namespace {

constexpr int64_t kTileN = 16;  // output columns per task (a multiple of the kernel widths 2, 4)
constexpr int64_t kTileM = 16;  // rows of A converted to float32 at a time

// Four float32 lanes (GCC / Clang vector extension: SSE on x86, NEON on arm64). Every dot
// product keeps 4 partial sums, lane j summing the k = j (mod 4) terms in increasing k, combined
// as (l0 + l1) + (l2 + l3): the same order in every micro-kernel shape, so a result does not
// depend on M, on the tiling or on the thread count.
typedef float v4f __attribute__((vector_size(16)));
inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline float combine(v4f v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// out[i][j] = dot(a_i, w_j) for MR rows of a (stride lda) and NR rows of w (stride K).
// MR * NR accumulators stay in registers; MR x NR = 4 x 2 for blocks of rows, 1 x 4 otherwise.
template <int MR, int NR>
void dot_block(const float* a, int64_t lda, const float* w, int64_t K, float out[MR][NR]) {
  v4f acc[MR][NR] = {};
  const int64_t Kv = K - K % 4;
  for (int64_t k = 0; k < Kv; k += 4) {
    v4f wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = load4(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const v4f av = load4(a + i * lda + k);
      for (int j = 0; j < NR; ++j) acc[i][j] += av * wv[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      float tail[4] = {};
      for (int64_t k = Kv; k < K; ++k) tail[k - Kv] = a[i * lda + k] * w[j * K + k];
      out[i][j] = combine(acc[i][j] + load4(tail));
    }
}

// Rows [m, m + MR) of A (as float32, at) times columns [n0, n1) (the dequantized tile wt).
template <int MR, typename T>
void rows_x_tile(const float* at, int64_t lda, const float* wt, int64_t m, int64_t n0, int64_t n1,
                 int64_t N, int64_t K, const T* bias, T* C) {
  auto store = [&](int64_t row, int64_t n, float v) {
    if (bias) v += to_float(bias[n]);
    C[row * N + n] = from_float<T>(v);
  };
  constexpr int NR = MR == 1 ? 4 : 2;
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) {
    float d[MR][NR];
    dot_block<MR, NR>(at, lda, wt + (n - n0) * K, K, d);
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) store(m + i, n + j, d[i][j]);
  }
  for (; n < n1; ++n) {
    float d[MR][1];
    dot_block<MR, 1>(at, lda, wt + (n - n0) * K, K, d);
    for (int i = 0; i < MR; ++i) store(m + i, n, d[i][0]);
  }
}

template <typename T>
void gemm_tile(const T* A, const float* wt, const T* bias, int64_t M, int64_t N, int64_t K, int64_t n0,
               int64_t n1, std::vector<float>& abuf, T* C) {
  for (int64_t m0 = 0; m0 < M; m0 += kTileM) {
    const int64_t m1 = std::min(M, m0 + kTileM);
    const float* at;  // rows m0..m1 of A as float32
    if constexpr (std::is_same_v<T, float>) {
      at = A + m0 * K;
    } else {
      abuf.resize(size_t((m1 - m0) * K));
      for (int64_t i = 0; i < (m1 - m0) * K; ++i) abuf[size_t(i)] = to_float(A[m0 * K + i]);
      at = abuf.data();
    }
    int64_t m = m0;
    for (; m + 4 <= m1; m += 4) rows_x_tile<4>(at + (m - m0) * K, K, wt, m, n0, n1, N, K, bias, C);
    for (; m < m1; ++m) rows_x_tile<1>(at + (m - m0) * K, K, wt, m, n0, n1, N, K, bias, C);
  }
}

}  // namespace

template <typename T>
void gemm_4bit(const T* A, const uint8_t* packed, const float* absmax, const T* bias, int64_t M,
               int64_t N, int64_t K, int64_t blocksize, QuantType type, T* C) {
  if (M <= 0 || N <= 0) return;
  if (gemm_4bit_avx512_applies(K, blocksize))
    return gemm_4bit_avx512<T>(A, packed, absmax, bias, M, N, K, blocksize, type, C);
  const int64_t tiles = (N + kTileN - 1) / kTileN;
  const int64_t grain = std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, kTileN * K * M));
  parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> wt, abuf;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kTileN, n1 = std::min(N, n0 + kTileN);
      wt.resize(size_t((n1 - n0) * K));
      if (K > 0) dequantize_4bit_range<float>(packed, absmax, n0 * K, n1 * K, blocksize, type, wt.data());
      gemm_tile<T>(A, wt.data(), bias, M, N, K, n0, n1, abuf, C);
    }
  });
}

template void gemm_4bit<float>(const float*, const uint8_t*, const float*, const float*, int64_t, int64_t,
                               int64_t, int64_t, QuantType, float*);
template void gemm_4bit<half>(const half*, const uint8_t*, const float*, const half*, int64_t, int64_t,
                              int64_t, int64_t, QuantType, half*);
template void gemm_4bit<bfloat16>(const bfloat16*, const uint8_t*, const float*, const bfloat16*, int64_t,
                                  int64_t, int64_t, int64_t, QuantType, bfloat16*);

}  // namespace kbit::core
