// int8 x int8 -> int32 GEMM with LLM.int8() dequantization and bias fused (CPU reference).
#pragma once
#include <cstdint>

#include "core/dtypes.h"

namespace kbit::core {

// C[m, n] = float(sum_k A[m, k] * W[n, k]) * (a_stats[m] * w_stats[n]) * (1 / 127^2) + bias[n],
// in float32 (the order of bitsandbytes' int8_mm_dequant), cast to T. The sum is exact (int64).
// A is (M, K) int8 row-major, W is (N, K) int8 row-major; bias may be null; C is (M, N) of T.
// K == 0 gives bias (or zeros). Parallel over tiles of output columns.
template <typename T>
void int8_linear(const int8_t* A, const int8_t* W, const float* a_stats, const float* w_stats,
                 const T* bias, int64_t M, int64_t N, int64_t K, T* C);

}  // namespace kbit::core
