// CPU registrations of the LLM.int8() ops: row-wise quantization with outlier columns, the int8
// GEMM with fused dequantization, and the whole Linear8bitLt forward (linear_8bit).
#include <torch/library.h>

#include <vector>

#include "core/int8_gemm.h"
#include "core/int8_gemm_vnni.h"
#include "core/int8_rowwise.h"
#include "ops/checks.h"
#include "ops/int8_checks.h"
#include "ops/dispatch.h"

namespace kbit::ops {
namespace {

// The int8 product through torch's int8 GEMM (oneDNN; VNNI where the CPU has it), then LLM.int8()'s
// dequantization as core::int8_linear does it: float(sum) * (a_stats[m] * w_stats[n]) / 127^2, each
// step rounded in float32 - the same bits as the core kernel, 3-8x faster (benchmarks/RESULTS.md).
// int32 sums are exact while K * 127^2 < 2^31; longer rows (and empty shapes) use the core kernel.
bool torch_int8_mm_applies(int64_t M, int64_t N, int64_t K) { return M > 0 && N > 0 && K > 0 && K < (1 << 17); }

at::Tensor int8_mm_dequant(const at::Tensor& q, const at::Tensor& w, const at::Tensor& a_stats,
                           const at::Tensor& w_stats) {
  constexpr float kInv127Sq = 1.0f / (127.0f * 127.0f);
  return at::_int_mm(q, w.t()).to(at::kFloat).mul_(at::outer(a_stats, w_stats)).mul_(kInv127Sq);
}

// Rows of A for which kbit's VNNI kernel beats torch's int8 GEMM. On the 2-core AVX-512 machine
// (benchmarks/RESULTS.md, "CPU int8 GEMM by rows") torch's GEMM has a fast one-row path but takes
// about as long for 2 rows as for 24; the VNNI kernel's time grows with the rows: 1.1-3.6x faster
// at 2..24 rows, about even at 32, slower at 1 row on small layers and from 48 rows.
bool vnni_preferred(int64_t M, int64_t K) { return M >= 2 && M <= 24 && core::int8_linear_vnni_applies(M, K); }

// float32 (M x N) = the dequantized int8 product of contiguous q (M x K) and w (N x K), the same
// bits on every path: kbit's VNNI kernel, torch's int8 GEMM, or the core kernel (long rows).
at::Tensor int8_product_f32(const at::Tensor& q, const at::Tensor& w, const at::Tensor& a_stats,
                            const at::Tensor& w_stats, int64_t M, int64_t N, int64_t K) {
  const bool vnni = vnni_preferred(M, K);
  if (!vnni && torch_int8_mm_applies(M, N, K))
    return int8_mm_dequant(q.reshape({M, K}), w, a_stats.reshape({M}), w_stats.reshape({N}));
  auto out = at::empty({M, N}, q.options().dtype(at::kFloat));
  const auto kernel = vnni ? core::int8_linear_vnni<float> : core::int8_linear<float>;
  kernel(q.data_ptr<int8_t>(), w.data_ptr<int8_t>(), a_stats.data_ptr<float>(), w_stats.data_ptr<float>(), nullptr,
         M, N, K, out.data_ptr<float>());
  return out;
}

std::vector<uint8_t> outlier_mask(const at::Tensor& a, int64_t rows, int64_t cols, double threshold) {
  std::vector<uint8_t> mask(cols, 0);
  if (threshold > 0 && rows > 0) {
    dispatch_float(a.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      core::find_outlier_columns<T>(data_as<T>(a), rows, cols, float(threshold), mask.data());
    });
  }
  return mask;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_vectorwise_quant_cpu(const at::Tensor& A,
                                                                         double threshold) {
  check_float_input(A, "A");
  const int64_t rows = leading_rows(A, "A"), cols = A.size(-1);
  auto a = A.contiguous();
  auto q = at::empty(A.sizes(), A.options().dtype(at::kChar));
  auto row_stats = at::zeros({rows}, A.options().dtype(at::kFloat));
  const auto mask = outlier_mask(a, rows, cols, threshold);
  if (cols > 0 && rows > 0) {
    dispatch_float(A.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      core::int8_vectorwise_quant<T>(data_as<T>(a), rows, cols, float(threshold), mask.data(),
                                     q.data_ptr<int8_t>(),
                                     row_stats.data_ptr<float>());
    });
  }
  std::vector<int64_t> idx;
  for (int64_t c = 0; c < cols; ++c)
    if (mask[c]) idx.push_back(c);
  auto outlier_cols = at::tensor(idx, A.options().dtype(at::kLong));
  return {q, row_stats, outlier_cols.reshape({int64_t(idx.size())})};
}

at::Tensor int8_linear_cpu(const at::Tensor& A_q, const at::Tensor& W_q, const at::Tensor& a_stats,
                           const at::Tensor& w_stats, const c10::optional<at::Tensor>& bias,
                           at::ScalarType dtype) {
  check_dtype(A_q, at::kChar, "A_q");
  check_dtype(a_stats, at::kFloat, "a_stats");
  check_float_dtype(dtype, "dtype");
  const int64_t M = leading_rows(A_q, "A_q"), K = A_q.size(-1);
  check_int8_weight(W_q, w_stats, K, A_q);
  const int64_t N = W_q.size(0);
  TORCH_CHECK_VALUE(a_stats.numel() == M, "kbit: a_stats has ", a_stats.numel(), " values but A_q has ", M,
                    " rows");
  auto b = checked_bias(bias, N, dtype, A_q);
  auto a = A_q.contiguous(), w = W_q.contiguous(), as = a_stats.contiguous(), ws = w_stats.contiguous();
  if (M == 0 || N == 0 || K == 0) {  // the core kernel's empty-shape rules (bias or zeros)
    auto out = at::empty(out_shape(A_q, N), A_q.options().dtype(dtype));
    dispatch_float(dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      core::int8_linear<T>(a.data_ptr<int8_t>(), w.data_ptr<int8_t>(), as.data_ptr<float>(), ws.data_ptr<float>(),
                           b.defined() ? data_as<T>(b) : nullptr, M, N, K, data_as<T>(out));
    });
    return out;
  }
  auto out = int8_product_f32(a, w, as, ws, M, N, K);
  if (b.defined()) out.add_(b.to(at::kFloat));  // the bias in float32, as the core adds it
  return out.to(dtype).reshape(out_shape(A_q, N));
}

