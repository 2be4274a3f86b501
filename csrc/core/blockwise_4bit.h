// 4-bit blockwise quantization (NF4 / FP4), FORMAT.md section "4-bit blockwise".
// Layout: A is read flat (n elements). absmax[b] = max |A| over block b (ceil(n/blocksize) floats).
// packed[i] holds element 2i in its high nibble and 2i+1 in its low nibble (ceil(n/2) bytes; an odd
// count leaves a zero low nibble in the last byte). Work is split by blocks across threads.
#pragma once
#include <cstdint>

#include "core/codebooks.h"
#include "core/dtypes.h"

namespace kbit::core {

// T is float, half or bfloat16.
template <typename T>
void quantize_4bit(const T* A, int64_t n, int64_t blocksize, QuantType type, uint8_t* packed,
                   float* absmax);

// out[i] = code[index(i)] * absmax[i / blocksize], computed in float32, cast to T.
template <typename T>
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     QuantType type, T* out);

}  // namespace kbit::core
