// Maps a float ScalarType to the matching core storage type (float, core::half, core::bfloat16)
// and calls fn with a value of that type's pointer-compatible tag.
#pragma once
#include <ATen/ATen.h>

#include "core/dtypes.h"

namespace kbit::ops {

template <typename T>
struct Tag {
  using type = T;
};

template <typename Fn>
decltype(auto) dispatch_float(at::ScalarType s, Fn&& fn) {
  switch (s) {
    case at::kFloat:
      return fn(Tag<float>{});
    case at::kHalf:
      return fn(Tag<core::half>{});
    case at::kBFloat16:
      return fn(Tag<core::bfloat16>{});
    default:
      TORCH_CHECK_TYPE(false, "kbit: expected float32, float16 or bfloat16; got ", s);
  }
}

// Raw pointer of a float tensor as the core type T (same size and bit layout).
template <typename T>
T* data_as(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace kbit::ops
