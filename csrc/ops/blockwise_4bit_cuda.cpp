// CUDA registrations of quantize_4bit / dequantize_4bit (schemas in schemas.cpp): input checks,
// then the torch-free launchers of csrc/cuda/blockwise_4bit.cuh on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/blockwise_4bit.cuh"
#include "ops/checks.h"
#include "ops/cuda_launch.h"

namespace kbit::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_4bit_cuda(const at::Tensor& A, int64_t blocksize,
                                                      c10::string_view quant_type,
                                                      at::ScalarType quant_storage) {
  check_blocksize(blocksize);
  const auto qt = parse_quant_type(std::string(quant_type));
  check_float_input(A, "A");
  TORCH_CHECK(A.is_cuda(), "kbit: A must be a CUDA tensor; got ", A.device());
  const c10::cuda::CUDAGuard guard(A.device());
  const auto a = A.contiguous();
  const int64_t n = a.numel();
  const int64_t bytes = ceil_div(n, 2);
  const int64_t itemsize = c10::elementSize(quant_storage);
  TORCH_CHECK_VALUE(bytes % itemsize == 0, "kbit: quant_storage ", quant_storage, " needs the ", bytes,
                    " packed bytes to be a multiple of ", itemsize);
  auto raw = at::empty({bytes, 1}, a.options().dtype(at::kByte));
  auto absmax = at::empty({ceil_div(n, blocksize)}, a.options().dtype(at::kFloat));
  check_launch(cuda::quantize_4bit(a.data_ptr(), cuda_dtype(a.scalar_type()), n, blocksize, int(qt),
                                   raw.data_ptr<uint8_t>(), absmax.data_ptr<float>(),
                                   c10::cuda::getCurrentCUDAStream()),
               "quantize_4bit");
  // Same bytes, another element type (FSDP): (bytes / itemsize, 1).
  auto packed = quant_storage == at::kByte ? raw : raw.view({-1}).view(quant_storage).view({-1, 1});
  return {packed, absmax};
}

at::Tensor dequantize_4bit_cuda(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                                c10::string_view quant_type, at::IntArrayRef shape, at::ScalarType dtype) {
  check_blocksize(blocksize);
  const auto qt = parse_quant_type(std::string(quant_type));
  check_float_dtype(dtype, "dtype");
  check_dtype(absmax, at::kFloat, "absmax");
  TORCH_CHECK(packed.is_cuda(), "kbit: packed must be a CUDA tensor; got ", packed.device());
  check_same_device(absmax, packed, "absmax", "packed");
  const int64_t n = numel_of_shape(shape);
  const auto p = packed_bytes(packed);
  TORCH_CHECK_VALUE(p.numel() == ceil_div(n, 2), "kbit: packed holds ", p.numel(), " bytes but shape ",
                    shape, " needs ", ceil_div(n, 2));
  TORCH_CHECK_VALUE(absmax.numel() == ceil_div(n, blocksize), "kbit: absmax has ", absmax.numel(),
                    " values but shape ", shape, " with blocksize ", blocksize, " needs ",
                    ceil_div(n, blocksize));
  const c10::cuda::CUDAGuard guard(packed.device());
  auto out = at::empty(shape, packed.options().dtype(dtype));
  cuda::AbsmaxRef s;
  const auto am = absmax.contiguous();
  s.absmax = am.data_ptr<float>();
  check_launch(cuda::dequantize_4bit(p.data_ptr<uint8_t>(), s, n, blocksize, int(qt), out.data_ptr(),
                                     cuda_dtype(dtype), c10::cuda::getCurrentCUDAStream()),
               "dequantize_4bit");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CUDA, m) {
  m.impl("quantize_4bit", &quantize_4bit_cuda);
  m.impl("dequantize_4bit", &dequantize_4bit_cuda);
}

}  // namespace kbit::ops
