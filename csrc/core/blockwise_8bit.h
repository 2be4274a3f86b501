// 8-bit blockwise quantization with a sorted 256-value code (FORMAT.md "8-bit blockwise"):
// used for the double-quantized 4-bit absmax and for 8-bit optimizer states.
//
// Conventions that make the bytes equal bitsandbytes' (checked against its CUDA output):
// - x is scaled as x * (1.0f / absmax) (float32 reciprocal, then multiply);
// - the nearest code value is found as bitsandbytes' binary search does: a tie between two code
//   values (x exactly on their float32 midpoint (a + b) * 0.5f) goes to the EVEN index;
// - an all-zero block has absmax 0 and encodes as index 0 (0 * inf = NaN); NaN encodes as 0.
// Work is split by blocks across threads.
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

// Index of the code value nearest to x in a sorted 256-value code (ties as above).
uint8_t nearest_code_index(const float* code, float x);

// The offset of double quantization, mean(absmax). bitsandbytes takes torch's mean of the absmax
// tensor; on CUDA that is a float32 sum times float32(1 / n). Here the sum is taken in double and
// rounded to float32 once (the correctly rounded sum for any realistic n), then times
// float32(1 / n): this matches the q4dq test vector, where torch's CPU mean (a pairwise float32
// sum, then a division) is 1 ulp off and changes every nested absmax. 0 for n == 0.
float double_quant_offset(const float* absmax, int64_t n);

}  // namespace kbit::core
