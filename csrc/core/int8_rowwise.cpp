// LLM.int8() row-wise quantization on the CPU (see int8_rowwise.h for the rules).
// Magnitudes are compared as integer bit patterns (|x| as float bits orders like |x|), which
// makes the row max a vectorizable integer reduction and sorts NaN above every threshold.
#include "core/int8_rowwise.h"

#include <algorithm>

#include "core/parallel.h"

namespace kbit::core {
namespace {

constexpr uint32_t kInfBits = 0x7f800000u;
constexpr int64_t kGrainElems = 1 << 14;

// Bits of the threshold as T rounds it; entries with |x| bits >= this are outliers. Without a
// threshold it is just above inf, so only NaN is excluded.
template <typename T>
uint32_t threshold_bits(float threshold) {
  if (!(threshold > 0.0f)) return kInfBits + 1;
  return float_to_bits(to_float(from_float<T>(threshold)));
}

inline int32_t abs_bits(float x) { return int32_t(float_to_bits(x) & 0x7fffffffu); }

// Both loops use integer masks instead of branches so that they vectorize.
template <typename T, bool HasMask>
void quantize_row(const T* a, int64_t cols, int32_t thr, const uint8_t* is_outlier, int8_t* q,
                  float* stats) {
  int32_t m = 0;
  for (int64_t c = 0; c < cols; ++c) {
    const int32_t b = abs_bits(to_float(a[c]));
    m = std::max(m, b & -int32_t(b < thr));
  }
  const float s = bits_to_float(uint32_t(m));
  *stats = s;
  // 127 * (1 / s), two float32 roundings, as torch evaluates bitsandbytes' 127.0 / row_stats (a
  // reciprocal, then a multiply) and as its CUDA kernel does (approximate reciprocal, multiply).
  // 127.0f / s differs in the last bit for some s and then flips values near k + 0.5.
  const float scale = s > 0.0f ? 127.0f * (1.0f / s) : 0.0f;
  // Entries written as 0: outliers (|x| >= t), NaN, inf, outlier columns. Every other entry has
  // |x| <= s, so |x * scale| <= 127 (plus rounding) converts to int without overflow.
  const int32_t finite_thr = std::min<int32_t>(thr, int32_t(kInfBits));
  for (int64_t c = 0; c < cols; ++c) {
    const float x = to_float(a[c]);
    int32_t keep = -int32_t(abs_bits(x) < finite_thr);
    if (HasMask) keep &= int32_t(is_outlier[c] != 0) - 1;
    const float v = bits_to_float(float_to_bits(x * scale) & uint32_t(keep));
    const float r = (v + 12582912.0f) - 12582912.0f;  // round half to even (1.5 * 2^23 trick)
    q[c] = int8_t(int32_t(r));
  }
}

// flags[c] |= (|a[c]| >= threshold); __restrict: the byte stores may not alias a (else the
// compiler reloads a every step and does not vectorize).
template <typename T>
void mark_outliers(const T* __restrict a, int64_t n, int32_t thr, uint8_t* __restrict flags) {
  for (int64_t c = 0; c < n; ++c) {
    const int32_t b = abs_bits(to_float(a[c]));
    flags[c] |= uint8_t(int(b >= thr) & int(b <= int32_t(kInfBits)));  // NaN is not an outlier
  }
}

}  // namespace

template <typename T>
void find_outlier_columns(const T* A, int64_t rows, int64_t cols, float threshold, uint8_t* is_outlier) {
  if (cols <= 0) return;
  std::fill(is_outlier, is_outlier + cols, uint8_t(0));
  if (!(threshold > 0.0f) || rows <= 0) return;
  const int32_t thr = int32_t(threshold_bits<T>(threshold));
  // Column ranges per task; each task scans every row of its range (contiguous within a row).
  parallel_for(0, cols, 512, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < rows; ++r) mark_outliers(A + r * cols + c0, c1 - c0, thr, is_outlier + c0);
  });
}

template <typename T>
void int8_vectorwise_quant(const T* A, int64_t rows, int64_t cols, float threshold,
                           const uint8_t* is_outlier, int8_t* q, float* row_stats) {
  if (rows <= 0) return;
  if (cols <= 0) {
    std::fill(row_stats, row_stats + rows, 0.0f);
    return;
  }
  const int32_t thr = int32_t(threshold_bits<T>(threshold));
  parallel_for(0, rows, std::max<int64_t>(1, kGrainElems / cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* a = A + r * cols;
      if (is_outlier)
        quantize_row<T, true>(a, cols, thr, is_outlier, q + r * cols, row_stats + r);
      else
        quantize_row<T, false>(a, cols, thr, nullptr, q + r * cols, row_stats + r);
    }
  });
}

#define KBIT_INSTANTIATE(T)                                                                              \
  template void find_outlier_columns<T>(const T*, int64_t, int64_t, float, uint8_t*);                   \
  template void int8_vectorwise_quant<T>(const T*, int64_t, int64_t, float, const uint8_t*, int8_t*,    \
                                         float*);
KBIT_INSTANTIATE(float)
KBIT_INSTANTIATE(half)
KBIT_INSTANTIATE(bfloat16)
#undef KBIT_INSTANTIATE

}  // namespace kbit::core
