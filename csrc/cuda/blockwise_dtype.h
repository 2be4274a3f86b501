// Element types that kbit's CUDA launchers accept, named without torch or CUDA headers so that
// csrc/ops can pass them through from a torch ScalarType.
#pragma once

namespace kbit::cuda {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

}  // namespace kbit::cuda
