#include "core/parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace kbit::core {
namespace {

void thread_backend(int64_t begin, int64_t end, int64_t grain, const RangeFn& fn) {
  const int64_t n = end - begin;
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t chunks = std::min<int64_t>(hw, (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(begin, end);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  std::vector<std::thread> threads;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t b = begin + c * step, e = std::min(end, b + step);
    if (b < e) threads.emplace_back([&fn, b, e] { fn(b, e); });
  }
  fn(begin, std::min(end, begin + step));
  for (auto& t : threads) t.join();
}

std::atomic<ParallelBackend> g_backend{&thread_backend};

}  // namespace

void parallel_for(int64_t begin, int64_t end, int64_t grain, const RangeFn& fn) {
  if (end <= begin) return;
  grain = std::max<int64_t>(1, grain);
  if (end - begin <= grain) {
    fn(begin, end);
    return;
  }
  g_backend.load()(begin, end, grain, fn);
}

void set_parallel_backend(ParallelBackend backend) {
  g_backend.store(backend ? backend : &thread_backend);
}

}  // namespace kbit::core
