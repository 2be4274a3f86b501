#include "core/codebooks.h"

#include <algorithm>
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
    // scaled by 10^(i-6), both signs; plus 0 and 1. Computed in float32 as bitsandbytes does
    // (torch.linspace in float32, midpoints in float32, scale in float32).
    std::vector<float> values;
    for (int i = 0; i < 7; ++i) {
      const int points = (1 << i) + 1;
      std::vector<float> lin(points);
      for (int p = 0; p < points; ++p) {
        // torch.linspace(start, end, steps) float32: start + p * step, mirrored for the upper half
        const float step = (1.0f - 0.1f) / float(points - 1);
        lin[p] = p < points / 2 ? 0.1f + step * float(p) : 1.0f - step * float(points - 1 - p);
      }
      float scale = 1.0f;
      for (int s = i; s < 6; ++s) scale /= 10.0f;
      for (int p = 0; p + 1 < points; ++p) {
        const float mid = (lin[p] + lin[p + 1]) / 2.0f;
        values.push_back(scale * mid);
        values.push_back(-scale * mid);
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
  if (type == QuantType::NF4) {
    // Decision boundaries are the midpoints between adjacent sorted NF4 values.
    const auto& c = code_4bit(QuantType::NF4);
    uint8_t idx = 0;
    for (int i = 0; i < 15; ++i) {
      if (x > 0.5f * (c[i] + c[i + 1])) idx = uint8_t(i + 1);
    }
    return idx;
  }
  const auto& c = code_4bit(QuantType::FP4);
  uint8_t best = 0;
  float best_d = 1e30f;
  for (int i = 0; i < 16; ++i) {
    const float d = x > c[i] ? x - c[i] : c[i] - x;
    if (d < best_d) {
      best_d = d;
      best = uint8_t(i);
    }
  }
  return best;
}

}  // namespace kbit::core
