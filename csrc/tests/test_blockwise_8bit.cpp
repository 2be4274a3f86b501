// 8-bit blockwise quantization with the signed dynamic map against a brute-force reference,
// bitsandbytes' tie rule (even index), the dynamic map itself, and the double-quant offset.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "core/blockwise_8bit.h"
#include "core/codebooks.h"
#include "test_util.h"

namespace kbit::core {
namespace {

template <typename T>
class Blockwise8bit : public ::testing::Test {};
using Dtypes = ::testing::Types<float, half, bfloat16>;
TYPED_TEST_SUITE(Blockwise8bit, Dtypes);

template <typename T>
void check_roundtrip(int64_t n, int64_t bs, uint32_t seed) {
  SCOPED_TRACE("n=" + std::to_string(n) + " blocksize=" + std::to_string(bs));
  const float* code = dynamic_map_signed().data();
  auto xf = testing::random_normal(n, seed, 0.01f);
  const auto x = testing::convert<T>(xf);
  const auto xw = testing::widen(x);
  const int64_t blocks = (n + bs - 1) / bs;
  std::vector<uint8_t> q(static_cast<size_t>(n));
  std::vector<float> absmax(static_cast<size_t>(blocks));
  quantize_blockwise<T>(x.data(), code, n, bs, q.data(), absmax.data());
  for (int64_t b = 0; b < blocks; ++b)
    ASSERT_EQ(absmax[size_t(b)], testing::ref_absmax(xw.data() + b * bs, std::min(bs, n - b * bs)));
  for (int64_t i = 0; i < n; ++i) {
    const float y = xw[size_t(i)] * (1.0f / absmax[size_t(i / bs)]);
    const auto ref = testing::nearest_of(code, 256, y);
    if (ref.margin > 2e-7)  // farther than float32 rounding of the midpoints from a tie
      ASSERT_EQ(q[size_t(i)], ref.index) << "element " << i << " y=" << y;
    else
      ASSERT_TRUE(q[size_t(i)] == ref.index || q[size_t(i)] == ref.runner_up) << "element " << i;
  }
  std::vector<T> out(static_cast<size_t>(n));
  dequantize_blockwise<T>(q.data(), absmax.data(), code, n, bs, out.data());
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(to_float(out[size_t(i)]), to_float(from_float<T>(code[q[size_t(i)]] * absmax[size_t(i / bs)])));
}

TYPED_TEST(Blockwise8bit, MatchesReference) {
  uint32_t seed = 100;
  for (int64_t bs : {32, 64, 256, 1024, 4096, 7})
    for (int64_t n : {1, 2, 63, 256, 257, 5000}) check_roundtrip<TypeParam>(n, bs, seed++);
}

TEST(Blockwise8bitConventions, DynamicMapShape) {
  const auto& m = dynamic_map_signed();
  EXPECT_TRUE(std::is_sorted(m.begin(), m.end()));
  EXPECT_EQ(std::adjacent_find(m.begin(), m.end()), m.end()) << "values are distinct";
  EXPECT_EQ(m[255], 1.0f);
  EXPECT_EQ(std::count(m.begin(), m.end(), 0.0f), 1);
  for (int i = 0; i < 127; ++i) EXPECT_EQ(m[size_t(i)], -m[size_t(254 - i)]) << i;  // symmetric but for 1.0
  EXPECT_FLOAT_EQ(m[254], 0.99296874f);
}

// bitsandbytes' binary search ends on an even index and resolves a midpoint tie towards it.
TEST(Blockwise8bitConventions, TiesGoToTheEvenIndex) {
  const float* code = dynamic_map_signed().data();
  for (int i = 0; i < 255; ++i) {
    const float mid = (code[i] + code[i + 1]) * 0.5f;
    const int even = i % 2 == 0 ? i : i + 1;
    EXPECT_EQ(nearest_code_index(code, mid), even) << "tie between " << i << " and " << i + 1;
    EXPECT_EQ(nearest_code_index(code, std::nextafter(mid, 2.0f)), i + 1);
    EXPECT_EQ(nearest_code_index(code, std::nextafter(mid, -2.0f)), i);
  }
  for (int i = 0; i < 256; ++i) EXPECT_EQ(nearest_code_index(code, code[i]), i);
  EXPECT_EQ(nearest_code_index(code, -5.0f), 0);
  EXPECT_EQ(nearest_code_index(code, 5.0f), 255);
  EXPECT_EQ(nearest_code_index(code, std::numeric_limits<float>::quiet_NaN()), 0);
}

// Large inputs take a bucket table (blockwise_8bit.cpp); it must agree with the plain search on
// every value, including ties, tiny values, negatives and values between buckets.
TEST(Blockwise8bitConventions, LargeInputTableMatchesSearch) {
  const float* code = dynamic_map_signed().data();
  const int64_t bs = 4096, n = (1 << 20) + 3 * bs;
  std::vector<float> x = testing::random_normal(n, 77, 0.2f);
  std::mt19937 gen(5);
  for (int64_t i = 0; i < n; i += bs) x[size_t(i)] = 1.0f;  // absmax 1: scaled values are exact
  int64_t i = 1;
  for (int j = 0; j < 255; ++j) {  // every midpoint and its float neighbours, both signs
    const float mid = (code[j] + code[j + 1]) * 0.5f;
    for (float v : {mid, std::nextafter(mid, 2.0f), std::nextafter(mid, -2.0f), code[j]}) {
      if (i % bs == 0) ++i;
      x[size_t(i++)] = v;
    }
  }
  for (; i < 300000; ++i) {  // log-uniform magnitudes down to 1e-9
    if (i % bs == 0) continue;
    const float mag = std::pow(10.0f, -9.0f * float(gen() % 100000) / 100000.0f);
    x[size_t(i)] = gen() % 2 ? mag : -mag;
  }
  x[size_t(i + 1)] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint8_t> q(static_cast<size_t>(n));
  std::vector<float> absmax(static_cast<size_t>(n / bs + 1));
  quantize_blockwise<float>(x.data(), code, n, bs, q.data(), absmax.data());
  for (int64_t k = 0; k < n; ++k) {
    const float y = x[size_t(k)] * (1.0f / absmax[size_t(k / bs)]);
    ASSERT_EQ(q[size_t(k)], nearest_code_index(code, y)) << "element " << k << " y=" << y;
  }
}

TEST(Blockwise8bitConventions, ZeroBlockAndEmpty) {
  const float* code = dynamic_map_signed().data();
  std::vector<float> x(100, 0.0f);
  std::vector<uint8_t> q(100, 9);
  std::vector<float> absmax(2, -1.0f), out(100, 3.0f);
  quantize_blockwise<float>(x.data(), code, 100, 64, q.data(), absmax.data());
  EXPECT_EQ(absmax[0], 0.0f);
  EXPECT_EQ(absmax[1], 0.0f);
  dequantize_blockwise<float>(q.data(), absmax.data(), code, 100, 64, out.data());
  for (float v : out) EXPECT_EQ(v, 0.0f);
  quantize_blockwise<float>(x.data(), code, 0, 64, q.data(), absmax.data());  // no-op, no crash
}

TEST(Blockwise8bitConventions, DoubleQuantOffsetIsTheRoundedMean) {
  EXPECT_EQ(double_quant_offset(nullptr, 0), 0.0f);
  std::vector<float> a = {1.0f, 2.0f, 3.0f, 6.0f};
  EXPECT_EQ(double_quant_offset(a.data(), 4), 3.0f);
  // Summation in float32 from the left would lose the small terms; the offset keeps them.
  std::vector<float> b(1000, 1e-8f);
  b[0] = 1.0f;
  EXPECT_EQ(double_quant_offset(b.data(), 1000), float(1.0 + 999.0 * double(1e-8f)) * (1.0f / 1000.0f));
}

}  // namespace
}  // namespace kbit::core
