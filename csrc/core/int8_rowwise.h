// LLM.int8() row-wise quantization of activations / weights (FORMAT.md "8-bit LLM.int8()").
//
// bitsandbytes' rule, checked against its vectors: with threshold t > 0, the ENTRIES with
// |x| >= t are left out of row_stats (a row's other entries in an outlier column still count),
// and every entry of an outlier column is written as 0. q = round-half-even(x * scale) with
// scale = 127 * (1 / row_stats) in float32 (reciprocal first, as torch evaluates 127.0 / t).
// t is rounded to T first, as torch compares a half tensor with a Python float in half.
// A row whose stats is 0 is all zeros. NaN entries are skipped by row_stats and quantize to 0;
// inf entries (t = 0) make row_stats inf and quantize to 0, as does the rest of that row.
#pragma once
#include <cstdint>

#include "core/dtypes.h"

namespace kbit::core {

// Marks outlier columns of A (rows x cols): is_outlier[c] = 1 when any |A[r, c]| >= threshold,
// else 0. threshold <= 0 marks none.
template <typename T>
void find_outlier_columns(const T* A, int64_t rows, int64_t cols, float threshold, uint8_t* is_outlier);

// row_stats[r] = max |A[r, c]| over the entries with |A[r, c]| < threshold (all entries when
// threshold <= 0); q[r, c] = round(A * scale[r]) as above, 0 where is_outlier[c] or
// |A[r, c]| >= threshold. is_outlier may be null (no outlier columns). Parallel over rows.
template <typename T>
void int8_vectorwise_quant(const T* A, int64_t rows, int64_t cols, float threshold,
                           const uint8_t* is_outlier, int8_t* q, float* row_stats);

}  // namespace kbit::core
