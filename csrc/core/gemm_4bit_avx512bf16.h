// gemm_4bit (gemm_4bit.h) for bfloat16 activations on x86 CPUs with AVX512-BF16, chosen at run
// time. Each 32-element group of a weight row is decoded in registers to bfloat16: its 16 packed
// bytes become 32 nibble indices and one 16-bit permute looks them up in the block's 16 code values
// times its absmax, rounded to bfloat16 - the values linear_4bit's bfloat16 slabs hold. vdpbf16ps
// then adds pairs of products to float32 sums: twice the multiply-adds per instruction of the
// float32 kernel (gemm_4bit_avx512.h), whose results it does not reproduce bit for bit (W and the
// sums are rounded as in a bfloat16 matmul).
#pragma once
#include <cstdint>

#include "core/codebooks.h"
#include "core/dtypes.h"

namespace kbit::core {

// Whether gemm_4bit_avx512bf16 can take this call: an AVX512-BF16 CPU, K a multiple of 32 and
// blocksize a power of two from 32 (a group never straddles a block).
bool gemm_4bit_avx512bf16_applies(int64_t K, int64_t blocksize);

// C (M x N) = A (M x K) @ dequant(W)^T + bias, bfloat16 in and out, float32 sums.
void gemm_4bit_avx512bf16(const bfloat16* A, const uint8_t* packed, const float* absmax, const bfloat16* bias,
                          int64_t M, int64_t N, int64_t K, int64_t blocksize, QuantType type, bfloat16* C);

}  // namespace kbit::core
