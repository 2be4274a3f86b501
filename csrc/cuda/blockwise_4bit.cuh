// Launchers of the 4-bit blockwise (NF4 / FP4) CUDA kernels, FORMAT.md "4-bit blockwise".
// Raw device pointers and a stream; each returns the launch's cudaError_t. Torch-free, and free
// of CUDA device types so that csrc/ops can include it from plain C++.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/blockwise_dtype.h"

namespace kbit::cuda {

// Where a 4-bit weight's per-block scales come from: float32 `absmax`, or (double quantization)
// uint8 `qabsmax` decoded as nested_code[q] * nested_absmax[b >> nested_log2] + *nested_offset.
struct AbsmaxRef {
  const float* absmax = nullptr;
  const uint8_t* qabsmax = nullptr;
  const float* nested_absmax = nullptr;
  const float* nested_code = nullptr;   // 256 floats
  const float* nested_offset = nullptr; // 1 float
  int nested_log2 = 8;
  bool nested() const { return absmax == nullptr; }
};

// A (n elements of `dtype`) -> packed (ceil(n/2) bytes), absmax (ceil(n/blocksize) floats).
// blocksize is a power of two in [32, 4096]; quant_type 0 = NF4, 1 = FP4.
cudaError_t quantize_4bit(const void* A, DType dtype, int64_t n, int64_t blocksize, int quant_type,
                          uint8_t* packed, float* absmax, cudaStream_t stream);

// packed + scales -> out (n elements of `dtype`): code[index] * absmax in float32, then cast.
cudaError_t dequantize_4bit(const uint8_t* packed, const AbsmaxRef& scales, int64_t n,
                            int64_t blocksize, int quant_type, void* out, DType dtype,
                            cudaStream_t stream);

}  // namespace kbit::cuda
