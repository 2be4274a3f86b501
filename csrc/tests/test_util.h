// Shared helpers for the core tests: deterministic inputs, a serial thread backend, and plain
// reference encoders (brute-force nearest code value in double precision).
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/dtypes.h"
#include "core/parallel.h"

namespace kbit::testing {

// While alive, core::parallel_for runs every range on the calling thread.
struct SerialBackend {
  static void run(int64_t b, int64_t e, int64_t, const core::RangeFn& fn) { fn(b, e); }
  SerialBackend() { core::set_parallel_backend(&run); }
  ~SerialBackend() { core::set_parallel_backend(nullptr); }
};

inline std::vector<float> random_normal(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(size_t(std::max<int64_t>(n, 0)));
  for (auto& x : v) x = dist(gen);
  return v;
}

template <typename T>
std::vector<T> convert(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = core::from_float<T>(v[i]);
  return out;
}

template <typename T>
std::vector<float> widen(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = core::to_float(v[i]);
  return out;
}

// Nearest of `count` candidate values to y. `margin` is how much farther the runner-up is; a
// tiny margin means y sits on a decision boundary, where conventions (not this reference) decide.
struct Nearest {
  int index;
  int runner_up;
  double margin;
};
inline Nearest nearest_of(const float* values, int count, double y) {
  int best = 0, second = -1;
  for (int i = 1; i < count; ++i) {
    const double d = std::fabs(y - values[i]);
    if (d < std::fabs(y - values[best])) {
      second = best;
      best = i;
    } else if (second < 0 || d < std::fabs(y - values[second])) {
      second = i;
    }
  }
  return {best, second, std::fabs(y - values[second]) - std::fabs(y - values[best])};
}

// Largest |x|, ignoring NaN, 0 for none.
inline float ref_absmax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    if (std::fabs(x[i]) > m) m = std::fabs(x[i]);
  return m;
}

}  // namespace kbit::testing
