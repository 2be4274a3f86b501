// Launchers of the fused Adam / AdamW update kernels (optim_adam.cu). Torch-free: raw device
// pointers and a stream. T is float, __half or __nv_bfloat16 (passed as the core storage types,
// which have the same layout). Semantics and state layout: csrc/core/optim_adam.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/optim_adam.h"

namespace kbit::cuda {

template <typename T>
cudaError_t adam_update_32bit(T* p, const T* g, float* m, float* v, int64_t n,
                              const core::AdamConfig& c, cudaStream_t stream);

template <typename T>
cudaError_t adam_update_8bit_blockwise(T* p, const T* g, uint8_t* state1, uint8_t* state2,
                                       float* absmax1, float* absmax2, const float* code1,
                                       const float* code2, int64_t n, const core::AdamConfig& c,
                                       cudaStream_t stream);

}  // namespace kbit::cuda
