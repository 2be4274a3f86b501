// NF4 / FP4 blockwise quantize + dequantize against a brute-force nearest-value reference, for
// every dtype, sizes around block and byte edges, every blocksize, and the edge conventions.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/blockwise_4bit.h"
#include "test_util.h"

namespace kbit::core {
namespace {

using testing::Nearest;

// Reference index for a scaled value y (bitsandbytes' sign rule for FP4: sign bit when y < 0).
Nearest ref_index(float y, QuantType type) {
  const auto& code = code_4bit(type);
  if (type == QuantType::NF4) return testing::nearest_of(code.data(), 16, y);
  Nearest r = testing::nearest_of(code.data(), 8, std::fabs(y));
  const int sign = y < 0.0f ? 8 : 0;
  return {r.index | sign, r.runner_up | sign, r.margin};
}

int nibble(const std::vector<uint8_t>& packed, int64_t i) {
  return i % 2 ? packed[size_t(i / 2)] & 15 : packed[size_t(i / 2)] >> 4;
}

template <typename T>
bool same_value(T a, T b) {
  if constexpr (std::is_same_v<T, float>) return float_to_bits(a) == float_to_bits(b);
  else return a.bits == b.bits;
}

template <typename T>
class Blockwise4bit : public ::testing::Test {};
using Dtypes = ::testing::Types<float, half, bfloat16>;
TYPED_TEST_SUITE(Blockwise4bit, Dtypes);

template <typename T>
void check_roundtrip(int64_t n, int64_t bs, QuantType type, uint32_t seed, float magnitude = 1.0f) {
  SCOPED_TRACE("n=" + std::to_string(n) + " blocksize=" + std::to_string(bs) +
               (type == QuantType::NF4 ? " nf4" : " fp4") + " magnitude=" + std::to_string(magnitude));
  auto xf = testing::random_normal(n, seed, magnitude);
  for (int64_t i = 0; i < n; ++i) xf[size_t(i)] *= 1.0f + float((i / bs) % 5);  // vary absmax
  const auto x = testing::convert<T>(xf);
  const auto xw = testing::widen(x);
  const int64_t blocks = (n + bs - 1) / bs;
  std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2), 0xAB);
  std::vector<float> absmax(static_cast<size_t>(blocks), -1.0f);
  quantize_4bit<T>(x.data(), n, bs, type, packed.data(), absmax.data());

  const auto& code = code_4bit(type);
  int checked = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t len = std::min(bs, n - b * bs);
    ASSERT_EQ(absmax[size_t(b)], testing::ref_absmax(xw.data() + b * bs, len)) << "block " << b;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float y = xw[size_t(i)] * (1.0f / absmax[size_t(i / bs)]);
    const Nearest ref = ref_index(y, type);
    const int got = nibble(packed, i);
    if (ref.margin > 1e-6) {
      ASSERT_EQ(got, ref.index) << "element " << i << " y=" << y;
      ++checked;
    } else {
      ASSERT_TRUE(got == ref.index || got == ref.runner_up) << "element " << i << " y=" << y;
    }
  }
  if (n % 2) {
    // The padding nibble is the code of 0.0, as bitsandbytes writes it.
    EXPECT_EQ(nibble(packed, n), type == QuantType::NF4 ? 7 : 0);
  }
  EXPECT_GT(checked, n / 2);

  std::vector<T> out(static_cast<size_t>(n));
  dequantize_4bit<T>(packed.data(), absmax.data(), n, bs, type, out.data());
  for (int64_t i = 0; i < n; ++i) {
    const T want = from_float<T>(code[nibble(packed, i)] * absmax[size_t(i / bs)]);
    ASSERT_TRUE(same_value(out[size_t(i)], want)) << "element " << i;
  }
}

TYPED_TEST(Blockwise4bit, MatchesReferenceAcrossSizesAndBlocksizes) {
  uint32_t seed = 1;
  for (QuantType type : {QuantType::NF4, QuantType::FP4})
    for (int64_t bs : {32, 64, 128, 256, 512, 1024, 2048, 4096})
      for (int64_t n : {1, 2, 3, 31, 64, 65, 127, 1000, 4097, 20001})
        check_roundtrip<TypeParam>(n, bs, type, seed++);
}

