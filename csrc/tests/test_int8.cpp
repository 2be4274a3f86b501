// LLM.int8(): row-wise quantization with outliers (bitsandbytes' entry-wise rule for row_stats)
// and the int8 GEMM with fused dequantization, against plain scalar references.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/int8_gemm.h"
#include "core/int8_gemm_vnni.h"
#include "core/int8_rowwise.h"
#include "test_util.h"

namespace kbit::core {
namespace {

template <typename T>
struct RefQuant {
  std::vector<uint8_t> outlier;
  std::vector<int8_t> q;
  std::vector<float> stats;
};

template <typename T>
RefQuant<T> ref_quant(const std::vector<float>& a, int64_t rows, int64_t cols, float threshold) {
  const float t = threshold > 0 ? to_float(from_float<T>(threshold)) : INFINITY;
  auto is_out = [&](float x) { return threshold > 0 && std::fabs(x) >= t; };  // false for NaN
  RefQuant<T> r;
  r.outlier.assign(static_cast<size_t>(cols), 0);
  r.q.assign(static_cast<size_t>(rows * cols), 0);
  r.stats.assign(static_cast<size_t>(rows), 0.0f);
  for (int64_t i = 0; i < rows * cols; ++i)
    if (is_out(a[size_t(i)])) r.outlier[size_t(i % cols)] = 1;
  for (int64_t m = 0; m < rows; ++m) {
    float s = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      const float x = a[size_t(m * cols + c)];
      if (!is_out(x) && std::fabs(x) > s) s = std::fabs(x);
    }
    r.stats[size_t(m)] = s;
    for (int64_t c = 0; c < cols; ++c) {
      const float x = a[size_t(m * cols + c)];
      int8_t v = 0;
      if (!r.outlier[size_t(c)] && !is_out(x) && s > 0 && !std::isnan(x))
        v = int8_t(std::nearbyint(x * (127.0f * (1.0f / s))));
      r.q[size_t(m * cols + c)] = v;
    }
  }
  return r;
}

template <typename T>
class Int8Rowwise : public ::testing::Test {};
using Dtypes = ::testing::Types<float, half, bfloat16>;
TYPED_TEST_SUITE(Int8Rowwise, Dtypes);

template <typename T>
void check_quant(int64_t rows, int64_t cols, float threshold, std::vector<float> af) {
  SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols) + " t=" + std::to_string(threshold));
  const auto a = testing::convert<T>(af);
  const auto aw = testing::widen(a);
  const auto ref = ref_quant<T>(aw, rows, cols, threshold);
  std::vector<uint8_t> mask(static_cast<size_t>(cols), 7);
  std::vector<int8_t> q(static_cast<size_t>(rows * cols), 99);
  std::vector<float> stats(static_cast<size_t>(rows), -1.0f);
  find_outlier_columns<T>(a.data(), rows, cols, threshold, mask.data());
  EXPECT_EQ(mask, ref.outlier);
  int8_vectorwise_quant<T>(a.data(), rows, cols, threshold, mask.data(), q.data(), stats.data());
  EXPECT_EQ(stats, ref.stats);
  EXPECT_EQ(q, ref.q);
}

TYPED_TEST(Int8Rowwise, MatchesReferenceWithAndWithoutOutliers) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {1, 130}, {3, 7}, {64, 128}, {17, 1000}}) {
    auto a = testing::random_normal(rows * cols, uint32_t(rows * 31 + cols), 2.0f);
    // Plant outliers; in row 0, put the largest regular value in an outlier column.
    a[size_t(cols / 2)] = 3.5f;
    if (rows > 1) a[size_t(cols + cols / 2)] = -9.0f;
    if (rows > 2) a[size_t(2 * cols)] = 6.0f;  // exactly the threshold: an outlier
    for (float t : {0.0f, 6.0f, 3.0f}) check_quant<TypeParam>(rows, cols, t, a);
  }
}

TYPED_TEST(Int8Rowwise, ZeroRowsNaNAndEmpty) {
  std::vector<float> a = {0, 0, 0, 0, 1, std::numeric_limits<float>::quiet_NaN(), -2, 0.5f};
  check_quant<TypeParam>(2, 4, 0.0f, a);
  check_quant<TypeParam>(2, 4, 1.5f, a);
  std::vector<int8_t> q(1, 5);
  std::vector<float> stats(3, -1.0f);
  int8_vectorwise_quant<TypeParam>(nullptr, 3, 0, 6.0f, nullptr, q.data(), stats.data());
  EXPECT_EQ(stats, std::vector<float>(3, 0.0f));
  int8_vectorwise_quant<TypeParam>(nullptr, 0, 5, 6.0f, nullptr, q.data(), stats.data());
  EXPECT_EQ(q[0], 5);
}

TEST(Int8RowwiseConventions, RoundsHalfToEven) {
  // stats 127: scale exactly 1, so x is the scaled value itself.
  std::vector<float> a = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -126.5f, 3.4999998f};
  std::vector<int8_t> q(a.size());
  float stats;
  int8_vectorwise_quant<float>(a.data(), 1, int64_t(a.size()), 0.0f, nullptr, q.data(), &stats);
  EXPECT_EQ(stats, 127.0f);
  EXPECT_EQ(q, (std::vector<int8_t>{127, 0, 2, 2, 0, -2, -126, 3}));
}

