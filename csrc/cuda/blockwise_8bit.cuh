// Launchers of the 8-bit blockwise CUDA kernels (FORMAT.md "8-bit blockwise"): a sorted 256-value
// code, one float32 absmax per block. Used by double quantization and 8-bit optimizer states.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/blockwise_dtype.h"

namespace kbit::cuda {

// A (n elements of `dtype`) -> q (n bytes), absmax (ceil(n/blocksize) floats); code: 256 floats
// on the device, sorted ascending. blocksize is a power of two in [32, 4096].
cudaError_t quantize_blockwise(const void* A, DType dtype, const float* code, int64_t n,
                               int64_t blocksize, uint8_t* q, float* absmax, cudaStream_t stream);

// out[i] = code[q[i]] * absmax[i / blocksize] in float32, cast to `dtype`.
cudaError_t dequantize_blockwise(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                                 int64_t blocksize, void* out, DType dtype, cudaStream_t stream);

}  // namespace kbit::cuda
