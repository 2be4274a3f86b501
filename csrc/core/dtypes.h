// 16-bit float storage types for the torch-free core. They have the same size and bit layout
// as at::Half / at::BFloat16 (and __half / __nv_bfloat16), so csrc/ops can reinterpret pointers.
// Conversions round to nearest, ties to even, like torch's (NaN becomes the quiet NaN torch writes),
// and are branch-free so that loops over them auto-vectorize.
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

// The conversions below pick among candidate results with bit masks rather than ?: so that GCC
// vectorizes them without -fno-trapping-math.
inline uint32_t mask_if(bool c) { return 0u - uint32_t(c); }

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;  // exponent and mantissa
  // Normal: move into place and rebias the exponent by 127 - 15 = 112. Inf/NaN additionally get an
  // all-ones exponent (their mantissa is kept). Subnormal: mantissa * 2^-24, an exact int->float.
  const uint32_t normal = ((em << 13) + (112u << 23)) | (mask_if(em >= 0x7c00u) & 0x7f800000u);
  const uint32_t sub = float_to_bits(float(int32_t(em)) * 5.9604644775390625e-8f);  // 2^-24
  const uint32_t is_sub = mask_if(em < 0x400u);
  return bits_to_float((sub & is_sub) | (normal & ~is_sub) | sign);
}
// Kept for callers of the first version of this header; same as half_bits_to_float.
inline float half_to_float_slow(uint16_t h) { return half_bits_to_float(h); }

inline uint16_t float_to_half_bits(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  // Normal half: rebias the exponent and round the 13 dropped mantissa bits to nearest even
  // (a carry into the exponent is the correct rounding up). Meaningless for small a; not selected.
  const uint32_t r = a - (112u << 23);
  const uint32_t normal = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
  // Subnormal half (|f| < 2^-14): adding 0.5f leaves |f| in units of 2^-24 in the low mantissa
  // bits, rounded to nearest even by the FPU; 0x400 (the smallest normal) comes out right too.
  const uint32_t sub = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000u;
  const uint32_t is_sub = mask_if(a < 0x38800000u);
  const uint32_t is_inf = mask_if(a >= 0x477ff000u);  // >= 65520 rounds to inf
  const uint32_t is_nan = mask_if(a > 0x7f800000u);   // NaN -> quiet NaN
  uint32_t h = (sub & is_sub) | (normal & ~is_sub);
  h = (0x7c00u & is_inf) | (h & ~is_inf);
  h = (0x7e00u & is_nan) | (h & ~is_nan);
  return uint16_t(h | sign);
}

inline float to_float(float x) { return x; }
inline float to_float(bfloat16 x) { return bits_to_float(uint32_t(x.bits) << 16); }
inline float to_float(half x) { return half_bits_to_float(x.bits); }

template <typename T>
T from_float(float f);
template <>
inline float from_float<float>(float f) { return f; }
template <>
inline bfloat16 from_float<bfloat16>(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t is_nan = mask_if((u & 0x7fffffffu) > 0x7f800000u);  // NaN -> 0x7fc0, as torch
  return bfloat16{uint16_t((0x7fc0u & is_nan) | (rounded & ~is_nan))};
}
template <>
inline half from_float<half>(float f) { return half{float_to_half_bits(f)}; }

}  // namespace kbit::core
