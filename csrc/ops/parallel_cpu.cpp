// Lets the core kernels run on torch's intra-op thread pool (honours torch.set_num_threads).
#include <ATen/Parallel.h>

#include "core/parallel.h"

namespace {

void aten_backend(int64_t begin, int64_t end, int64_t grain, const kbit::core::RangeFn& fn) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { fn(b, e); });
}

const bool installed = [] {
  kbit::core::set_parallel_backend(&aten_backend);
  return true;
}();

}  // namespace
