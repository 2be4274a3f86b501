// AVX-512 variant of gemm_4bit (gemm_4bit.h) for x86 CPUs that have it, chosen at run time.
// Each 16-element group of a weight row is decoded in registers: its 8 packed bytes become 16
// nibble indices and one permute looks them up in a register holding the block's 16 code values
// times its absmax (exactly the reference's float32 products), then fused multiply-adds against
// float32 activations. No dequantized copy of W exists, so decode runs at memory speed.
// Sums: per (row of A, row of W), 16 lanes over k = lane (mod 16) in increasing k, then one
// fixed horizontal reduction; independent of M, of the tiling and of the thread count.
#pragma once
#include <cstdint>

#include "core/codebooks.h"
#include "core/dtypes.h"

namespace kbit::core {

// Whether gemm_4bit_avx512 can take this call: an AVX-512 CPU, K and blocksize multiples of 16
// (so a group never straddles a block or starts mid-byte).
bool gemm_4bit_avx512_applies(int64_t K, int64_t blocksize);

template <typename T>
void gemm_4bit_avx512(const T* A, const uint8_t* packed, const float* absmax, const T* bias, int64_t M,
                      int64_t N, int64_t K, int64_t blocksize, QuantType type, T* C);

}  // namespace kbit::core
