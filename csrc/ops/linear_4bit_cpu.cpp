// CPU registration of linear_4bit: C = A @ dequant(W)^T + bias for a 4-bit blockwise weight.
// Small M uses a core kernel, which streams the packed weight once (for bfloat16 activations on
// AVX512-BF16 CPUs the bfloat16 one, else the float32 one); large M dequantizes W a slab of rows at
// a time and hands each slab to torch's matmul, which wins when the weight is reused across many
// rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "core/blockwise_4bit.h"
#include "core/blockwise_8bit.h"
#include "core/gemm_4bit.h"
#include "core/gemm_4bit_avx512.h"
#include "core/gemm_4bit_avx512bf16.h"
#include "ops/checks.h"
#include "ops/dispatch.h"
#include "ops/forced_path.h"

namespace kbit::ops {
namespace {

// Up to how many rows of A the streaming kernel beats dequantized slabs + torch's matmul, measured
// on the 2-core AVX-512 development machine (benchmarks/RESULTS.md) for both of the core's kernels.
// bfloat16 slabs use torch's fast bfloat16 matmul, so they win earlier; float16/float32 slabs
// compute in float32.
int64_t max_rows_for_streaming(at::ScalarType dtype, int64_t K, int64_t blocksize) {
  const bool bf16 = dtype == at::kBFloat16;
  if (core::gemm_4bit_avx512_applies(K, blocksize)) return bf16 ? 8 : 16;
  return bf16 ? 1 : 8;
}
// bfloat16 activations on AVX512-BF16 CPUs, up to 16 rows: the bfloat16 kernel (W decoded to
// bfloat16, as the slabs and the CUDA kernels hold it) beats the float32 streaming kernel at 1..16
// rows and the slabs to 16 rows on the development machine; even at 24, behind at 32
// (benchmarks/RESULTS.md, "CPU NF4 with bfloat16 activations").
bool bf16dot_preferred(at::ScalarType dtype, int64_t M, int64_t K, int64_t blocksize) {
  return dtype == at::kBFloat16 && M <= 16 && core::gemm_4bit_avx512bf16_applies(K, blocksize);
}

enum class CpuPath { Auto, Bfloat16, Float32, Slabs };

// KBIT_CPU_LINEAR4_PATH=bfloat16|float32|slabs forces a path where it applies (benchmarks, tests).
CpuPath forced_cpu_path() {
  return CpuPath(forced_choice("KBIT_CPU_LINEAR4_PATH", {"bfloat16", "float32", "slabs"}));  // 0 = Auto
}
constexpr int64_t kSlabBytes = 4 << 20;  // one dequantized slab of W: stays in the cores' caches

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

// Elements [begin, begin + n) of the flat dequantized weight into out (float32 or bfloat16), in parallel.
void dequantize_elements(at::ScalarType dtype, const uint8_t* packed, const float* absmax, int64_t begin,
                         int64_t n, int64_t blocksize, core::QuantType type, void* out) {
  dispatch_float(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t b, int64_t e) {
      core::dequantize_4bit_range<T>(packed, absmax, begin + b, begin + e, blocksize, type,
                                     static_cast<T*>(out) + b);
    });
  });
}

// Large M: W is dequantized kSlabBytes of rows at a time into one reused buffer (never whole: an
// 8B model's largest layer would be a 235 MB float32 copy) and each slab goes through torch's matmul
// into its columns of the output. bfloat16 computes in bfloat16 (the dequantized values rounded to
// bfloat16 first, as the CUDA path does; torch's CPU bfloat16 matmul is fast); float16 and float32
// compute in float32 (torch's CPU float16 matmul is slow).
at::Tensor linear_slabs(const at::Tensor& A2, const uint8_t* packed, const float* absmax, int64_t N, int64_t K,
                        int64_t blocksize, core::QuantType type, const at::Tensor& bias) {
  const auto compute = A2.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
  auto out = at::empty({A2.size(0), N}, A2.options());
  if (N == 0) return out;
  const auto a = A2.to(compute);
  const auto b = bias.defined() ? bias.to(compute) : bias;
  const int64_t row_bytes = std::max<int64_t>(1, K * int64_t(c10::elementSize(compute)));
  const int64_t rows = std::min(N, std::max<int64_t>(1, kSlabBytes / row_bytes));
  auto slab = at::empty({rows, K}, a.options());
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t r = std::min(rows, N - n0);
    auto w = slab.narrow(0, 0, r);
    dequantize_elements(compute, packed, absmax, n0 * K, r * K, blocksize, type, w.data_ptr());
    out.narrow(1, n0, r).copy_(b.defined() ? at::addmm(b.narrow(0, n0, r), a, w.t()) : at::mm(a, w.t()));
  }
  return out;
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

  CpuPath path = forced_cpu_path();
  if (path == CpuPath::Bfloat16 &&
      !(A.scalar_type() == at::kBFloat16 && core::gemm_4bit_avx512bf16_applies(K, blocksize)))
    path = CpuPath::Auto;
  if (path == CpuPath::Auto)
    path = bf16dot_preferred(A.scalar_type(), M, K, blocksize)                ? CpuPath::Bfloat16
           : M <= max_rows_for_streaming(A.scalar_type(), K, blocksize) ? CpuPath::Float32
                                                                             : CpuPath::Slabs;
  if (path == CpuPath::Bfloat16) {
    auto out = at::empty(out_sizes, A.options());
    core::gemm_4bit_avx512bf16(data_as<core::bfloat16>(a), bytes.data_ptr<uint8_t>(), am.data_ptr<float>(),
                               b.defined() ? data_as<core::bfloat16>(b) : nullptr, M, N, K, blocksize, type,
                               data_as<core::bfloat16>(out));
    return out;
  }
  if (path == CpuPath::Float32) {
    auto out = at::empty(out_sizes, A.options());
    dispatch_float(A.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      core::gemm_4bit<T>(data_as<T>(a), bytes.data_ptr<uint8_t>(), am.data_ptr<float>(),
                         b.defined() ? data_as<T>(b) : nullptr, M, N, K, blocksize, type, data_as<T>(out));
    });
    return out;
  }
  return linear_slabs(a.reshape({M, K}), bytes.data_ptr<uint8_t>(), am.data_ptr<float>(), N, K, blocksize, type,
                      b)
      .reshape(out_sizes);
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CPU, m) { m.impl("linear_4bit", &linear_4bit_cpu); }

}  // namespace kbit::ops
