// Shared by the *_cuda.cpp registrations: the launchers' dtype tag for a torch dtype, and the
// error a failed launch raises.
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include "cuda/blockwise_dtype.h"

namespace kbit::ops {

inline cuda::DType cuda_dtype(at::ScalarType s) {
  return s == at::kFloat ? cuda::DType::F32 : s == at::kHalf ? cuda::DType::F16 : cuda::DType::BF16;
}

inline void check_launch(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "kbit: ", what, " CUDA launch failed: ", cudaGetErrorString(e));
}

}  // namespace kbit::ops
