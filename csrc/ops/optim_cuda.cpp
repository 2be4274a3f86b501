// CUDA registrations of the fused Adam / AdamW update ops; kernels in csrc/cuda/optim_adam.cu.
// Paged (managed-memory) states are ordinary device pointers here: prefetching is paged_cuda.cpp's.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/optim_adam.cuh"
#include "ops/cuda_launch.h"
#include "ops/optim_common.h"

namespace kbit::ops {
namespace {

void optimizer_update_8bit_blockwise_cuda(c10::string_view name, const at::Tensor& p, const at::Tensor& g,
                                          const at::Tensor& state1, const at::Tensor& state2,
                                          const at::Tensor& absmax1, const at::Tensor& absmax2,
                                          const at::Tensor& code1, const at::Tensor& code2, double beta1,
                                          double beta2, double eps, int64_t step, double lr,
                                          double weight_decay, double gnorm_scale) {
  const auto c = optim::config(name, beta1, beta2, eps, step, lr, weight_decay, gnorm_scale);
  auto gc = optim::check_8bit(p, g, state1, state2, absmax1, absmax2, code1, code2);
  if (p.numel() == 0) return;
  c10::cuda::CUDAGuard guard(p.device());
  auto c1 = code1.contiguous(), c2 = code2.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  optim::dispatch_param(p.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    check_launch(cuda::adam_update_8bit_blockwise<T>(
                     static_cast<T*>(p.data_ptr()), static_cast<const T*>(gc.data_ptr()),
                     state1.data_ptr<uint8_t>(), state2.data_ptr<uint8_t>(), absmax1.data_ptr<float>(),
                     absmax2.data_ptr<float>(), c1.data_ptr<float>(), c2.data_ptr<float>(), p.numel(), c, stream),
                 "optimizer_update_8bit_blockwise");
  });
}

void optimizer_update_32bit_cuda(c10::string_view name, const at::Tensor& p, const at::Tensor& g,
                                 const at::Tensor& state1, const at::Tensor& state2, double beta1, double beta2,
                                 double eps, int64_t step, double lr, double weight_decay, double gnorm_scale) {
  const auto c = optim::config(name, beta1, beta2, eps, step, lr, weight_decay, gnorm_scale);
  auto gc = optim::check_32bit(p, g, state1, state2);
  if (p.numel() == 0) return;
  c10::cuda::CUDAGuard guard(p.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  optim::dispatch_param(p.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    check_launch(cuda::adam_update_32bit<T>(static_cast<T*>(p.data_ptr()), static_cast<const T*>(gc.data_ptr()),
                                            state1.data_ptr<float>(), state2.data_ptr<float>(), p.numel(), c,
                                            stream),
                 "optimizer_update_32bit");
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CUDA, m) {
  m.impl("optimizer_update_8bit_blockwise", &optimizer_update_8bit_blockwise_cuda);
  m.impl("optimizer_update_32bit", &optimizer_update_32bit_cuda);
}

}  // namespace kbit::ops
