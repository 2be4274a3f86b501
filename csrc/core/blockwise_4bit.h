// 4-bit blockwise quantization (NF4 / FP4), FORMAT.md section "4-bit blockwise".
// Layout: A is read flat (n elements). absmax[b] = max |A| over block b (ceil(n/blocksize) floats).
// packed[i] holds element 2i in its high nibble and 2i+1 in its low nibble (ceil(n/2) bytes).
// Work is split by blocks across threads (core::parallel_for).
//
// Conventions that make the bytes equal bitsandbytes' (checked against its CUDA output):
// - each element is encoded as code(x * (1.0f / absmax)): a float32 reciprocal, then a multiply
//   (not x / absmax), compared with the boundaries in codebooks.h (x on a boundary rounds down);
// - the padding nibble of an odd count is the code of 0.0 (NF4: 7, FP4: 0), not a zero nibble;
// - an all-zero block has absmax 0; its elements (0 * inf = NaN) encode as index 0 (NF4 -1.0,
//   FP4 +0), so it still dequantizes to (signed) zeros.
// NaN input: skipped by absmax, encodes as index 0; inf input: absmax inf, every element of
// that block encodes as if scaled to NaN or 0. Nothing crashes or reads out of bounds.
#pragma once
#include <cstdint>

#include "core/codebooks.h"
#include "core/dtypes.h"

namespace kbit::core {

// T is float, half or bfloat16. blocksize >= 1 (the ops allow powers of two 32..4096; an odd
// blocksize takes a slower single-threaded path, since blocks then share bytes).
template <typename T>
void quantize_4bit(const T* A, int64_t n, int64_t blocksize, QuantType type, uint8_t* packed,
                   float* absmax);

// out[i] = code[index(i)] * absmax[i / blocksize], computed in float32, cast to T.
template <typename T>
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     QuantType type, T* out);

// Single-threaded: out[0 .. end-begin) = dequantized elements [begin, end) of the flat tensor
// (begin may be odd). For callers that dequantize a slice, e.g. one weight row in gemm_4bit.
template <typename T>
void dequantize_4bit_range(const uint8_t* packed, const float* absmax, int64_t begin, int64_t end,
                           int64_t blocksize, QuantType type, T* out);

}  // namespace kbit::core
