// Nearest-value rounding to a sorted 256-value code by one table lookup (used by the CUDA 8-bit
// optimizer kernel; results are those of core::nearest_in_tree, bit for bit).
//
// The answer for x is the count of midpoints mid[k] = (code[k] + code[k+1]) / 2 below x. The table
// cuts the floats into buckets by sign and the top 16 bits of the magnitude (8 exponent bits and 7
// mantissa bits): kLookupBuckets per sign, one per 1/128 of a binade for |x| in [2^-23, 2^1), with
// every smaller |x| also in bucket 0 and every larger one (inf, NaN) in the last. A 4-byte entry per
// bucket holds
//   bits 0-7   idx: the count of midpoints below the bucket's lowest float,
//   bit  8     a flag: the entry cannot answer, search the midpoints instead,
//   bits 16-31 thr: key16 of the one midpoint inside the bucket, or 0xffff if there is none.
// Inside an inner bucket every float shares the top 16 bits, so "x > mid" is "key16(x) > thr", where
// key16 is the low half of the bits, complemented for negative numbers (larger magnitude = smaller
// value). The answer is idx + (key16(x) > thr) whenever the bucket holds at most one midpoint; the
// flag marks the others (two or more midpoints, or any in an end bucket, whose floats do not share
// the top bits) and the last bucket of each sign (NaN and |x| >= 2): they take an 8-step binary search.
//
// For the dynamic maps of 8-bit optimizer states no bucket is flagged but the last ones: the densest
// midpoints, those of the unsigned map in [0.5, 1), lie 0.9/128 = 0.007 apart, buckets there are
// 2^-8 = 0.004 wide, and the smallest |midpoint| (1.6e-7) is above bucket 0 (see the GoogleTest).
// Normalized states (|x| <= 1) are thus rounded by one shared load each. Codes of any other sorted
// shape stay exact, only slower where flagged.
//
// The table is 2 * kLookupBuckets * 4 = 24 KB per code, small enough for shared memory beside a
// second code's. It is filled in chunks of buckets (code_lookup_fill), so that the threads of a CUDA
// block can build it in parallel from the midpoints.
#pragma once
#include <cstdint>

#include "core/optim_adam.h"

namespace kbit::core {

constexpr int kLookupMinExp = -23;                                // |x| < 2^-23: bucket 0
constexpr int kLookupBinades = 24;                                // 2^-23 .. 2^1
constexpr int kLookupBuckets = kLookupBinades << 7;               // per sign: 3072
constexpr uint32_t kLookupBase = uint32_t(127 + kLookupMinExp) << 7;  // top 16 bits of 2^-23
constexpr int kLookupSlots = 2 * kLookupBuckets;                  // entries per code
constexpr uint32_t kLookupFlag = 0x100u;

KBIT_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  return float_to_bits(x);
#endif
}
KBIT_HD float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return bits_to_float(u);
#endif
}

// Midpoint k (0..254) of a sorted code, computed as the CPU reference's search tree does; mid[255]
// is +inf so that a binary search over 256 entries never counts it.
KBIT_HD float code_midpoint(const float* code, int k) {
  return k < 255 ? mul_rn(0.5f, add_rn(code[k], code[k + 1])) : f32_from_bits(0x7f800000u);
}

// Count of midpoints below x (NaN: 0) in 8 steps; mid holds 256 sorted values, mid[255] = +inf.
KBIT_HD int count_below(const float* mid, float x) {
  int i = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int s = 128; s > 0; s >>= 1) i += x > mid[i + s - 1] ? s : 0;
  return i;
}

// Low 16 bits of x's bits, complemented for negative x: ordered like x inside one bucket.
KBIT_HD uint32_t key16(float x) {
  const uint32_t bits = f32_bits(x);
  return (bits ^ uint32_t(int32_t(bits) >> 31)) & 0xffffu;
}

// The floats of bucket b (0 .. kLookupBuckets-1) of one sign, as the closed range [lo, hi].
KBIT_HD void lookup_bucket_range(bool neg, int b, float& lo, float& hi) {
  const uint32_t m0 = b == 0 ? 0u : (kLookupBase + uint32_t(b)) << 16;
  const uint32_t m1 = b == kLookupBuckets - 1 ? 0x7f800000u : ((kLookupBase + uint32_t(b) + 1) << 16) - 1;
  const float f0 = f32_from_bits(m0), f1 = f32_from_bits(m1);
  lo = neg ? -f1 : f0;
  hi = neg ? -f0 : f1;
}

// Fills table slots [first, first + count), all of one sign (slots kLookupBuckets.. are negative x),
// from the 256 midpoints. Walks the buckets in increasing x so that the midpoint counts only advance.
KBIT_HD void code_lookup_fill(const float* mid, uint32_t* table, int first, int count) {
  const bool neg = first >= kLookupBuckets;
  const int b0 = neg ? first - kLookupBuckets : first;
  int j = -1;
  for (int k = 0; k < count; ++k) {
    const int b = neg ? b0 + count - 1 - k : b0 + k;
    float lo, hi;
    lookup_bucket_range(neg, b, lo, hi);
    if (j < 0) j = count_below(mid, lo);
    while (j < 255 && mid[j] < lo) ++j;
    int h = j;
    while (h < 255 && mid[h] < hi) ++h;
    const int inside = h - j;  // midpoints in [lo, hi)
    const bool end = b == 0 || b == kLookupBuckets - 1;
    const bool flag = b == kLookupBuckets - 1 || inside > (end ? 0 : 1);
    const uint32_t thr = !end && inside == 1 ? key16(mid[j]) : 0xffffu;
    table[neg ? kLookupBuckets + b : b] = (thr << 16) | (flag ? kLookupFlag : 0u) | uint32_t(j);
    j = h;
  }
}

// The table's answer for x: the index of the code value nearest x, or a value >= 256 (the flag set)
// where the midpoints must be searched instead.
KBIT_HD uint32_t code_lookup_table(const uint32_t* table, float x) {
  const uint32_t bits = f32_bits(x);
  const uint32_t neg = uint32_t(int32_t(bits) >> 31);  // all ones for negative x
  uint32_t mag = bits & 0x7fffffffu;
  mag = mag < (kLookupBase << 16) ? (kLookupBase << 16) : mag;
  mag = mag > ((kLookupBase + kLookupBuckets - 1) << 16) ? ((kLookupBase + kLookupBuckets - 1) << 16) : mag;
  const uint32_t e = table[(mag >> 16) - kLookupBase + (neg & uint32_t(kLookupBuckets))];
  // (key16 << 16) > e  <=>  key16 > thr, since e's low half is below 1 << 16.
  return (e & 0x1ffu) + (((bits ^ neg) << 16) > e ? 1u : 0u);
}

// Index of the code value nearest x: the count of midpoints below x, as nearest_in_tree returns it.
KBIT_HD int code_lookup(const uint32_t* table, const float* mid, float x) {
  const uint32_t q = code_lookup_table(table, x);
  return q < 256u ? int(q) : count_below(mid, x);
}

}  // namespace kbit::core
