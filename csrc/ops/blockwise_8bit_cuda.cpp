// CUDA registrations of quantize_blockwise / dequantize_blockwise (schemas in schemas.cpp).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/blockwise_8bit.cuh"
#include "ops/checks.h"
#include "ops/cuda_launch.h"

namespace kbit::ops {
namespace {

void check_code(const at::Tensor& code, const at::Tensor& ref, const char* ref_name) {
  check_dtype(code, at::kFloat, "code");
  TORCH_CHECK_VALUE(code.numel() == 256, "kbit: code must have 256 values; got ", code.numel());
  check_same_device(code, ref, "code", ref_name);
}

std::tuple<at::Tensor, at::Tensor> quantize_blockwise_cuda(const at::Tensor& A, const at::Tensor& code,
                                                           int64_t blocksize) {
  check_blocksize(blocksize);
  check_float_input(A, "A");
  TORCH_CHECK(A.is_cuda(), "kbit: A must be a CUDA tensor; got ", A.device());
  check_code(code, A, "A");
  const c10::cuda::CUDAGuard guard(A.device());
  const auto a = A.contiguous();
  const auto c = code.contiguous();
  const int64_t n = a.numel();
  auto q = at::empty(a.sizes(), a.options().dtype(at::kByte));
  auto absmax = at::empty({ceil_div(n, blocksize)}, a.options().dtype(at::kFloat));
  check_launch(cuda::quantize_blockwise(a.data_ptr(), cuda_dtype(a.scalar_type()), c.data_ptr<float>(), n,
                                        blocksize, q.data_ptr<uint8_t>(), absmax.data_ptr<float>(),
                                        c10::cuda::getCurrentCUDAStream()),
               "quantize_blockwise");
  return {q, absmax};
}

at::Tensor dequantize_blockwise_cuda(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                     int64_t blocksize, at::ScalarType dtype) {
  check_blocksize(blocksize);
  check_float_dtype(dtype, "dtype");
  check_dtype(q, at::kByte, "q");
  check_dtype(absmax, at::kFloat, "absmax");
  TORCH_CHECK(q.is_cuda(), "kbit: q must be a CUDA tensor; got ", q.device());
  check_same_device(absmax, q, "absmax", "q");
  check_code(code, q, "q");
  const int64_t n = q.numel();
  TORCH_CHECK_VALUE(absmax.numel() == ceil_div(n, blocksize), "kbit: absmax has ", absmax.numel(),
                    " values but ", n, " elements with blocksize ", blocksize, " need ", ceil_div(n, blocksize));
  const c10::cuda::CUDAGuard guard(q.device());
  const auto qc = q.contiguous();
  const auto am = absmax.contiguous();
  const auto c = code.contiguous();
  auto out = at::empty(q.sizes(), q.options().dtype(dtype));
  check_launch(cuda::dequantize_blockwise(qc.data_ptr<uint8_t>(), am.data_ptr<float>(), c.data_ptr<float>(), n,
                                          blocksize, out.data_ptr(), cuda_dtype(dtype),
                                          c10::cuda::getCurrentCUDAStream()),
               "dequantize_blockwise");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CUDA, m) {
  m.impl("quantize_blockwise", &quantize_blockwise_cuda);
  m.impl("dequantize_blockwise", &dequantize_blockwise_cuda);
}

}  // namespace kbit::ops
