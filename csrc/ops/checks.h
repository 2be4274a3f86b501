// Input checks shared by the CPU and CUDA registrations. Each failure raises a Python exception
// (TORCH_CHECK -> RuntimeError, TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError)
// naming the argument and what was expected.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "core/codebooks.h"

namespace kbit::ops {

inline void check_blocksize(int64_t blocksize, const char* what = "blocksize") {
  const bool ok = blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
  TORCH_CHECK_VALUE(ok, "kbit: ", what, " must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096; got ",
                    blocksize);
}

inline core::QuantType parse_quant_type(const std::string& name) {
  core::QuantType t;
  TORCH_CHECK_VALUE(core::parse_quant_type(name, &t), "kbit: quant_type must be 'nf4' or 'fp4'; got '",
                    name, "'");
  return t;
}

inline void check_float_input(const at::Tensor& t, const char* what) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, "kbit: ", what,
                   " must be float32, float16 or bfloat16; got ", s);
}

inline void check_float_dtype(at::ScalarType s, const char* what) {
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, "kbit: ", what,
                   " must be float32, float16 or bfloat16; got ", s);
}

inline void check_dtype(const at::Tensor& t, at::ScalarType expected, const char* what) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, "kbit: ", what, " must be ", expected, "; got ",
                   t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* what,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "kbit: ", what, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
}

inline int64_t numel_of_shape(at::IntArrayRef shape) {
  int64_t n = 1;
  for (auto d : shape) {
    TORCH_CHECK_VALUE(d >= 0, "kbit: shape must not have negative sizes; got ", shape);
    n *= d;
  }
  return n;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes of a packed 4-bit tensor viewed as uint8, whatever its quant_storage dtype.
inline at::Tensor packed_bytes(const at::Tensor& packed) {
  auto p = packed.contiguous();
  return p.scalar_type() == at::kByte ? p : p.view(at::kByte);
}

}  // namespace kbit::ops
