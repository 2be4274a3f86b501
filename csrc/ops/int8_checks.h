// Argument checks and shapes shared by the CPU and CUDA registrations of the LLM.int8() ops.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "ops/checks.h"

namespace kbit::ops {

// Number of rows when A is viewed as (rows, last dimension); A must be at least 1-D.
inline int64_t leading_rows(const at::Tensor& A, const char* what) {
  TORCH_CHECK_VALUE(A.dim() >= 1, "kbit: ", what, " must have at least one dimension");
  return c10::multiply_integers(A.sizes().slice(0, A.dim() - 1));
}

// W_q: int8 (N, K) on A's device; w_stats: float32 (N,).
inline void check_int8_weight(const at::Tensor& W_q, const at::Tensor& w_stats, int64_t K, const at::Tensor& ref) {
  check_dtype(W_q, at::kChar, "W_q");
  check_dtype(w_stats, at::kFloat, "w_stats");
  check_same_device(W_q, ref, "W_q", "A");
  check_same_device(w_stats, ref, "w_stats", "A");
  TORCH_CHECK_VALUE(W_q.dim() == 2, "kbit: W_q must be 2-D (out_features, in_features); got ", W_q.sizes());
  TORCH_CHECK_VALUE(W_q.size(1) == K, "kbit: A has ", K, " features but W_q expects ", W_q.size(1));
  TORCH_CHECK_VALUE(w_stats.numel() == W_q.size(0), "kbit: w_stats has ", w_stats.numel(),
                    " values but W_q has ", W_q.size(0), " rows");
}

// The optional bias, checked, as a contiguous (N,) tensor of `dtype`; undefined when absent.
inline at::Tensor checked_bias(const c10::optional<at::Tensor>& bias, int64_t N, at::ScalarType dtype,
                               const at::Tensor& ref) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  check_float_input(*bias, "bias");
  check_same_device(*bias, ref, "bias", "A");
  TORCH_CHECK_VALUE(bias->numel() == N, "kbit: bias has ", bias->numel(), " values but the layer has ", N,
                    " outputs");
  return bias->to(dtype).contiguous().view({N});
}

// A's shape with the last dimension replaced by N.
inline std::vector<int64_t> out_shape(const at::Tensor& A, int64_t N) {
  auto s = A.sizes().vec();
  s.back() = N;
  return s;
}

}  // namespace kbit::ops