// bitsandbytes (torch's 127.0 / t is reciprocal-then-multiply) rounds x = stats / 2 here to 64:
// 127 * (1 / 3.76171875) * 1.880859375 = 63.500004, while 127 / 3.76171875 gives 63.499996.
TEST(Int8RowwiseConventions, ScaleIsReciprocalThenMultiply) {
  const std::vector<float> a = {3.76171875f, 1.880859375f, -1.880859375f};
  std::vector<int8_t> q(3);
  float stats;
  const auto h = testing::convert<half>(a);
  int8_vectorwise_quant<half>(h.data(), 1, 3, 0.0f, nullptr, q.data(), &stats);
  EXPECT_EQ(q, (std::vector<int8_t>{127, 64, -64}));
}

TEST(Int8RowwiseConventions, ThresholdIsRoundedToTheInputType) {
  // 6.001 rounds to 6.0 in half, so a half 6.0 is an outlier; in float it is not.
  std::vector<float> a = {6.0f, 1.0f};
  uint8_t mask[2];
  const auto h = testing::convert<half>(a);
  find_outlier_columns<half>(h.data(), 1, 2, 6.001f, mask);
  EXPECT_EQ(mask[0], 1);
  find_outlier_columns<float>(a.data(), 1, 2, 6.001f, mask);
  EXPECT_EQ(mask[0], 0);
}

template <typename T>
class Int8Linear : public ::testing::Test {};
TYPED_TEST_SUITE(Int8Linear, Dtypes);

template <typename T>
using LinearFn = void (*)(const int8_t*, const int8_t*, const float*, const float*, const T*, int64_t, int64_t,
                          int64_t, T*);

template <typename T>
void check_linear(int64_t M, int64_t N, int64_t K, bool with_bias, uint32_t seed,
                  LinearFn<T> linear = &int8_linear<T>) {
  SCOPED_TRACE(std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K));
  std::mt19937 gen(seed);
  std::vector<int8_t> A(static_cast<size_t>(M * K)), W(static_cast<size_t>(N * K));
  for (auto& v : A) v = int8_t(int(gen() % 256) - 128);
  for (auto& v : W) v = int8_t(int(gen() % 256) - 128);
  std::vector<float> as(static_cast<size_t>(M)), ws(static_cast<size_t>(N));
  for (auto& v : as) v = 0.1f + float(gen() % 1000) / 100.0f;
  for (auto& v : ws) v = 0.1f + float(gen() % 1000) / 300.0f;
  const auto bias = testing::convert<T>(testing::random_normal(N, seed + 1));
  std::vector<T> C(static_cast<size_t>(M * N));
  linear(A.data(), W.data(), as.data(), ws.data(), with_bias ? bias.data() : nullptr, M, N, K, C.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int64_t(A[size_t(m * K + k)]) * W[size_t(n * K + k)];
      float v = float(acc) * (as[size_t(m)] * ws[size_t(n)]) * (1.0f / 16129.0f);
      if (with_bias) v += to_float(bias[size_t(n)]);
      ASSERT_EQ(to_float(C[size_t(m * N + n)]), to_float(from_float<T>(v))) << m << "," << n;
    }
}

TYPED_TEST(Int8Linear, MatchesExactReference) {
  uint32_t seed = 5;
  for (int64_t M : {1, 2, 3, 65})
    for (int64_t N : {1, 2, 3, 33, 64})
      for (int64_t K : {0, 1, 7, 16, 100, 1031}) check_linear<TypeParam>(M, N, K, (seed++) % 2 == 0, seed);
}

// The VNNI kernel (few rows, AVX-512 VNNI CPUs) gives the reference's bits: K tails shorter than
// one 64-byte piece, -128 in A and W, every row count it takes.
TYPED_TEST(Int8Linear, VnniMatchesExactReference) {
  if (!int8_linear_vnni_applies(1, 64)) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  uint32_t seed = 11;
  for (int64_t M : {1, 2, 3, 5, 8, 13, 16, 24, 32})
    for (int64_t N : {1, 3, 130})
      for (int64_t K : {1, 63, 64, 100, 4104})
        check_linear<TypeParam>(M, N, K, (seed++) % 2 == 0, seed, &int8_linear_vnni<TypeParam>);
}

TEST(Int8LinearConventions, VnniLanesDoNotOverflow) {
  if (!int8_linear_vnni_applies(1, 64)) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  // The largest K it takes, with the largest products of the offset form: (127 + 128) * -128.
  const int64_t M = 1, N = 2, K = (int64_t(1) << 20) - 64;
  ASSERT_TRUE(int8_linear_vnni_applies(M, K));
  ASSERT_FALSE(int8_linear_vnni_applies(M, K + 64));
  ASSERT_FALSE(int8_linear_vnni_applies(33, 64));
  std::vector<int8_t> A(static_cast<size_t>(M * K), 127), W(static_cast<size_t>(N * K), -128);
  std::vector<float> as(M, 1.0f), ws(N, 1.0f), C(static_cast<size_t>(M * N));
  int8_linear_vnni<float>(A.data(), W.data(), as.data(), ws.data(), nullptr, M, N, K, C.data());
  for (float c : C) EXPECT_EQ(c, float(int64_t(K) * 127 * -128) * 1.0f * (1.0f / 16129.0f));
}

TEST(Int8LinearConventions, SumsBeyondInt32AreExact) {
  const int64_t M = 2, N = 3, K = 140000;  // 140000 * 128 * 128 > 2^31
  std::vector<int8_t> A(static_cast<size_t>(M * K), -128), W(static_cast<size_t>(N * K), -128);
  std::vector<float> as(M, 127.0f), ws(N, 127.0f), C(static_cast<size_t>(M * N));
  int8_linear<float>(A.data(), W.data(), as.data(), ws.data(), nullptr, M, N, K, C.data());
  for (float c : C) EXPECT_EQ(c, float(int64_t(K) * 16384) * (127.0f * 127.0f) * (1.0f / 16129.0f));
}

}  // namespace
}  // namespace kbit::core
