// Expands packed 4-bit indices through a 16-entry table: element 2j gets lut[p[j] >> 4] and
// element 2j+1 gets lut[p[j] & 15], for j < nbytes. This is the inner loop of 4-bit dequantization
// (the table holds code[k] * absmax of one block as raw 16- or 32-bit patterns; out points at
// 2 * nbytes such values, of any type with that size).
// On x86-64 CPUs with SSSE3 (checked at run time) each byte of the table entries becomes a
// 16-byte plane looked up 16 indices at a time with pshufb; elsewhere a scalar loop does it.
#pragma once
#include <cstdint>

namespace kbit::core {

void expand_nibbles_16(const uint8_t* p, int64_t nbytes, const uint16_t lut[16], void* out);

// lut[k] = float16 bits of code[k] * scale (float32 product, rounded to nearest even), the table
// for float16 output; with F16C (checked at run time) 4 conversions at a time.
void half_table(const float code[16], float scale, uint16_t lut[16]);
void expand_nibbles_32(const uint8_t* p, int64_t nbytes, const uint32_t lut[16], void* out);

}  // namespace kbit::core
