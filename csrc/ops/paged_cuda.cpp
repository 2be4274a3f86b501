// Paged optimizer states on CUDA: tensors backed by managed memory (freed by their deleter) and
// their prefetch. Registered for CUDA only; on CPU the paged optimizers use ordinary tensors.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/optim_paged.cuh"
#include "ops/checks.h"

namespace kbit::ops {
namespace {

// Head-room left free beside the paged states, for the CUDA context's own needs.
constexpr size_t kReserveBytes = size_t(64) << 20;

at::Tensor paged_zeros_cuda(const at::Tensor& like, at::IntArrayRef shape, at::ScalarType dtype) {
  const int64_t n = numel_of_shape(shape);
  const size_t bytes = size_t(n) * c10::elementSize(dtype);
  const int device = like.device().index();
  c10::cuda::CUDAGuard guard(like.device());
  size_t free_bytes = 0;
  cudaError_t err = cuda::device_free_memory(device, &free_bytes);
  TORCH_CHECK(err == cudaSuccess, "kbit: cudaMemGetInfo on cuda:", device, " failed: ", cudaGetErrorString(err));
  TORCH_CHECK(bytes + kReserveBytes <= free_bytes, "kbit: a paged state of ", bytes, " bytes does not fit in the ",
              free_bytes, " bytes free on cuda:", device, " (", kReserveBytes >> 20, " MiB kept in reserve); kbit "
              "never allocates more managed memory than the GPU has free. Free GPU memory first or use a "
              "non-paged optimizer.");
  void* ptr = nullptr;
  err = cuda::managed_zeros(bytes, device, kReserveBytes, &ptr, &free_bytes);  // the layer below checks again
  TORCH_CHECK(err == cudaSuccess, "kbit: allocating ", bytes, " bytes of managed memory on cuda:", device,
              " failed (", free_bytes, " bytes free): ", cudaGetErrorString(err));
  return at::from_blob(ptr, shape, [](void* p) { cuda::managed_free(p); },
                       at::TensorOptions().dtype(dtype).device(like.device()));
}

void paged_prefetch_cuda(const at::Tensor& t, bool to_cpu) {
  if (t.numel() == 0) return;
  TORCH_CHECK_VALUE(t.is_contiguous(), "kbit: paged_prefetch needs a contiguous tensor");
  TORCH_CHECK_VALUE(cuda::is_managed(t.data_ptr()),
                    "kbit: paged_prefetch needs a tensor in managed memory (from kbit.optim paged_zeros)");
  c10::cuda::CUDAGuard guard(t.device());
  const cudaError_t err = cuda::managed_prefetch(t.data_ptr(), t.nbytes(), to_cpu ? -1 : t.device().index(),
                                                 c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "kbit: prefetching a paged tensor failed: ", cudaGetErrorString(err));
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CUDA, m) {
  m.impl("paged_zeros", &paged_zeros_cuda);
  m.impl("paged_prefetch", &paged_prefetch_cuda);
}

}  // namespace kbit::ops
