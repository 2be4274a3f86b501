// The branch-free 16-bit conversions of core/dtypes.h against straightforward references:
// every half and bfloat16 value, the midpoints between them (ties to even), and random floats.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "core/dtypes.h"
#include "core/parallel.h"

namespace kbit::core {
namespace {

double ref_half_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 31) return m ? std::nan("") : s * INFINITY;
  if (e == 0) return s * std::ldexp(double(m), -24);
  return s * std::ldexp(double(1024 + m), e - 25);
}

// Nearest half (ties to even) by search over all finite halves' magnitudes.
uint16_t ref_float_to_half(float f) {
  if (std::isnan(f)) return uint16_t((std::signbit(f) ? 0x8000 : 0) | 0x7e00);
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(double(f));
  if (a >= 65520.0) return sign | 0x7c00;
  // Magnitudes of halves are increasing in their bit pattern: binary search the bracket.
  uint16_t lo = 0, hi = 0x7bff;
  while (lo < hi) {
    const uint16_t mid = uint16_t((lo + hi + 1) / 2);
    if (ref_half_value(mid) <= a) lo = mid; else hi = uint16_t(mid - 1);
  }
  if (lo == 0x7bff) return sign | lo;
  const double below = ref_half_value(lo), above = ref_half_value(uint16_t(lo + 1));
  uint16_t r = lo;
  if (a - below > above - a || (a - below == above - a && (lo & 1))) r = uint16_t(lo + 1);
  return sign | r;
}

TEST(Dtypes, EveryHalfWidensExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = to_float(half{uint16_t(h)});
    const double want = ref_half_value(uint16_t(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(double(got), want) << h;
      ASSERT_EQ(std::signbit(got), bool(h & 0x8000)) << h;
    }
  }
}

TEST(Dtypes, HalfNarrowingRoundsToNearestEven) {
  std::vector<float> samples = {0.0f, -0.0f, 65504.0f, 65519.996f, 65520.0f, 1e10f, -1e-10f,
                                std::numeric_limits<float>::infinity(), 5.9604645e-8f, 2.9802322e-8f,
                                2.9802326e-8f, 6.1035156e-5f, 6.1035153e-5f, 1.0e-45f};
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // every finite half, the midpoint above, and neighbours
    const double v = ref_half_value(uint16_t(h)), next = ref_half_value(uint16_t(h + 1));
    const float mid = float((v + next) / 2);  // exact in float
    samples.insert(samples.end(), {float(v), mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)});
  }
  std::mt19937 gen(3);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t u = gen();
    float f;
    std::memcpy(&f, &u, 4);
    samples.push_back(f);
  }
  for (float f : samples) {
    for (float s : {f, -f}) {
      const uint16_t got = from_float<half>(s).bits, want = ref_float_to_half(s);
      if (std::isnan(s)) {
        ASSERT_EQ(got & 0x7fff, 0x7e00) << s;
      } else {
        ASSERT_EQ(got, want) << "f=" << s;
      }
    }
  }
}

TEST(Dtypes, BFloat16RoundTripsAndRoundsToNearestEven) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = to_float(bfloat16{uint16_t(b)});
    uint32_t u;
    std::memcpy(&u, &f, 4);
    ASSERT_EQ(u, b << 16);
    if (!std::isnan(f)) ASSERT_EQ(from_float<bfloat16>(f).bits, b);
  }
  EXPECT_EQ(from_float<bfloat16>(1.0f + 1.0f / 256).bits, 0x3f80);  // tie -> even (down)
  EXPECT_EQ(from_float<bfloat16>(1.0f + 3.0f / 256).bits, 0x3f82);  // tie -> even (up)
  EXPECT_EQ(from_float<bfloat16>(std::nanf("")).bits, 0x7fc0);
  EXPECT_EQ(from_float<bfloat16>(3.4e38f).bits, 0x7f80);  // rounds up to inf
}

TEST(Parallel, CoversTheRangeOnce) {
  for (int64_t n : {0, 1, 5, 100, 10007})
    for (int64_t grain : {1, 3, 64, 100000}) {
      std::vector<int> hits(static_cast<size_t>(n), 0);
      parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) ++hits[size_t(i)];
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)], 1) << n << " " << grain;
    }
}

}  // namespace
}  // namespace kbit::core
