// The core Adam / AdamW kernels (core/optim_adam.h) against a plain scalar reference written here
// from the definitions: Adam in double precision, and 8-bit states decoded / re-encoded by a linear
// search for the nearest code value.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/dtypes.h"
#include "core/optim_adam.h"
#include "tests/dynamic_map.h"

namespace kbit::core {
namespace {

int nearest_linear(const std::vector<float>& code, float x) {
  int best = 0;
  for (int k = 1; k < 256; ++k)
    if (std::fabs(code[k] - x) < std::fabs(code[best] - x)) best = k;
  return best;
}

struct Ref {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, lr = 1e-2, wd = 0.1;
  bool decoupled = true;
  void step(double& p, double g, double& m, double& v, int t) const {
    if (decoupled) p *= 1.0 - lr * wd;
    else g += wd * p;
    m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g * g;
    const double bc1 = 1 - std::pow(beta1, t), bc2 = 1 - std::pow(beta2, t);
    p -= lr / bc1 * m / (std::sqrt(v) / std::sqrt(bc2) + eps);
  }
  AdamConfig config(int t) const { return make_adam_config(beta1, beta2, eps, t, lr, wd, 1.0, decoupled); }
};

TEST(OptimAdam, Update32bitMatchesDoubleReference) {
  for (bool decoupled : {true, false}) {
    Ref ref;
    ref.decoupled = decoupled;
    const int n = 1000;
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    std::vector<float> p(n), m(n, 0), v(n, 0);
    std::vector<double> rp(n), rm(n, 0), rv(n, 0);
    for (int i = 0; i < n; ++i) rp[i] = p[i] = nd(rng);
    for (int t = 1; t <= 10; ++t) {
      std::vector<float> g(n);
      for (auto& x : g) x = nd(rng);
      adam_update_32bit<float>(p.data(), g.data(), m.data(), v.data(), n, ref.config(t));
      for (int i = 0; i < n; ++i) ref.step(rp[i], g[i], rm[i], rv[i], t);
    }
    for (int i = 0; i < n; ++i) {
      ASSERT_NEAR(p[i], rp[i], 1e-5 * (1 + std::fabs(rp[i]))) << i;
      ASSERT_NEAR(m[i], rm[i], 1e-5) << i;
    }
  }
}

// One 8-bit step of the kernel against the reference: decode, update in double, re-encode.
template <typename T>
void check_8bit_step(int64_t n, bool decoupled) {
  Ref ref;
  ref.decoupled = decoupled;
  const auto code1 = dynamic_map(true), code2 = dynamic_map(false);
  ASSERT_EQ(code1.size(), 256u);
  ASSERT_EQ(code2.size(), 256u);
  std::mt19937 rng{static_cast<unsigned>(n)};
  std::normal_distribution<float> nd;
  const int64_t blocks = (n + 255) / 256;
  std::vector<T> p(n), g(n);
  std::vector<uint8_t> q1(n), q2(n);
  std::vector<float> a1(blocks), a2(blocks);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = from_float<T>(nd(rng));
    q1[i] = uint8_t(rng() % 256);
    q2[i] = uint8_t(128 + rng() % 128);
  }
  for (int64_t b = 0; b < blocks; ++b) {
    a1[b] = 0.1f * std::fabs(nd(rng));
    a2[b] = 0.01f * std::fabs(nd(rng));
  }
  if (blocks > 1) a1[1] = a2[1] = 0.0f;  // a block whose states are all zero
  const int t = 7;
  std::vector<double> rp(n), rm(n), rv(n);
  for (int64_t i = 0; i < n; ++i) {
    g[i] = from_float<T>(nd(rng));
    rp[i] = to_float(p[i]);
    rm[i] = double(code1[q1[i]]) * a1[i / 256];
    rv[i] = double(code2[q2[i]]) * a2[i / 256];
    if (blocks > 1 && i / 256 == 1) g[i] = from_float<T>(0.0f);
  }
  for (int64_t i = 0; i < n; ++i) ref.step(rp[i], to_float(g[i]), rm[i], rv[i], t);

