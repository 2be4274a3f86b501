// max |x| over a run of float / half / bfloat16 values, as the blockwise quantizers need it.
// It works on the raw bits: with the sign cleared, the order of the integers is the order of the
// magnitudes, and integer max reductions auto-vectorize (float ones do not without -ffast-math).
// NaN is skipped, like the fmaxf reductions of bitsandbytes' CUDA kernels; inf counts.
// An empty or all-zero (or all-NaN) run gives 0.
#pragma once
#include <cstdint>

#include "core/dtypes.h"

namespace kbit::core {

inline float absmax_of(const float* x, int64_t n) {
  int32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    int32_t b = int32_t(float_to_bits(x[i]) & 0x7fffffffu);
    b = b > 0x7f800000 ? 0 : b;
    m = b > m ? b : m;
  }
  return bits_to_float(uint32_t(m));
}

inline float absmax_of(const bfloat16* x, int64_t n) {
  int16_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    int16_t b = int16_t(x[i].bits & 0x7fff);
    b = b > 0x7f80 ? int16_t(0) : b;
    m = b > m ? b : m;
  }
  return bits_to_float(uint32_t(uint16_t(m)) << 16);
}

inline float absmax_of(const half* x, int64_t n) {
  int16_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    int16_t b = int16_t(x[i].bits & 0x7fff);
    b = b > 0x7c00 ? int16_t(0) : b;
    m = b > m ? b : m;
  }
  return half_bits_to_float(uint16_t(m));
}

}  // namespace kbit::core
