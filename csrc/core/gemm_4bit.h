// Matmul against a 4-bit blockwise weight (CPU reference): C = A @ dequant(W)^T + bias.
// W has shape (N, K) row-major, packed as in blockwise_4bit.h with float32 absmax (double-quantized
// absmax is decoded by the caller first: it is N*K/blocksize floats, small next to W). Blocks run
// over the flat index n*K + k, so K need not be a multiple of blocksize.
// Each thread takes a range of output columns n, dequantizes those rows of W once into a float32
// buffer and dots them with every row of A, so W is read once for any M. Products and sums are
// float32 in a fixed order (independent of the thread count and of the other rows of A); bias is
// added in float32, then the result is cast to T. A is (M, K), C is (M, N), bias (N,) or null, all
// of T. On AVX-512 CPUs, when K and blocksize are multiples of 16, gemm_4bit_avx512.h's kernel runs
// instead (same conventions, its own fixed summation order).
#pragma once
#include <cstdint>

#include "core/codebooks.h"
#include "core/dtypes.h"

namespace kbit::core {

template <typename T>
void gemm_4bit(const T* A, const uint8_t* packed, const float* absmax, const T* bias, int64_t M,
               int64_t N, int64_t K, int64_t blocksize, QuantType type, T* C);

}  // namespace kbit::core
