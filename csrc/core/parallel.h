// A parallel-for that the core kernels use without depending on torch. By default it splits the
// range over std::threads; csrc/ops installs at::parallel_for at load so kernels share torch's
// thread pool and honour torch.set_num_threads.
#pragma once
#include <cstdint>
#include <functional>

namespace kbit::core {

using RangeFn = std::function<void(int64_t begin, int64_t end)>;
using ParallelBackend = void (*)(int64_t begin, int64_t end, int64_t grain, const RangeFn& fn);

// Runs fn over [begin, end) in chunks of at least `grain` items, possibly concurrently.
void parallel_for(int64_t begin, int64_t end, int64_t grain, const RangeFn& fn);

// Replaces the thread backend (nullptr restores the std::thread default).
void set_parallel_backend(ParallelBackend backend);

}  // namespace kbit::core
