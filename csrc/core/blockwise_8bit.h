// 8-bit blockwise quantization with a sorted 256-value code (FORMAT.md "8-bit blockwise"):
// used for the double-quantized 4-bit absmax and for 8-bit optimizer states.
#pragma once
#include <cstdint>

#include "core/dtypes.h"

namespace kbit::core {

// q[i] = index of the code value nearest to A[i] / absmax[i / blocksize]; code is sorted ascending.
template <typename T>
void quantize_blockwise(const T* A, const float* code, int64_t n, int64_t blocksize, uint8_t* q,
                        float* absmax);

// out[i] = code[q[i]] * absmax[i / blocksize] (float32, then cast to T).
template <typename T>
void dequantize_blockwise(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                          int64_t blocksize, T* out);

// Index of the code value nearest to x in a sorted 256-value code.
uint8_t nearest_code_index(const float* code, float x);

}  // namespace kbit::core
