#include "core/codebooks.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kbit::core {

bool parse_quant_type(std::string_view name, QuantType* out) {
  if (name == "nf4") {
    *out = QuantType::NF4;
    return true;
  }
  if (name == "fp4") {
    *out = QuantType::FP4;
    return true;
  }
  return false;
}

const std::array<float, 16>& code_4bit(QuantType type) {
  static const std::array<float, 16> nf4 = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
      -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
      0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
      0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
  static const std::array<float, 16> fp4 = [] {
    const float magnitudes[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
    std::array<float, 16> c{};
    for (int i = 0; i < 8; ++i) {
      c[i] = magnitudes[i] / 12.0f;
      c[i + 8] = -magnitudes[i] / 12.0f;
    }
    return c;
  }();
  return type == QuantType::NF4 ? nf4 : fp4;
}

const std::array<float, 256>& dynamic_map_signed() {
  static const std::array<float, 256> map = [] {
    // FORMAT.md: for i = 0..6, 2^i + 1 points evenly spaced in [0.1, 1], their 2^i midpoints
    // scaled by 10^(i-6), both signs; plus 0 and 1. All in float32 as bitsandbytes computes it:
    // torch.linspace on the CPU (start + step * p in the lower half, end - step * (steps-1-p) in
    // the upper, each a fused multiply-add, rounded once), the midpoints (a + b) / 2, then times
    // the float nearest to 10^(i-6). Unfused, 42 of the 256 values differ; checked against q8.code.
    static const float kScale[7] = {1e-6f, 1e-5f, 1e-4f, 1e-3f, 1e-2f, 1e-1f, 1.0f};
    std::vector<float> values;
    for (int i = 0; i < 7; ++i) {
      const int points = (1 << i) + 1;
      const float step = (1.0f - 0.1f) / float(points - 1);
      std::vector<float> lin(points);
      for (int p = 0; p < points; ++p)
        lin[p] = p < points / 2 ? std::fma(step, float(p), 0.1f)
                                : std::fma(-step, float(points - 1 - p), 1.0f);
      for (int p = 0; p + 1 < points; ++p) {
        const float mid = (lin[p] + lin[p + 1]) / 2.0f;
        values.push_back(kScale[i] * mid);
        values.push_back(-(kScale[i] * mid));
      }
    }
    values.push_back(0.0f);
    values.push_back(1.0f);
    std::sort(values.begin(), values.end());
    std::array<float, 256> out{};
    std::copy(values.begin(), values.end(), out.begin());
    return out;
  }();
  return map;
}

uint8_t encode_4bit(float x, QuantType type) {
  return type == QuantType::NF4 ? encode_nf4(x) : encode_fp4(x);
}

}  // namespace kbit::core
