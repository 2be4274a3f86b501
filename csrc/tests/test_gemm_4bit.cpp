// gemm_4bit against a double-precision reference on the dequantized weight, for shapes where K
// is not a multiple of the blocksize (blocks straddle rows), odd sizes, and with / without bias.
#include <gtest/gtest.h>

#include <cmath>

#include "core/blockwise_4bit.h"
#include "core/gemm_4bit.h"
#include "test_util.h"

namespace kbit::core {
namespace {

template <typename T>
class Gemm4bit : public ::testing::Test {};
using Dtypes = ::testing::Types<float, half, bfloat16>;
TYPED_TEST_SUITE(Gemm4bit, Dtypes);

// Relative precision of T (one unit in the last place at 1.0).
template <typename T>
double eps() {
  return std::is_same_v<T, float> ? 1.2e-7 : std::is_same_v<T, half> ? 9.8e-4 : 7.9e-3;
}

template <typename T>
void check_gemm(int64_t M, int64_t N, int64_t K, int64_t bs, QuantType type, bool with_bias, uint32_t seed) {
  SCOPED_TRACE(std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + " bs=" +
               std::to_string(bs));
  const auto W = testing::random_normal(N * K, seed);
  std::vector<uint8_t> packed(static_cast<size_t>((N * K + 1) / 2));
  std::vector<float> absmax(static_cast<size_t>((N * K + bs - 1) / bs) + 1);
  quantize_4bit<float>(W.data(), N * K, bs, type, packed.data(), absmax.data());
  std::vector<float> Wd(static_cast<size_t>(N * K));
  dequantize_4bit<float>(packed.data(), absmax.data(), N * K, bs, type, Wd.data());

  const auto A = testing::convert<T>(testing::random_normal(M * K, seed + 1));
  const auto Aw = testing::widen(A);
  const auto bias = testing::convert<T>(testing::random_normal(N, seed + 2));
  std::vector<T> C(static_cast<size_t>(M * N));
  gemm_4bit<T>(A.data(), packed.data(), absmax.data(), with_bias ? bias.data() : nullptr, M, N, K, bs, type,
               C.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = with_bias ? to_float(bias[size_t(n)]) : 0.0, mag = std::fabs(ref);
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(Aw[size_t(m * K + k)]) * Wd[size_t(n * K + k)];
        ref += p;
        mag += std::fabs(p);
      }
      // float32 accumulation (8 lanes of K/8 terms; a generous random-walk bound) plus one
      // rounding to T. One wrong weight would be off by about mag / K, well above this for K <= 4096.
      const double tol = 6e-8 * (4.0 * std::sqrt(K / 8.0) + 4.0) * mag + eps<T>() * std::fabs(ref) + 1e-30;
      ASSERT_NEAR(to_float(C[size_t(m * N + n)]), ref, tol) << "C[" << m << "," << n << "]";
    }
}

TYPED_TEST(Gemm4bit, MatchesReference) {
  uint32_t seed = 21;
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 64}, {1, 37, 256}, {2, 16, 64},
                         {3, 17, 37}, {5, 33, 100}, {17, 18, 130}, {1, 40, 4096}})
    for (QuantType type : {QuantType::NF4, QuantType::FP4}) {
      check_gemm<TypeParam>(M, N, K, 64, type, seed % 2 == 0, seed);
      check_gemm<TypeParam>(M, N, K, 32, type, seed % 2 == 1, seed + 100);
      ++seed;
    }
}

TEST(Gemm4bitConventions, EmptyKGivesBiasAndThreadsAgree) {
  std::vector<float> bias = {1.5f, -2.0f, 3.0f}, C(6, 9.0f);
  gemm_4bit<float>(nullptr, nullptr, nullptr, bias.data(), 2, 3, 0, 64, QuantType::NF4, C.data());
  EXPECT_EQ(C, (std::vector<float>{1.5f, -2.0f, 3.0f, 1.5f, -2.0f, 3.0f}));
  gemm_4bit<float>(nullptr, nullptr, nullptr, nullptr, 0, 3, 8, 64, QuantType::NF4, nullptr);  // M = 0

  const int64_t M = 9, N = 300, K = 512;
  const auto W = testing::random_normal(N * K, 1);
  std::vector<uint8_t> packed(N * K / 2);
  std::vector<float> absmax(N * K / 64);
  quantize_4bit<float>(W.data(), N * K, 64, QuantType::NF4, packed.data(), absmax.data());
  const auto A = testing::convert<bfloat16>(testing::random_normal(M * K, 2));
  std::vector<bfloat16> C1(M * N), C2(M * N);
  const auto nf4 = QuantType::NF4;
  gemm_4bit<bfloat16>(A.data(), packed.data(), absmax.data(), nullptr, M, N, K, 64, nf4, C1.data());
  {
    testing::SerialBackend serial;
    gemm_4bit<bfloat16>(A.data(), packed.data(), absmax.data(), nullptr, M, N, K, 64, nf4, C2.data());
  }
  for (size_t i = 0; i < C1.size(); ++i) ASSERT_EQ(C1[i].bits, C2[i].bits) << i;
}

// A row's result does not depend on the other rows of the batch (same summation order); K = 203
// takes the portable kernel, K = 256 the AVX-512 one where the CPU has it (M = 11: two passes).
class Gemm4bitBatch : public ::testing::TestWithParam<int64_t> {};
INSTANTIATE_TEST_SUITE_P(K, Gemm4bitBatch, ::testing::Values(203, 256));

TEST_P(Gemm4bitBatch, RowsAreBatchInvariant) {
  const int64_t M = 11, N = 21, K = GetParam(), bs = 64;
  const auto W = testing::random_normal(N * K, 8);
  std::vector<uint8_t> packed((N * K + 1) / 2);
  std::vector<float> absmax((N * K + bs - 1) / bs);
  quantize_4bit<float>(W.data(), N * K, bs, QuantType::FP4, packed.data(), absmax.data());
  const auto A = testing::random_normal(M * K, 9);
  const auto bias = testing::random_normal(N, 10);
  std::vector<float> C(M * N), row(N);
  const auto fp4 = QuantType::FP4;
  gemm_4bit<float>(A.data(), packed.data(), absmax.data(), bias.data(), M, N, K, bs, fp4, C.data());
  for (int64_t m = 0; m < M; ++m) {
    gemm_4bit<float>(A.data() + m * K, packed.data(), absmax.data(), bias.data(), 1, N, K, bs, QuantType::FP4,
                     row.data());
    for (int64_t n = 0; n < N; ++n) ASSERT_EQ(row[size_t(n)], C[size_t(m * N + n)]) << m << "," << n;
  }
}

}  // namespace
}  // namespace kbit::core
