// Asynchronous global -> shared copies (cp.async, sm_80+), shared by the kernels that stage data
// through shared memory without holding it in registers.
#pragma once
#include <cstdint>

namespace kbit::cuda {

// 16-byte copy to the shared-space address dst; bytes = 0 writes zeros (src is then not read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
// Closes this thread's copies issued since the last commit into one group.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed copy groups are still pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace kbit::cuda
