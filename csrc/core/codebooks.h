// The code values of kbit's quantization formats (FORMAT.md): NF4 and FP4 for 4-bit blockwise,
// the signed dynamic map for 8-bit blockwise (double quant, optimizer states).
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

namespace kbit::core {

enum class QuantType : int { NF4 = 0, FP4 = 1 };

// Parses "nf4" / "fp4"; returns false for anything else.
bool parse_quant_type(std::string_view name, QuantType* out);

// The 16 code values by 4-bit index (FORMAT.md). NF4 is sorted; FP4 is not.
const std::array<float, 16>& code_4bit(QuantType type);

// Decision boundaries of the encoders, exactly the float constants bitsandbytes compares against
// (its CUDA kernels; they are the midpoints of adjacent code values, written to ~8 digits):
// NF4 index = number of boundaries b with x > b (so x on a boundary goes down, NaN gives 0).
inline constexpr float kNF4Boundaries[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
// FP4: sign bit 8 when x < 0 (so -0.0 and NaN are positive), then k = number of boundaries below
// |x| picks the magnitude rank k (0, 0.0625, 2, 3, 4, 6, 8, 12 over 12) whose 3-bit pattern is
// k ^ ((k & 2) << 1): 0, 1, 6, 7, 4, 5, 2, 3.
inline constexpr float kFP4Boundaries[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                            0.4166667f,  0.583333f,  0.8333333f};

// Branch-free, int32 throughout so that loops over them vectorize without narrowing each step.
inline int32_t nf4_index(float x) {
  int32_t idx = 0;
  for (int i = 0; i < 15; ++i) idx += x > kNF4Boundaries[i];
  return idx;
}
inline int32_t fp4_index(float x) {
  const float a = x < 0.0f ? -x : x;
  int32_t k = 0;
  for (int i = 0; i < 7; ++i) k += a > kFP4Boundaries[i];
  return (k ^ ((k & 2) << 1)) | (int32_t(x < 0.0f) << 3);
}
inline uint8_t encode_nf4(float x) { return uint8_t(nf4_index(x)); }
inline uint8_t encode_fp4(float x) { return uint8_t(fp4_index(x)); }

// The 256-value signed dynamic map, sorted ascending.
const std::array<float, 256>& dynamic_map_signed();

// 4-bit index of the code value nearest to x (x already scaled into [-1, 1]), with bitsandbytes'
// boundaries and tie rule above; NaN encodes as index 0.
uint8_t encode_4bit(float x, QuantType type);

}  // namespace kbit::core