// Tiny and huge magnitudes: float16 subnormals (and their tables), bfloat16 / float extremes.
TYPED_TEST(Blockwise4bit, TinyAndHugeMagnitudes) {
  for (QuantType type : {QuantType::NF4, QuantType::FP4})
    for (float magnitude : {1e-6f, 3e-5f, 1e3f}) check_roundtrip<TypeParam>(4099, 64, type, 9, magnitude);
}

TYPED_TEST(Blockwise4bit, OddBlocksizeTakesTheSharedBytePath) {
  for (QuantType type : {QuantType::NF4, QuantType::FP4})
    for (int64_t n : {1, 32, 33, 34, 100, 1001}) check_roundtrip<TypeParam>(n, 33, type, 7);
}

TYPED_TEST(Blockwise4bit, EmptyInputTouchesNothing) {
  uint8_t packed = 0xAB;
  float absmax = -1.0f;
  TypeParam x[1] = {from_float<TypeParam>(1.0f)};
  quantize_4bit<TypeParam>(x, 0, 64, QuantType::NF4, &packed, &absmax);
  TypeParam out[1] = {from_float<TypeParam>(5.0f)};
  dequantize_4bit<TypeParam>(&packed, &absmax, 0, 64, QuantType::NF4, out);
  EXPECT_EQ(packed, 0xAB);
  EXPECT_EQ(absmax, -1.0f);
  EXPECT_EQ(to_float(out[0]), 5.0f);
}

TYPED_TEST(Blockwise4bit, ZeroBlockHasZeroAbsmaxAndDequantizesToZero) {
  const int64_t n = 192, bs = 64;
  auto xf = testing::random_normal(n, 3);
  for (int i = 64; i < 128; ++i) xf[size_t(i)] = 0.0f;  // the middle block is all zeros
  const auto x = testing::convert<TypeParam>(xf);
  for (QuantType type : {QuantType::NF4, QuantType::FP4}) {
    std::vector<uint8_t> packed(n / 2);
    std::vector<float> absmax(3);
    quantize_4bit<TypeParam>(x.data(), n, bs, type, packed.data(), absmax.data());
    EXPECT_EQ(absmax[1], 0.0f);
    for (int i = 32; i < 64; ++i) EXPECT_EQ(packed[size_t(i)], 0) << "bitsandbytes writes index 0";
    std::vector<TypeParam> out(n);
    dequantize_4bit<TypeParam>(packed.data(), absmax.data(), n, bs, type, out.data());
    for (int i = 64; i < 128; ++i) EXPECT_EQ(to_float(out[size_t(i)]), 0.0f) << i;
  }
}

TYPED_TEST(Blockwise4bit, NaNIsSkippedByAbsmaxAndEncodesAsIndexZero) {
  const int64_t n = 128, bs = 64;
  auto xf = testing::random_normal(n, 4);
  xf[5] = std::numeric_limits<float>::quiet_NaN();
  for (int i = 64; i < 128; ++i) xf[size_t(i)] = std::numeric_limits<float>::quiet_NaN();
  const auto x = testing::convert<TypeParam>(xf);
  const auto xw = testing::widen(x);
  std::vector<uint8_t> packed(n / 2);
  std::vector<float> absmax(2);
  quantize_4bit<TypeParam>(x.data(), n, bs, QuantType::NF4, packed.data(), absmax.data());
  float m = 0.0f;
  for (int i = 0; i < 64; ++i)
    if (i != 5) m = std::max(m, std::fabs(xw[size_t(i)]));
  EXPECT_EQ(absmax[0], m);
  EXPECT_EQ(absmax[1], 0.0f);
  EXPECT_EQ(nibble(packed, 5), 0);
  for (int i = 64; i < 128; ++i) EXPECT_EQ(nibble(packed, i), 0);
}

