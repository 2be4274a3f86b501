// Table expansion of packed nibbles (see nibble_lut.h).
// SSSE3 layout: the table is first transposed into byte planes (plane b = byte b of every entry).
// Then 16 packed bytes give 32 indices: the high nibbles (even elements) and low nibbles (odd
// elements) are interleaved back into element order (punpck[lh]bw), every plane is looked up with
// pshufb, and the planes are interleaved into 16-bit (punpck[lh]bw) or 32-bit (then punpck[lh]wd)
// values and stored in element order.
#include "core/nibble_lut.h"

#include <cstring>

#include "core/dtypes.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KBIT_HAVE_SSSE3_PATH 1
#include <immintrin.h>
#endif

namespace kbit::core {
namespace {

template <typename U>
void expand_scalar(const uint8_t* p, int64_t nbytes, const U lut[16], unsigned char* out) {
  for (int64_t j = 0; j < nbytes; ++j) {
    std::memcpy(out + (2 * j) * sizeof(U), &lut[p[j] >> 4], sizeof(U));
    std::memcpy(out + (2 * j + 1) * sizeof(U), &lut[p[j] & 15], sizeof(U));
  }
}

#ifdef KBIT_HAVE_SSSE3_PATH
#define KBIT_SSSE3 __attribute__((target("ssse3")))

// Element-ordered indices of 16 packed bytes: i0 for elements 0..15, i1 for elements 16..31.
KBIT_SSSE3 inline void split_indices(const uint8_t* p, __m128i* i0, __m128i* i1) {
  const __m128i nib = _mm_set1_epi8(15);
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), nib);
  const __m128i lo = _mm_and_si128(b, nib);
  *i0 = _mm_unpacklo_epi8(hi, lo);
  *i1 = _mm_unpackhi_epi8(hi, lo);
}

KBIT_SSSE3 void expand16_ssse3(const uint8_t* p, int64_t nbytes, const uint16_t lut[16], unsigned char* out) {
  const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(lut));
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(lut + 8));
  const __m128i low = _mm_set1_epi16(0xff);
  const __m128i plane0 = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
  const __m128i plane1 = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
  int64_t j = 0;
  for (; j + 16 <= nbytes; j += 16) {
    __m128i idx[2];
    split_indices(p + j, &idx[0], &idx[1]);
    __m128i* o = reinterpret_cast<__m128i*>(out + 4 * j);
    for (int h = 0; h < 2; ++h) {
      const __m128i v0 = _mm_shuffle_epi8(plane0, idx[h]), v1 = _mm_shuffle_epi8(plane1, idx[h]);
      _mm_storeu_si128(o + 2 * h, _mm_unpacklo_epi8(v0, v1));
      _mm_storeu_si128(o + 2 * h + 1, _mm_unpackhi_epi8(v0, v1));
    }
  }
  expand_scalar(p + j, nbytes - j, lut, out + 4 * j);
}

KBIT_SSSE3 void expand32_ssse3(const uint8_t* p, int64_t nbytes, const uint32_t lut[16], unsigned char* out) {
  // Byte planes: gather byte b of the 4 entries of each register into its dword b, then
  // transpose the 4 x 4 dwords.
  const __m128i gather = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m128i q[4];
  for (int r = 0; r < 4; ++r)
    q[r] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lut + 4 * r)), gather);
  const __m128i t0 = _mm_unpacklo_epi32(q[0], q[1]), t1 = _mm_unpackhi_epi32(q[0], q[1]);
  const __m128i t2 = _mm_unpacklo_epi32(q[2], q[3]), t3 = _mm_unpackhi_epi32(q[2], q[3]);
  const __m128i plane[4] = {_mm_unpacklo_epi64(t0, t2), _mm_unpackhi_epi64(t0, t2),
                            _mm_unpacklo_epi64(t1, t3), _mm_unpackhi_epi64(t1, t3)};
  int64_t j = 0;
  for (; j + 16 <= nbytes; j += 16) {
    __m128i idx[2];
    split_indices(p + j, &idx[0], &idx[1]);
    __m128i* o = reinterpret_cast<__m128i*>(out + 8 * j);
    for (int h = 0; h < 2; ++h) {
      const __m128i v0 = _mm_shuffle_epi8(plane[0], idx[h]), v1 = _mm_shuffle_epi8(plane[1], idx[h]);
      const __m128i v2 = _mm_shuffle_epi8(plane[2], idx[h]), v3 = _mm_shuffle_epi8(plane[3], idx[h]);
      const __m128i w01l = _mm_unpacklo_epi8(v0, v1), w01h = _mm_unpackhi_epi8(v0, v1);
      const __m128i w23l = _mm_unpacklo_epi8(v2, v3), w23h = _mm_unpackhi_epi8(v2, v3);
      _mm_storeu_si128(o + 4 * h, _mm_unpacklo_epi16(w01l, w23l));
      _mm_storeu_si128(o + 4 * h + 1, _mm_unpackhi_epi16(w01l, w23l));
      _mm_storeu_si128(o + 4 * h + 2, _mm_unpacklo_epi16(w01h, w23h));
      _mm_storeu_si128(o + 4 * h + 3, _mm_unpackhi_epi16(w01h, w23h));
    }
  }
  expand_scalar(p + j, nbytes - j, lut, out + 8 * j);
}

__attribute__((target("f16c"))) void half_table_f16c(const float code[16], float scale, uint16_t lut[16]) {
  const __m128 s = _mm_set1_ps(scale);
  for (int k = 0; k < 16; k += 4) {
    const __m128 v = _mm_mul_ps(_mm_loadu_ps(code + k), s);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(lut + k), _mm_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
}

const bool kHasSsse3 = [] {
  __builtin_cpu_init();
  return bool(__builtin_cpu_supports("ssse3"));
}();
const bool kHasF16c = [] {
  __builtin_cpu_init();
  return bool(__builtin_cpu_supports("f16c"));
}();
#endif

}  // namespace

void expand_nibbles_16(const uint8_t* p, int64_t nbytes, const uint16_t lut[16], void* out) {
  auto* o = static_cast<unsigned char*>(out);
#ifdef KBIT_HAVE_SSSE3_PATH
  if (kHasSsse3) return expand16_ssse3(p, nbytes, lut, o);
#endif
  expand_scalar(p, nbytes, lut, o);
}

void expand_nibbles_32(const uint8_t* p, int64_t nbytes, const uint32_t lut[16], void* out) {
  auto* o = static_cast<unsigned char*>(out);
#ifdef KBIT_HAVE_SSSE3_PATH
  if (kHasSsse3) return expand32_ssse3(p, nbytes, lut, o);
#endif
  expand_scalar(p, nbytes, lut, o);
}

void half_table(const float code[16], float scale, uint16_t lut[16]) {
#ifdef KBIT_HAVE_SSSE3_PATH
  if (kHasF16c) return half_table_f16c(code, scale, lut);
#endif
  for (int k = 0; k < 16; ++k) lut[k] = float_to_half_bits(code[k] * scale);
}

}  // namespace kbit::core
