// CPU registrations of the blockwise quantization ops (4-bit NF4/FP4 and 8-bit with a code).
#include <torch/library.h>

#include "core/blockwise_4bit.h"
#include "core/blockwise_8bit.h"
#include "ops/checks.h"
#include "ops/dispatch.h"

namespace kbit::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_4bit_cpu(const at::Tensor& A, int64_t blocksize,
                                                     c10::string_view quant_type,
                                                     at::ScalarType quant_storage) {
  check_float_input(A, "A");
  check_blocksize(blocksize);
  const auto type = parse_quant_type(std::string(quant_type));
  const int64_t n = A.numel();
  const int64_t nbytes = ceil_div(n, 2);
  const int64_t itemsize = c10::elementSize(quant_storage);
  TORCH_CHECK_VALUE(nbytes % itemsize == 0, "kbit: quant_storage ", quant_storage, " needs the ",
                    nbytes, " packed bytes to be a multiple of ", itemsize);
  auto a = A.contiguous();
  auto packed = at::empty({nbytes, 1}, A.options().dtype(at::kByte));
  auto absmax = at::empty({ceil_div(n, blocksize)}, A.options().dtype(at::kFloat));
  dispatch_float(A.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    core::quantize_4bit<T>(data_as<T>(a), n, blocksize, type, packed.data_ptr<uint8_t>(),
                           absmax.data_ptr<float>());
  });
  // Same bytes, another dtype (e.g. bfloat16 for FSDP): (bytes / itemsize, 1).
  if (quant_storage != at::kByte) packed = packed.view({-1}).view(quant_storage).view({-1, 1});
  return {packed, absmax};
}

at::Tensor dequantize_4bit_cpu(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                               c10::string_view quant_type, at::IntArrayRef shape, at::ScalarType dtype) {
  check_blocksize(blocksize);
  check_float_dtype(dtype, "dtype");
  check_dtype(absmax, at::kFloat, "absmax");
  check_same_device(absmax, packed, "absmax", "packed");
  const auto type = parse_quant_type(std::string(quant_type));
  const int64_t n = numel_of_shape(shape);
  auto bytes = packed_bytes(packed);
  TORCH_CHECK_VALUE(bytes.numel() == ceil_div(n, 2), "kbit: packed holds ", bytes.numel(),
                    " bytes but shape ", shape, " needs ", ceil_div(n, 2));
  TORCH_CHECK_VALUE(absmax.numel() == ceil_div(n, blocksize), "kbit: absmax has ", absmax.numel(),
                    " values but shape ", shape, " with blocksize ", blocksize, " needs ",
                    ceil_div(n, blocksize));
  auto am = absmax.contiguous();
  auto out = at::empty(shape, packed.options().dtype(dtype));
  dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    core::dequantize_4bit<T>(bytes.data_ptr<uint8_t>(), am.data_ptr<float>(), n, blocksize, type,
                             data_as<T>(out));
  });
  return out;
}

void check_code(const at::Tensor& code, const at::Tensor& ref) {
  check_dtype(code, at::kFloat, "code");
  check_same_device(code, ref, "code", "the input");
  TORCH_CHECK_VALUE(code.numel() == 256, "kbit: code must hold 256 values; got ", code.numel());
}

std::tuple<at::Tensor, at::Tensor> quantize_blockwise_cpu(const at::Tensor& A, const at::Tensor& code,
                                                          int64_t blocksize) {
  check_float_input(A, "A");
  check_code(code, A);
  check_blocksize(blocksize);
  const int64_t n = A.numel();
  auto a = A.contiguous();
  auto c = code.contiguous();
  auto q = at::empty(A.sizes(), A.options().dtype(at::kByte));
  auto absmax = at::empty({ceil_div(n, blocksize)}, A.options().dtype(at::kFloat));
  dispatch_float(A.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    core::quantize_blockwise<T>(data_as<T>(a), c.data_ptr<float>(), n, blocksize, q.data_ptr<uint8_t>(),
                                absmax.data_ptr<float>());
  });
  return {q, absmax};
}

at::Tensor dequantize_blockwise_cpu(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                    int64_t blocksize, at::ScalarType dtype) {
  check_dtype(q, at::kByte, "q");
  check_dtype(absmax, at::kFloat, "absmax");
  check_same_device(absmax, q, "absmax", "q");
  check_code(code, q);
  check_blocksize(blocksize);
  check_float_dtype(dtype, "dtype");
  const int64_t n = q.numel();
  TORCH_CHECK_VALUE(absmax.numel() == ceil_div(n, blocksize), "kbit: absmax has ", absmax.numel(),
                    " values but ", n, " elements with blocksize ", blocksize, " need ",
                    ceil_div(n, blocksize));
  auto qc = q.contiguous();
  auto am = absmax.contiguous();
  auto c = code.contiguous();
  auto out = at::empty(q.sizes(), q.options().dtype(dtype));
  dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    core::dequantize_blockwise<T>(qc.data_ptr<uint8_t>(), am.data_ptr<float>(), c.data_ptr<float>(), n,
                                  blocksize, data_as<T>(out));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CPU, m) {
  m.impl("quantize_4bit", &quantize_4bit_cpu);
  m.impl("dequantize_4bit", &dequantize_4bit_cpu);
  m.impl("quantize_blockwise", &quantize_blockwise_cpu);
  m.impl("dequantize_blockwise", &dequantize_blockwise_cpu);
}

}  // namespace kbit::ops
