// 16-bit float storage types for the torch-free core. They have the same size and bit layout
// as at::Half / at::BFloat16 (and __half / __nv_bfloat16), so csrc/ops can reinterpret pointers.
// Conversions round to nearest, ties to even, like torch's.
#pragma once
#include <cstdint>
#include <cstring>

namespace kbit::core {

struct half {
  uint16_t bits;
};
struct bfloat16 {
  uint16_t bits;
};
static_assert(sizeof(half) == 2 && sizeof(bfloat16) == 2, "16-bit storage types");

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float to_float(float x) { return x; }
inline float to_float(bfloat16 x) { return bits_to_float(uint32_t(x.bits) << 16); }
float half_to_float_slow(uint16_t h);  // subnormals, inf, nan
inline float to_float(half x) {
  // Normal numbers by shifting exponent and mantissa into place; the rest out of line.
  uint32_t h = x.bits;
  uint32_t exp = (h >> 10) & 0x1f;
  if (exp == 0 || exp == 31) return half_to_float_slow(x.bits);
  return bits_to_float(((h & 0x8000u) << 16) | ((exp + 112) << 23) | ((h & 0x3ffu) << 13));
}

template <typename T>
T from_float(float f);
template <>
inline float from_float<float>(float f) { return f; }
template <>
inline bfloat16 from_float<bfloat16>(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bfloat16{uint16_t(u >> 16)};
}
uint16_t float_to_half_bits(float f);
template <>
inline half from_float<half>(float f) { return half{float_to_half_bits(f)}; }

}  // namespace kbit::core
