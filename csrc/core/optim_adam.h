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

// Nearest-value rounding to a sorted 256-value code: the index is the count of its 255 midpoints
// mid[k] = (code[k] + code[k+1]) / 2 that lie below x (ties go to the lower value).
//
// A binary search costs 8 dependent shared-memory reads per value on the GPU, where lanes going
// different ways collide in memory banks. Instead x's float bits pick a bucket (sign, exponent,
// top kBucketBits mantissa bits): the values of a bucket form one interval, so every midpoint
// below the bucket's lowest value counts (`lo` of them) and only the few midpoints inside it (`cnt`,
// 0 to 3 for the dynamic maps) need comparing. |x| < 2^-25 shares one bucket per sign, as does
// |x| >= 1 (with inf and NaN). The table (lo | cnt << 8 per bucket) is built from the code per call.
constexpr int kBucketBits = 5;
constexpr int kBucketExpMin = 102;                       // float exponent field of 2^-25
constexpr int kBucketRows = 26;                          // exponent rows 102..126, then |x| >= 1
constexpr int kBuckets = 2 * kBucketRows << kBucketBits;  // 1664

KBIT_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  return float_to_bits(x);
#endif
}

KBIT_HD float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return bits_to_float(u);
#endif
}

KBIT_HD int bucket_of(float x) {
  const uint32_t u = float_bits(x);
  int row = int((u >> 23) & 0xffu) - kBucketExpMin;
  int m = int((u >> (23 - kBucketBits)) & ((1u << kBucketBits) - 1u));
  if (row < 0) row = m = 0;
  if (row >= kBucketRows - 1) {
    row = kBucketRows - 1;
    m = 0;
  }
  return ((int(u >> 31) * kBucketRows + row) << kBucketBits) | m;
}

// Count of sorted midpoints below x, by binary search (to build the table; the CPU reference).
KBIT_HD int count_below(const float* mid, float x) {
  int idx = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int s = 128; s >= 1; s >>= 1) idx += (idx + s - 1 < 255 && x > mid[idx + s - 1]) ? s : 0;
  return idx;
}

// The table entry of bucket b given the 255 sorted midpoints.
KBIT_HD uint16_t bucket_entry(const float* mid, int b) {
  const int sign = b / (kBucketRows << kBucketBits);
  const int row = (b >> kBucketBits) % kBucketRows;
  const uint32_t m = uint32_t(b & ((1 << kBucketBits) - 1));
  float lo_mag, hi_mag;
  if (row == kBucketRows - 1) {
    lo_mag = 1.0f;
    hi_mag = float_from_bits(0x7f800000u);  // inf
  } else {
    const uint32_t base = (uint32_t(row + kBucketExpMin) << 23) | (m << (23 - kBucketBits));
    lo_mag = row == 0 && m == 0 ? 0.0f : float_from_bits(base);
    hi_mag = float_from_bits(base | ((1u << (23 - kBucketBits)) - 1u));
  }
  const float xmin = sign ? -hi_mag : lo_mag, xmax = sign ? -lo_mag : hi_mag;
  const int lo = count_below(mid, xmin), hi = count_below(mid, xmax);
  return uint16_t(lo | ((hi - lo) << 8));
}

// Index of the nearest code value: count of midpoints below x via its bucket.
KBIT_HD int nearest_code(const float* mid, const uint16_t* buckets, float x) {
  const uint32_t e = buckets[bucket_of(x)];
  int idx = int(e & 0xffu);
  const int end = idx + int(e >> 8);
  for (int k = idx; k < end; ++k) idx += x > mid[k] ? 1 : 0;
  return idx;
}

// Fills mid[0..254] (mid[255] = 0, never read) and buckets[0..kBuckets) for a sorted code.
void code_search_tables(const float* code, float* mid, uint16_t* buckets);

// 32-bit states: exp_avg m and exp_avg_sq v as float32, n elements each. T: float, half, bfloat16.
template <typename T>
void adam_update_32bit(T* p, const T* g, float* m, float* v, int64_t n, const AdamConfig& c);

// 8-bit blockwise states as described at the top; absmax1/absmax2 hold ceil(n / 256) floats.
template <typename T>
void adam_update_8bit_blockwise(T* p, const T* g, uint8_t* state1, uint8_t* state2, float* absmax1,
                                float* absmax2, const float* code1, const float* code2, int64_t n,
                                const AdamConfig& c);

}  // namespace kbit::core