at::Tensor linear_8bit_cpu(const at::Tensor& A, const at::Tensor& W_q, const at::Tensor& w_stats,
                           double threshold, const c10::optional<at::Tensor>& bias) {
  check_float_input(A, "A");
  const int64_t M = leading_rows(A, "A"), K = A.size(-1);
  check_int8_weight(W_q, w_stats, K, A);
  const int64_t N = W_q.size(0);
  auto b = checked_bias(bias, N, at::kFloat, A);
  auto a = A.contiguous();
  // int8 part in float32, then the 16-bit outlier product and bias added in float32, cast once.
  at::Tensor out;
  if (M == 0 || K == 0) {
    out = at::zeros({M, N}, A.options().dtype(at::kFloat));
  } else {
    const auto mask = outlier_mask(a, M, K, threshold);
    auto q = at::empty({M, K}, A.options().dtype(at::kChar));
    auto row_stats = at::empty({M}, A.options().dtype(at::kFloat));
    dispatch_float(A.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      core::int8_vectorwise_quant<T>(data_as<T>(a), M, K, float(threshold), mask.data(),
                                     q.data_ptr<int8_t>(),
                                     row_stats.data_ptr<float>());
    });
    auto w = W_q.contiguous(), ws = w_stats.contiguous();
    out = int8_product_f32(q, w, row_stats, ws, M, N, K);
    std::vector<int64_t> idx;
    for (int64_t c = 0; c < K; ++c)
      if (mask[c]) idx.push_back(c);
    if (!idx.empty()) {
      auto cols = at::tensor(idx, A.options().dtype(at::kLong));
      auto a_out = a.reshape({M, K}).index_select(1, cols).to(at::kFloat);
      auto w_out = w.index_select(1, cols).to(at::kFloat) * (ws.unsqueeze(1) / 127.0f);
      out.addmm_(a_out, w_out.t());
    }
  }
  if (b.defined()) out.add_(b);
  return out.to(A.scalar_type()).reshape(out_shape(A, N));
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CPU, m) {
  m.impl("int8_vectorwise_quant", &int8_vectorwise_quant_cpu);
  m.impl("int8_linear", &int8_linear_cpu);
  m.impl("linear_8bit", &linear_8bit_cpu);
}

}  // namespace kbit::ops
