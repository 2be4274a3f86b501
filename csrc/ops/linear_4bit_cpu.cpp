// CPU registration of linear_4bit: C = A @ dequant(W)^T + bias for a 4-bit blockwise weight.
// Small M uses the core kernel, which streams the packed weight once; large M dequantizes W once
// and hands the product to torch's BLAS, which wins when the weight is reused across many rows.
#include <torch/library.h>

#include "core/blockwise_4bit.h"
#include "core/blockwise_8bit.h"
#include "core/gemm_4bit.h"
#include "ops/checks.h"
#include "ops/dispatch.h"

namespace kbit::ops {
namespace {

constexpr int64_t kMaxRowsForStreamingKernel = 16;

// The float32 per-block absmax, decoding double quantization (FORMAT.md) when absmax is uint8.
at::Tensor float_absmax(const at::Tensor& absmax, const c10::optional<at::Tensor>& nested_absmax,
                        const c10::optional<at::Tensor>& nested_code,
                        const c10::optional<at::Tensor>& nested_offset, int64_t nested_blocksize) {
  if (absmax.scalar_type() == at::kFloat) return absmax.contiguous();
  TORCH_CHECK_TYPE(absmax.scalar_type() == at::kByte, "kbit: absmax must be float32, or uint8 with double "
                   "quantization; got ", absmax.scalar_type());
  TORCH_CHECK_VALUE(nested_absmax.has_value() && nested_code.has_value() && nested_offset.has_value(),
                    "kbit: a uint8 (double-quantized) absmax needs nested_absmax, nested_code and nested_offset");
  check_blocksize(nested_blocksize, "nested_blocksize");
  check_dtype(*nested_absmax, at::kFloat, "nested_absmax");
  check_dtype(*nested_code, at::kFloat, "nested_code");
  check_dtype(*nested_offset, at::kFloat, "nested_offset");
  TORCH_CHECK_VALUE(nested_code->numel() == 256, "kbit: nested_code must hold 256 values");
  TORCH_CHECK_VALUE(nested_offset->numel() == 1, "kbit: nested_offset must hold one value");
  const int64_t n = absmax.numel();
  TORCH_CHECK_VALUE(nested_absmax->numel() == ceil_div(n, nested_blocksize), "kbit: nested_absmax has ",
                    nested_absmax->numel(), " values but ", n, " absmax bytes need ",
                    ceil_div(n, nested_blocksize));
  auto q = absmax.contiguous(), na = nested_absmax->contiguous(), nc = nested_code->contiguous();
  auto out = at::empty({n}, absmax.options().dtype(at::kFloat));
  core::dequantize_blockwise<float>(q.data_ptr<uint8_t>(), na.data_ptr<float>(), nc.data_ptr<float>(), n,
                                    nested_blocksize, out.data_ptr<float>());
  return out.add_(nested_offset->to(at::kFloat).reshape({}));
}

at::Tensor linear_4bit_cpu(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax,
                           const c10::optional<at::Tensor>& nested_absmax,
                           const c10::optional<at::Tensor>& nested_code,
                           const c10::optional<at::Tensor>& nested_offset, int64_t blocksize,
                           int64_t nested_blocksize, c10::string_view quant_type, at::IntArrayRef shape,
                           const c10::optional<at::Tensor>& bias) {
  check_float_input(A, "A");
  check_blocksize(blocksize);
  const auto type = parse_quant_type(std::string(quant_type));
  TORCH_CHECK_VALUE(shape.size() == 2, "kbit: shape must be (out_features, in_features); got ", shape);
  const int64_t N = shape[0], K = shape[1];
  TORCH_CHECK_VALUE(N >= 0 && K >= 0, "kbit: shape must not be negative; got ", shape);
  TORCH_CHECK_VALUE(A.dim() >= 1 && A.size(-1) == K, "kbit: A's last dimension must be in_features=", K,
                    "; got A of shape ", A.sizes());
  check_same_device(packed, A, "packed", "A");
  check_same_device(absmax, A, "absmax", "A");
  auto bytes = packed_bytes(packed);
  TORCH_CHECK_VALUE(bytes.numel() == ceil_div(N * K, 2), "kbit: packed holds ", bytes.numel(),
                    " bytes but a ", N, "x", K, " weight needs ", ceil_div(N * K, 2));
  TORCH_CHECK_VALUE(absmax.numel() == ceil_div(N * K, blocksize), "kbit: absmax has ", absmax.numel(),
                    " values but a ", N, "x", K, " weight with blocksize ", blocksize, " needs ",
                    ceil_div(N * K, blocksize));
  auto am = float_absmax(absmax, nested_absmax, nested_code, nested_offset, nested_blocksize);

  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    check_float_input(*bias, "bias");
    check_same_device(*bias, A, "bias", "A");
    TORCH_CHECK_VALUE(bias->numel() == N, "kbit: bias has ", bias->numel(), " values but the layer has ", N,
                      " outputs");
    b = bias->to(A.scalar_type()).contiguous();
  }
  auto out_sizes = A.sizes().vec();
  out_sizes.back() = N;
  const int64_t M = c10::multiply_integers(A.sizes().slice(0, A.dim() - 1));
  auto a = A.contiguous();

  if (M <= kMaxRowsForStreamingKernel) {
    auto out = at::empty(out_sizes, A.options());
    dispatch_float(A.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      core::gemm_4bit<T>(data_as<T>(a), bytes.data_ptr<uint8_t>(), am.data_ptr<float>(),
                         b.defined() ? data_as<T>(b) : nullptr, M, N, K, blocksize, type, data_as<T>(out));
    });
    return out;
  }
  auto W = at::empty({N, K}, A.options().dtype(at::kFloat));
  core::dequantize_4bit<float>(bytes.data_ptr<uint8_t>(), am.data_ptr<float>(), N * K, blocksize, type,
                               W.data_ptr<float>());
  auto a2 = a.reshape({M, K}).to(at::kFloat);
  auto out = b.defined() ? at::addmm(b.to(at::kFloat), a2, W.t()) : at::mm(a2, W.t());
  return out.to(A.scalar_type()).reshape(out_sizes);
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CPU, m) { m.impl("linear_4bit", &linear_4bit_cpu); }

}  // namespace kbit::ops