// Values exactly on a decision boundary round down (to the lower index), one ulp above round up;
// for FP4 the sign comes from x < 0, so -0.0 is index 0.
TEST(Blockwise4bitConventions, BoundariesRoundDown) {
  std::vector<float> x = {1.0f};  // absmax 1, scale exactly 1
  for (float b : kNF4Boundaries) {
    x.push_back(b);
    x.push_back(std::nextafter(b, 2.0f));
  }
  std::vector<uint8_t> packed((x.size() + 1) / 2);
  float absmax;
  quantize_4bit<float>(x.data(), int64_t(x.size()), 64, QuantType::NF4, packed.data(), &absmax);
  ASSERT_EQ(absmax, 1.0f);
  for (int i = 0; i < 15; ++i) {
    EXPECT_EQ(nibble(packed, 1 + 2 * i), i) << "on boundary " << i;
    EXPECT_EQ(nibble(packed, 2 + 2 * i), i + 1) << "above boundary " << i;
  }

  std::vector<float> y = {1.0f, -0.0f};
  for (float b : kFP4Boundaries) {
    y.push_back(b);
    y.push_back(std::nextafter(b, 2.0f));
    y.push_back(-b);
  }
  std::vector<uint8_t> p4((y.size() + 1) / 2);
  quantize_4bit<float>(y.data(), int64_t(y.size()), 64, QuantType::FP4, p4.data(), &absmax);
  EXPECT_EQ(nibble(p4, 1), 0);
  const int rank_code[8] = {0, 1, 6, 7, 4, 5, 2, 3};  // magnitude rank -> 3-bit pattern
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(nibble(p4, 2 + 3 * i), rank_code[i]) << "on boundary " << i;
    EXPECT_EQ(nibble(p4, 3 + 3 * i), rank_code[i + 1]) << "above boundary " << i;
    EXPECT_EQ(nibble(p4, 4 + 3 * i), 8 | rank_code[i]) << "negative boundary " << i;
  }
}

TEST(Blockwise4bitConventions, ThreadedAndSerialAgree) {
  const int64_t n = (1 << 20) + 37;
  const auto x = testing::convert<bfloat16>(testing::random_normal(n, 11));
  std::vector<uint8_t> p1((n + 1) / 2), p2((n + 1) / 2);
  std::vector<float> a1((n + 63) / 64), a2((n + 63) / 64);
  std::vector<bfloat16> o1(n), o2(n);
  quantize_4bit<bfloat16>(x.data(), n, 64, QuantType::NF4, p1.data(), a1.data());
  dequantize_4bit<bfloat16>(p1.data(), a1.data(), n, 64, QuantType::NF4, o1.data());
  {
    testing::SerialBackend serial;
    quantize_4bit<bfloat16>(x.data(), n, 64, QuantType::NF4, p2.data(), a2.data());
    dequantize_4bit<bfloat16>(p2.data(), a2.data(), n, 64, QuantType::NF4, o2.data());
  }
  EXPECT_EQ(p1, p2);
  EXPECT_EQ(a1, a2);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(o1[size_t(i)].bits, o2[size_t(i)].bits) << i;
}

TEST(Blockwise4bitConventions, RangeDequantMatchesFullDequant) {
  const int64_t n = 1001, bs = 64;
  const auto x = testing::random_normal(n, 12);
  std::vector<uint8_t> packed((n + 1) / 2);
  std::vector<float> absmax((n + bs - 1) / bs), full(n);
  quantize_4bit<float>(x.data(), n, bs, QuantType::FP4, packed.data(), absmax.data());
  dequantize_4bit<float>(packed.data(), absmax.data(), n, bs, QuantType::FP4, full.data());
  const std::pair<int64_t, int64_t> ranges[] = {{0, 1},     {1, 2},       {3, 130}, {63, 65},
                                                {64, 1001}, {999, 1001}, {5, 5}};
  for (auto [b, e] : ranges) {
    std::vector<float> part(static_cast<size_t>(e - b) + 1, -7.0f);
    dequantize_4bit_range<float>(packed.data(), absmax.data(), b, e, bs, QuantType::FP4, part.data());
    for (int64_t i = b; i < e; ++i) ASSERT_EQ(part[size_t(i - b)], full[size_t(i)]) << b << ".." << e;
    EXPECT_EQ(part[size_t(e - b)], -7.0f) << "wrote past the range";
  }
}

}  // namespace
}  // namespace kbit::core
