// NF4 / FP4 blockwise quantize and dequantize on the CPU (see blockwise_4bit.h for the format).
// Quantize: per block, absmax over the raw bits, then 32 elements at a time: scale, encode by
// counting the boundaries below (branch-free, vectorizes), pack pairs into bytes.
// Dequantize: per block, the 16 products code[k] * absmax are made once (and cast to T), so each
// element is one table lookup (16 at a time with pshufb; float16 tables via F16C; nibble_lut.h).
#include "core/blockwise_4bit.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/absmax.h"
#include "core/nibble_lut.h"
#include "core/parallel.h"

namespace kbit::core {
namespace {

constexpr int kChunk = 32;              // elements encoded per step
constexpr int64_t kGrainElems = 1 << 15;  // elements per parallel task, at least

template <QuantType Q>
inline int32_t encode(float y) {
  return Q == QuantType::NF4 ? nf4_index(y) : fp4_index(y);
}

// kChunk values x[i] * scale -> kChunk / 2 bytes. Even and odd elements go to separate int32
// arrays so that the compiler keeps 4 lanes of int32 until the final pack.
template <typename T, QuantType Q>
inline void encode_chunk(const T* x, float scale, uint8_t* out) {
  int32_t hi[kChunk / 2], lo[kChunk / 2];
  for (int i = 0; i < kChunk / 2; ++i) {
    hi[i] = encode<Q>(to_float(x[2 * i]) * scale);
    lo[i] = encode<Q>(to_float(x[2 * i + 1]) * scale);
  }
  for (int i = 0; i < kChunk / 2; ++i) out[i] = uint8_t((hi[i] << 4) | lo[i]);
}

// Whole blocks [b0, b1); blocksize even, so block b starts at byte b * blocksize / 2.
template <typename T, QuantType Q>
void quantize_blocks(const T* A, int64_t n, int64_t bs, int64_t b0, int64_t b1, uint8_t* packed,
                     float* absmax) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * bs, len = std::min(bs, n - start);
    const T* x = A + start;
    const float am = absmax_of(x, len);
    absmax[b] = am;
    const float scale = 1.0f / am;
    uint8_t* out = packed + start / 2;
    int64_t i = 0;
    for (; i + kChunk <= len; i += kChunk) encode_chunk<T, Q>(x + i, scale, out + i / 2);
    if (i < len) {
      // Partial chunk: zero padding, encoded like the rest (bitsandbytes pads with 0.0 too).
      T tail[kChunk];
      std::fill(tail, tail + kChunk, from_float<T>(0.0f));
      std::copy(x + i, x + len, tail);
      uint8_t bytes[kChunk / 2];
      encode_chunk<T, Q>(tail, scale, bytes);
      std::copy(bytes, bytes + (len - i + 1) / 2, out + i / 2);
    }
  }
}

// Odd blocksize: blocks share bytes, so one thread writes nibble by nibble.
template <typename T, QuantType Q>
void quantize_odd_blocksize(const T* A, int64_t n, int64_t bs, uint8_t* packed, float* absmax) {
  std::fill(packed, packed + (n + 1) / 2, uint8_t(0));
  float scale = 0.0f;
  for (int64_t start = 0; start < n; start += bs) {
    const int64_t len = std::min(bs, n - start);
    const float am = absmax_of(A + start, len);
    absmax[start / bs] = am;
    scale = 1.0f / am;
    for (int64_t e = start; e < start + len; ++e)
      packed[e / 2] |= uint8_t(encode<Q>(to_float(A[e]) * scale) << (e % 2 ? 0 : 4));
  }
  if (n % 2) packed[n / 2] |= encode<Q>(0.0f * scale);
}

template <typename T, QuantType Q>
void quantize_impl(const T* A, int64_t n, int64_t bs, uint8_t* packed, float* absmax) {
  if (n <= 0 || bs <= 0) return;
  if (bs % 2) return quantize_odd_blocksize<T, Q>(A, n, bs, packed, absmax);
  const int64_t blocks = (n + bs - 1) / bs;
  parallel_for(0, blocks, std::max<int64_t>(1, kGrainElems / bs), [&](int64_t b0, int64_t b1) {
    quantize_blocks<T, Q>(A, n, bs, b0, b1, packed, absmax);
  });
}

// Both nibbles of nbytes bytes through the block's table (raw bits of T, see nibble_lut.h).
template <typename T>
inline void expand_pairs(const uint8_t* p, int64_t nbytes, const T lut[16], T* out) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16- or 32-bit element");
  if constexpr (sizeof(T) == 2) {
    uint16_t bits[16];
    std::memcpy(bits, lut, sizeof(bits));
    expand_nibbles_16(p, nbytes, bits, out);
  } else {
    uint32_t bits[16];
    std::memcpy(bits, lut, sizeof(bits));
    expand_nibbles_32(p, nbytes, bits, out);
  }
}

}  // namespace

template <typename T>
void quantize_4bit(const T* A, int64_t n, int64_t blocksize, QuantType type, uint8_t* packed,
                   float* absmax) {
  if (type == QuantType::NF4)
    quantize_impl<T, QuantType::NF4>(A, n, blocksize, packed, absmax);
  else
    quantize_impl<T, QuantType::FP4>(A, n, blocksize, packed, absmax);
}

template <typename T>
void dequantize_4bit_range(const uint8_t* packed, const float* absmax, int64_t begin, int64_t end,
                           int64_t bs, QuantType type, T* out) {
  if (begin >= end || bs <= 0) return;
  const auto& code = code_4bit(type);
  int64_t e = begin;
  for (int64_t b = begin / bs; e < end; ++b) {  // segment of the range inside block b
    const int64_t seg_end = std::min(end, (b + 1) * bs);
    T lut[16];
    const float am = absmax[b];
    if constexpr (std::is_same_v<T, half>) {
      uint16_t bits[16];
      half_table(code.data(), am, bits);
      std::memcpy(lut, bits, sizeof(bits));
    } else {
      for (int k = 0; k < 16; ++k) lut[k] = from_float<T>(code[k] * am);
    }
    T* o = out + (e - begin);
    if (e & 1) {  // starts on a low nibble
      *o++ = lut[packed[e >> 1] & 15];
      ++e;
    }
    const int64_t pairs = (seg_end - e) / 2;
    expand_pairs(packed + (e >> 1), pairs, lut, o);
    e += 2 * pairs;
    if (e < seg_end) {  // ends on a high nibble
      o[2 * pairs] = lut[packed[e >> 1] >> 4];
      ++e;
    }
  }
}

template <typename T>
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                     QuantType type, T* out) {
  if (n <= 0 || blocksize <= 0) return;
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  parallel_for(0, blocks, std::max<int64_t>(1, kGrainElems / blocksize), [&](int64_t b0, int64_t b1) {
    const int64_t begin = b0 * blocksize, end = std::min(n, b1 * blocksize);
    dequantize_4bit_range<T>(packed, absmax, begin, end, blocksize, type, out + begin);
  });
}

#define KBIT_INSTANTIATE(T)                                                                        \
  template void quantize_4bit<T>(const T*, int64_t, int64_t, QuantType, uint8_t*, float*);         \
  template void dequantize_4bit<T>(const uint8_t*, const float*, int64_t, int64_t, QuantType, T*); \
  template void dequantize_4bit_range<T>(const uint8_t*, const float*, int64_t, int64_t, int64_t,  \
                                         QuantType, T*);
KBIT_INSTANTIATE(float)
KBIT_INSTANTIATE(half)
KBIT_INSTANTIATE(bfloat16)
#undef KBIT_INSTANTIATE

}  // namespace kbit::core
