// AVX-512 VNNI variant of int8_linear (int8_gemm.h) for few rows of A (decode), chosen at run time.
// Two weight rows at a time against up to 8 rows of A with vpdpbusd (u8 x s8 -> s32): A is offset
// to unsigned (a + 128) once per call, and 128 * sum(w), summed by the same instruction against
// ones, is taken off again. K is taken in chunks whose slice of A stays in L1, so W streams from
// memory once. The sums are exact, so the results are bit for bit those of int8_linear.
#pragma once
#include <cstdint>

#include "core/dtypes.h"

namespace kbit::core {

// Whether int8_linear_vnni can take this call: a CPU with AVX-512 VNNI, 1 <= M <= 32 rows of A
// and 0 < K < 2^20 (int32 lanes cannot overflow).
bool int8_linear_vnni_applies(int64_t M, int64_t K);

// int8_linear's contract and results (int8_gemm.h).
template <typename T>
void int8_linear_vnni(const int8_t* A, const int8_t* W, const float* a_stats, const float* w_stats,
                      const T* bias, int64_t M, int64_t N, int64_t K, T* C);

}  // namespace kbit::core
