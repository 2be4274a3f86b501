// The dynamic maps of 8-bit optimizer states for the core tests (kbit.optim.qmaps builds them for the
// optimizers, in torch).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

namespace kbit::core {

// The dynamic maps of bitsandbytes: 2^i (signed) or 2^(i+1) (unsigned) midpoints of evenly spaced
// float32 points in [0.1, 1], scaled by 10^(i-6), plus 0 and 1.
inline std::vector<float> dynamic_map(bool is_signed) {
  std::vector<float> v;
  for (int i = 0; i < 7; ++i) {
    const int points = (is_signed ? (1 << i) : (2 << i)) + 1;
    const float step = 0.9f / float(points - 1);
    std::vector<float> lin(points);
    for (int p = 0; p < points; ++p)
      lin[p] = p < points / 2 ? 0.1f + step * float(p) : 1.0f - step * float(points - 1 - p);
    const float scale = float(std::pow(10.0, i - 6));
    for (int p = 0; p + 1 < points; ++p) {
      const float mid = scale * ((lin[p] + lin[p + 1]) / 2.0f);
      v.push_back(mid);
      if (is_signed) v.push_back(-mid);
    }
  }
  v.push_back(0.0f);
  v.push_back(1.0f);
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace kbit::core
