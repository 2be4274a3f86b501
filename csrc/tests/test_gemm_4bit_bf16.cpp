// gemm_4bit_avx512bf16 (bfloat16 activations, AVX512-BF16 CPUs) against a double-precision
// reference on the weight dequantized and rounded to bfloat16, as its contract says; skipped on
// CPUs without AVX512-BF16.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "core/blockwise_4bit.h"
#include "core/gemm_4bit_avx512bf16.h"
#include "test_util.h"

namespace kbit::core {
namespace {

void check_bf16_gemm(int64_t M, int64_t N, int64_t K, int64_t bs, QuantType type, bool with_bias, uint32_t seed) {
  SCOPED_TRACE(std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + " bs=" + std::to_string(bs));
  const auto W = testing::random_normal(N * K, seed);
  std::vector<uint8_t> packed(static_cast<size_t>((N * K + 1) / 2));
  std::vector<float> absmax(static_cast<size_t>((N * K + bs - 1) / bs));
  quantize_4bit<float>(W.data(), N * K, bs, type, packed.data(), absmax.data());
  std::vector<float> Wd(static_cast<size_t>(N * K));
  dequantize_4bit<float>(packed.data(), absmax.data(), N * K, bs, type, Wd.data());
  const auto A = testing::convert<bfloat16>(testing::random_normal(M * K, seed + 1));
  const auto bias = testing::convert<bfloat16>(testing::random_normal(N, seed + 2));
  std::vector<bfloat16> C(static_cast<size_t>(M * N));
  gemm_4bit_avx512bf16(A.data(), packed.data(), absmax.data(), with_bias ? bias.data() : nullptr, M, N, K, bs, type,
                       C.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = with_bias ? to_float(bias[size_t(n)]) : 0.0, mag = std::fabs(ref);
      for (int64_t k = 0; k < K; ++k) {
        const double w = to_float(from_float<bfloat16>(Wd[size_t(n * K + k)]));
        const double p = double(to_float(A[size_t(m * K + k)])) * w;
        ref += p;
        mag += std::fabs(p);
      }
      // float32 sums (16 lanes of K/16 pair-sums; a generous random-walk bound) plus one rounding
      // to bfloat16. A weight decoded wrong would be off by about mag / K, well above this.
      const double tol = 1.2e-7 * (4.0 * std::sqrt(K / 16.0) + 4.0) * mag + 4e-3 * std::fabs(ref) + 1e-30;
      ASSERT_NEAR(to_float(C[size_t(m * N + n)]), ref, tol) << "C[" << m << "," << n << "]";
    }
}

TEST(Gemm4bitBf16, MatchesBf16Reference) {
  if (!gemm_4bit_avx512bf16_applies(32, 32)) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  uint32_t seed = 41;
  for (auto [M, N, K, bs] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 1, 32, 32}, {1, 37, 256, 64},
                             {3, 17, 96, 64}, {8, 33, 128, 128}, {9, 65, 4096, 64}, {20, 40, 2048, 256},
                             {16, 70, 160, 32}})
    for (QuantType type : {QuantType::NF4, QuantType::FP4})
      check_bf16_gemm(M, N, K, bs, type, (seed++) % 2 == 0, seed);
}

TEST(Gemm4bitBf16, AppliesOnlyToWholeGroups) {
  if (!gemm_4bit_avx512bf16_applies(32, 32)) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  EXPECT_FALSE(gemm_4bit_avx512bf16_applies(48, 64));
  EXPECT_FALSE(gemm_4bit_avx512bf16_applies(64, 16));
  EXPECT_FALSE(gemm_4bit_avx512bf16_applies(64, 96));
  EXPECT_TRUE(gemm_4bit_avx512bf16_applies(4096, 64));
}

}  // namespace
}  // namespace kbit::core
