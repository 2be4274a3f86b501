// LLM.int8() row-wise quantization of activations / weights (FORMAT.md "8-bit LLM.int8()").
#pragma once
#include <cstdint>

#include "core/dtypes.h"

namespace kbit::core {

// Marks outlier columns of A (rows x cols): is_outlier[c] = 1 when any |A[r, c]| >= threshold.
// threshold <= 0 marks none.
template <typename T>
void find_outlier_columns(const T* A, int64_t rows, int64_t cols, float threshold, uint8_t* is_outlier);

// row_stats[r] = max |A[r, c]| over non-outlier columns; q[r, c] = round(A * 127 / row_stats[r])
// (nearest, ties to even), 0 in outlier columns. is_outlier may be null (no outliers).
template <typename T>
void int8_vectorwise_quant(const T* A, int64_t rows, int64_t cols, const uint8_t* is_outlier,
                           int8_t* q, float* row_stats);

}  // namespace kbit::core
