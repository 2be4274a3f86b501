// Input checks and argument decoding shared by the CPU and CUDA registrations of the optimizer
// update ops (optim_cpu.cpp, optim_cuda.cpp). Every failure names the argument at fault.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "core/dtypes.h"
#include "core/optim_adam.h"
#include "ops/checks.h"

namespace kbit::ops::optim {

// "adam": L2 weight decay folded into the gradient (torch.optim.Adam);
// "adamw": decoupled weight decay (torch.optim.AdamW, and what bitsandbytes' 8-bit Adam does).
inline bool decoupled_decay(c10::string_view name) {
  const std::string s(name);
  TORCH_CHECK_VALUE(s == "adam" || s == "adamw", "kbit: optimizer_name must be 'adam' or 'adamw'; got '", s, "'");
  return s == "adamw";
}

inline core::AdamConfig config(c10::string_view name, double beta1, double beta2, double eps, int64_t step,
                               double lr, double weight_decay, double gnorm_scale) {
  const bool decoupled = decoupled_decay(name);
  TORCH_CHECK_VALUE(beta1 >= 0.0 && beta1 < 1.0, "kbit: beta1 must be in [0, 1); got ", beta1);
  TORCH_CHECK_VALUE(beta2 >= 0.0 && beta2 < 1.0, "kbit: beta2 must be in [0, 1); got ", beta2);
  TORCH_CHECK_VALUE(eps >= 0.0, "kbit: eps must be >= 0; got ", eps);
  TORCH_CHECK_VALUE(step >= 1, "kbit: step must be >= 1 (the count of updates including this one); got ", step);
  TORCH_CHECK_VALUE(lr >= 0.0, "kbit: lr must be >= 0; got ", lr);
  TORCH_CHECK_VALUE(weight_decay >= 0.0, "kbit: weight_decay must be >= 0; got ", weight_decay);
  return core::make_adam_config(beta1, beta2, eps, step, lr, weight_decay, gnorm_scale, decoupled);
}

inline void check_contiguous(const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.is_contiguous(), "kbit: ", what, " must be contiguous (it is updated in place)");
}

// p (updated in place) and its gradient g; returns g as a contiguous tensor.
inline at::Tensor check_param_and_grad(const at::Tensor& p, const at::Tensor& g) {
  check_float_input(p, "p");
  check_contiguous(p, "p");
  TORCH_CHECK_TYPE(g.scalar_type() == p.scalar_type(), "kbit: g must have p's dtype ", p.scalar_type(), "; got ",
                   g.scalar_type());
  check_same_device(g, p, "g", "p");
  TORCH_CHECK_VALUE(g.numel() == p.numel(), "kbit: g has ", g.numel(), " elements but p has ", p.numel());
  return g.contiguous();
}

inline void check_state(const at::Tensor& s, at::ScalarType dtype, int64_t numel, const at::Tensor& p,
                        const char* what) {
  check_dtype(s, dtype, what);
  check_same_device(s, p, what, "p");
  check_contiguous(s, what);
  TORCH_CHECK_VALUE(s.numel() == numel, "kbit: ", what, " has ", s.numel(), " elements but needs ", numel,
                    " for p of ", p.numel(), " elements");
}

inline void check_code(const at::Tensor& code, const at::Tensor& p, const char* what) {
  check_dtype(code, at::kFloat, what);
  check_same_device(code, p, what, "p");
  TORCH_CHECK_VALUE(code.numel() == 256, "kbit: ", what, " must hold 256 values (a sorted 8-bit code); got ",
                    code.numel());
}

// All checks of optimizer_update_8bit_blockwise; returns the contiguous gradient.
inline at::Tensor check_8bit(const at::Tensor& p, const at::Tensor& g, const at::Tensor& state1,
                             const at::Tensor& state2, const at::Tensor& absmax1, const at::Tensor& absmax2,
                             const at::Tensor& code1, const at::Tensor& code2) {
  auto gc = check_param_and_grad(p, g);
  const int64_t n = p.numel(), blocks = ceil_div(n, core::kOptimBlocksize);
  check_state(state1, at::kByte, n, p, "state1");
  check_state(state2, at::kByte, n, p, "state2");
  check_state(absmax1, at::kFloat, blocks, p, "absmax1");
  check_state(absmax2, at::kFloat, blocks, p, "absmax2");
  check_code(code1, p, "code1");
  check_code(code2, p, "code2");
  return gc;
}

inline at::Tensor check_32bit(const at::Tensor& p, const at::Tensor& g, const at::Tensor& state1,
                              const at::Tensor& state2) {
  auto gc = check_param_and_grad(p, g);
  check_state(state1, at::kFloat, p.numel(), p, "state1");
  check_state(state2, at::kFloat, p.numel(), p, "state2");
  return gc;
}

// Calls fn with a null pointer of the core storage type matching p's dtype.
template <typename Fn>
void dispatch_param(at::ScalarType s, Fn&& fn) {
  switch (s) {
    case at::kFloat:
      return fn(static_cast<float*>(nullptr));
    case at::kHalf:
      return fn(static_cast<core::half*>(nullptr));
    case at::kBFloat16:
      return fn(static_cast<core::bfloat16*>(nullptr));
    default:
      TORCH_CHECK_TYPE(false, "kbit: p must be float32, float16 or bfloat16; got ", s);
  }
}

}  // namespace kbit::ops::optim
