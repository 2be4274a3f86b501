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

// The 256-value signed dynamic map, sorted ascending.
const std::array<float, 256>& dynamic_map_signed();

// 4-bit index of the code value nearest to x (x already scaled into [-1, 1]).
uint8_t encode_4bit(float x, QuantType type);

}  // namespace kbit::core
