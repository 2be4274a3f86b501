// Warpgroup-MMA (wgmma, sm_90a) plumbing shared by the Hopper kernels (linear_4bit_wgmma.cu,
// int8_gemm_wgmma.cu). Their device code sits under KBIT_SM90A_DEVICE: only the sm_90a pass
// assembles wgmma; other passes compile the kernels to a trap and the launchers never pick them.
#pragma once

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KBIT_SM90A_DEVICE 1
#endif

#ifdef KBIT_SM90A_DEVICE
namespace kbit::cuda::wgmma {

// Orders the warpgroup's register and shared-memory accesses before the wgmmas that follow.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
// Closes the wgmmas issued since the last commit into one group.
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed groups are still running.
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Shared memory written by ordinary (generic-proxy) stores or cp.async that wgmma (the async
// proxy) reads next: each writing thread fences before the barrier.
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

}  // namespace kbit::cuda::wgmma
#endif  // KBIT_SM90A_DEVICE