  adam_update_8bit_blockwise<T>(p.data(), g.data(), q1.data(), q2.data(), a1.data(), a2.data(), code1.data(),
                                code2.data(), n, ref.config(t));

  const float tol_p = sizeof(T) == 4 ? 1e-5f : 1e-2f;
  for (int64_t b = 0; b < blocks; ++b) {
    double max1 = 0, max2 = 0;
    for (int64_t i = b * 256; i < std::min(n, b * 256 + 256); ++i) {
      max1 = std::max(max1, std::fabs(rm[i]));
      max2 = std::max(max2, std::fabs(rv[i]));
    }
    ASSERT_NEAR(a1[b], max1, 1e-6 * max1 + 1e-30) << "block " << b;
    ASSERT_NEAR(a2[b], max2, 1e-6 * max2 + 1e-30) << "block " << b;
    for (int64_t i = b * 256; i < std::min(n, b * 256 + 256); ++i) {
      ASSERT_NEAR(to_float(p[i]), rp[i], tol_p * (1 + std::fabs(rp[i]))) << i;
      // The nearest code value; a reference value within float rounding of a boundary may go either way.
      const int e1 = nearest_linear(code1, max1 > 0 ? float(rm[i] / max1) : 0.0f);
      const int e2 = nearest_linear(code2, max2 > 0 ? float(rv[i] / max2) : 0.0f);
      ASSERT_LE(std::abs(int(q1[i]) - e1), 1) << i;
      ASSERT_LE(std::abs(int(q2[i]) - e2), 1) << i;
      if (q1[i] != e1) {
        const float x = float(rm[i] / max1), mid = 0.5f * (code1[q1[i]] + code1[e1]);
        ASSERT_NEAR(x, mid, 1e-6f * std::fabs(mid) + 1e-12f) << i;
      }
      if (q2[i] != e2) {
        const float x = float(rv[i] / max2), mid = 0.5f * (code2[q2[i]] + code2[e2]);
        ASSERT_NEAR(x, mid, 1e-6f * std::fabs(mid) + 1e-12f) << i;
      }
    }
  }
  if (blocks > 1 && decoupled) {  // zero states and zero gradient stay zero (L2 decay would not)
    EXPECT_EQ(a1[1], 0.0f);
    EXPECT_EQ(code1[q1[256]], 0.0f);
    EXPECT_EQ(code2[q2[256]], 0.0f);
  }
}

TEST(OptimAdam, Update8bitBlockwiseFloat) {
  for (int64_t n : {1, 255, 256, 257, 1000, 5000}) {
    check_8bit_step<float>(n, true);
    check_8bit_step<float>(n, false);
  }
}

TEST(OptimAdam, Update8bitBlockwiseHalfAndBfloat16) {
  check_8bit_step<half>(1000, true);
  check_8bit_step<bfloat16>(1000, true);
}

TEST(OptimAdam, SearchTreeHoldsEachMidpointOnce) {
  std::vector<int> seen(255, 0);
  for (int i = 1; i < 256; ++i) seen[tree_node_midpoint(i)]++;
  for (int k = 0; k < 255; ++k) EXPECT_EQ(seen[k], 1) << k;
  EXPECT_EQ(tree_node_midpoint(1), 127);
  EXPECT_EQ(tree_node_midpoint(2), 63);
  EXPECT_EQ(tree_node_midpoint(3), 191);
  EXPECT_EQ(tree_node_midpoint(255), 254);
}

TEST(OptimAdam, NearestInTreeIsNearest) {
  const auto code = dynamic_map(true);
  float tree[256];
  code_search_tree(code.data(), tree);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
  for (int k = 0; k < 256; ++k) EXPECT_EQ(nearest_in_tree(tree, code[k]), k);
  for (int i = 0; i < 20000; ++i) {
    const float x = i % 2 ? ud(rng) : ud(rng) * 1e-4f;
    const int got = nearest_in_tree(tree, x);
    EXPECT_LE(std::fabs(code[got] - x), std::fabs(code[nearest_linear(code, x)] - x)) << x;
  }
}

}  // namespace
}  // namespace kbit::core
