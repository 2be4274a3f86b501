// The table lookup of core/code_lookup.h against the search tree of the CPU reference
// (nearest_in_tree): the same index for every float probed, for the dynamic maps and for codes of
// other shapes (duplicates, zeros of both signs, infinities), whichever chunks fill the table.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/code_lookup.h"
#include "core/optim_adam.h"
#include "tests/dynamic_map.h"

namespace kbit::core {
namespace {

struct Lookup {
  std::vector<float> mid = std::vector<float>(256), tree = std::vector<float>(256);
  std::vector<uint32_t> table = std::vector<uint32_t>(kLookupSlots);
  explicit Lookup(const std::vector<float>& code, int chunk = kLookupBuckets) {
    for (int k = 0; k < 256; ++k) mid[k] = code_midpoint(code.data(), k);
    code_search_tree(code.data(), tree.data());
    for (int first = 0; first < kLookupSlots; first += chunk)
      code_lookup_fill(mid.data(), table.data(), first, chunk);
  }
};

std::vector<float> probes(const Lookup& l, uint32_t seed) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> xs = {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                           -std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::max(),
                           -std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                           -std::numeric_limits<float>::denorm_min(), 1.0f, -1.0f, 2.0f, -2.0f};
  for (int k = 0; k < 255; ++k)
    for (float m : {l.mid[k], l.tree[k + 1]})
      for (float x : {m, std::nextafter(m, inf), std::nextafter(m, -inf)}) xs.push_back(x), xs.push_back(-x);
  for (int neg = 0; neg < 2; ++neg)
    for (int b = 0; b < kLookupBuckets; ++b) {
      float lo, hi;
      lookup_bucket_range(neg, b, lo, hi);
      for (float x : {lo, hi, std::nextafter(lo, -inf), std::nextafter(hi, inf)}) xs.push_back(x);
    }
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.5f, 1.5f), expo(-45.0f, 5.0f);
  for (int i = 0; i < 200000; ++i) {
    xs.push_back(uni(rng));
    xs.push_back((i & 1 ? -1.0f : 1.0f) * std::pow(10.0f, expo(rng)));
    xs.push_back(bits_to_float(uint32_t(rng())));  // any bit pattern, NaNs included
  }
  return xs;
}

void expect_same_as_tree(const std::vector<float>& code, uint32_t seed) {
  const Lookup l(code);
  for (int chunk : {1, 12, 24}) EXPECT_EQ(Lookup(code, chunk).table, l.table) << "chunk " << chunk;
  for (float x : probes(l, seed))
    ASSERT_EQ(code_lookup(l.table.data(), l.mid.data(), x), nearest_in_tree(l.tree.data(), x))
        << "x = " << x << " (bits " << std::hex << float_to_bits(x) << ")";
}

TEST(CodeLookup, DynamicMapsMatchTree) {
  expect_same_as_tree(dynamic_map(true), 1);
  expect_same_as_tree(dynamic_map(false), 2);
}

// The fast path covers the dynamic maps: no entry flagged but the last bucket of each sign, so every
// normalized state (|x| <= 1) is rounded by the table alone.
TEST(CodeLookup, DynamicMapsNeverSearch) {
  for (bool is_signed : {true, false}) {
    const Lookup l(dynamic_map(is_signed));
    for (int s = 0; s < kLookupSlots; ++s) {
      const bool last = s % kLookupBuckets == kLookupBuckets - 1;
      EXPECT_EQ((l.table[s] & kLookupFlag) != 0, last) << "signed " << is_signed << " slot " << s;
    }
  }
}

TEST(CodeLookup, OtherCodesMatchTree) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> codes;
  std::vector<float> c(256);
  for (auto& x : c) x = uni(rng);
  codes.push_back(c);  // uniform
  for (int k = 0; k < 256; ++k) c[k] = -1.0f + 2.0f * float(k) / 255.0f;
  codes.push_back(c);  // linear
  for (auto& x : c) x = std::round(uni(rng) * 4.0f) / 4.0f;
  codes.push_back(c);  // many duplicates, zeros
  for (int k = 0; k < 256; ++k) c[k] = k < 100 ? -0.0f : (k < 150 ? 0.0f : 1e-30f * float(k));
  codes.push_back(c);  // -0 / +0 runs, tiny values
  for (int k = 0; k < 256; ++k) c[k] = std::ldexp(1.0f, k / 2 - 100) * (k % 2 ? 1.5f : 1.0f);
  codes.push_back(c);  // spans far below and above the table's window
  for (auto& x : c) x = uni(rng) * 1e-3f;
  c.front() = -inf;
  c.back() = inf;
  codes.push_back(c);  // infinite ends
  for (auto& x : c) x = 0.5f;
  codes.push_back(c);  // constant
  for (size_t i = 0; i < codes.size(); ++i) {
    std::sort(codes[i].begin(), codes[i].end());
    SCOPED_TRACE(i);
    expect_same_as_tree(codes[i], 10 + uint32_t(i));
  }
}

}  // namespace
}  // namespace kbit::core
