// Adam / AdamW updates with 32-bit states and with 8-bit blockwise states (CPU reference).
//
// 8-bit states (the layout bitsandbytes' 8-bit optimizers use): the flat parameter of n elements is
// cut into blocks of kOptimBlocksize = 256. state1 (exp_avg) and state2 (exp_avg_sq) hold one byte
// per element: an index into a sorted 256-value code (code1: the signed dynamic map, code2: the
// unsigned one), scaled by the block's float32 absmax1 / absmax2. A step, per block: decode both
// states, run the Adam update in float32, then re-encode each state with a fresh absmax (max |x| of
// the updated block) as the index of the nearest code value. Cost: 2 bytes/param + 8 bytes/256.
//
// The per-element math below is shared with csrc/cuda (KBIT_HD marks it host + device), so the CPU
// reference and the CUDA kernel run the same float32 operations in the same order.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/dtypes.h"

#if defined(__CUDACC__)
#define KBIT_HD __host__ __device__ __forceinline__
#else
#define KBIT_HD inline
#endif

namespace kbit::core {

constexpr int64_t kOptimBlocksize = 256;

// Step constants, computed once per tensor in double and rounded to float like torch's scalars.
struct AdamConfig {
  float one_minus_beta1;  // weight of the new gradient in exp_avg
  float beta2, one_minus_beta2;
  float eps;
  float step_size;     // lr / (1 - beta1^step)
  float bc2_sqrt;      // sqrt(1 - beta2^step)
  float weight_decay;  // Adam: added to the gradient as weight_decay * p (L2)
  float decay_factor;  // AdamW: p *= 1 - lr * weight_decay before the update (decoupled)
  float gnorm_scale;   // the gradient is multiplied by this first (gradient clipping)
  bool decoupled;
};

inline AdamConfig make_adam_config(double beta1, double beta2, double eps, int64_t step, double lr,
                                   double weight_decay, double gnorm_scale, bool decoupled) {
  AdamConfig c;
  c.one_minus_beta1 = float(1.0 - beta1);
  c.beta2 = float(beta2);
  c.one_minus_beta2 = float(1.0 - beta2);
  c.eps = float(eps);
  c.step_size = float(lr / (1.0 - std::pow(beta1, double(step))));
  c.bc2_sqrt = float(std::sqrt(1.0 - std::pow(beta2, double(step))));
  c.weight_decay = float(weight_decay);
  c.decay_factor = float(1.0 - lr * weight_decay);
  c.gnorm_scale = float(gnorm_scale);
  c.decoupled = decoupled;
  return c;
}

// float32 multiply / add that the CUDA compiler may not fuse into an FMA, so that a kernel rounds
// exactly as the CPU reference does (x86-64 has no implicit contraction) and tests compare bits.
KBIT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KBIT_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// One element of Adam(W), written in the order torch.optim.AdamW computes it:
// m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2; p += (-step_size m) / (sqrt(v)/bc2 + eps).
KBIT_HD void adam_element(float& p, float g, float& m, float& v, const AdamConfig& c) {
  g = mul_rn(g, c.gnorm_scale);
  if (c.decoupled) {
    p = mul_rn(p, c.decay_factor);
  } else {
    g = add_rn(g, mul_rn(c.weight_decay, p));
  }
  m = add_rn(m, mul_rn(c.one_minus_beta1, add_rn(g, -m)));
  v = add_rn(mul_rn(c.beta2, v), mul_rn(mul_rn(c.one_minus_beta2, g), g));
  const float denom = add_rn(sqrtf(v) / c.bc2_sqrt, c.eps);
  p = add_rn(p, mul_rn(-c.step_size, m) / denom);
}

// Nearest-value rounding to a sorted 256-value code searches its 255 midpoints
// mid[k] = (code[k] + code[k+1]) / 2: the index is the count of midpoints below x (ties go to the
// lower value, NaN to 0). The midpoints are stored as a perfect binary search tree in breadth-first
// (Eytzinger) order, tree[1] the root and node i's children 2i and 2i+1 (tree[0] unused), so that the
// nodes a warp reads at one level are contiguous: on the GPU, lanes taking different paths then hit
// different shared-memory banks, where a sorted array would put a level's nodes in one bank.

// The midpoint index held by tree node i (1..255): node k of depth d sits at (2k+1) * 2^(7-d) - 1.
KBIT_HD int tree_node_midpoint(int i) {
  int d = 0;
  while ((2 << d) <= i) ++d;
  return ((2 * (i - (1 << d)) + 1) << (7 - d)) - 1;
}

KBIT_HD int nearest_in_tree(const float* tree, float x) {
  int i = 1;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int level = 0; level < 8; ++level) i = 2 * i + (x > tree[i] ? 1 : 0);
  return i - 256;
}

// Fills tree[0..255] for a sorted 256-value code (tree[0] is set to 0 and never read).
void code_search_tree(const float* code, float* tree);

// 32-bit states: exp_avg m and exp_avg_sq v as float32, n elements each. T: float, half, bfloat16.
template <typename T>
void adam_update_32bit(T* p, const T* g, float* m, float* v, int64_t n, const AdamConfig& c);

// 8-bit blockwise states as described at the top; absmax1/absmax2 hold ceil(n / 256) floats.
template <typename T>
void adam_update_8bit_blockwise(T* p, const T* g, uint8_t* state1, uint8_t* state2, float* absmax1,
                                float* absmax2, const float* code1, const float* code2, int64_t n,
                                const AdamConfig& c);

}  // namespace kbit::core
