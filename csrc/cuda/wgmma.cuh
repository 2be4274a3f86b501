// Warpgroup-MMA (wgmma, sm_90a) plumbing shared by the Hopper kernels (linear_4bit_wgmma.cu,
// int8_gemm_wgmma.cu). Their device code sits under KBIT_SM90A_DEVICE: only the sm_90a pass
// assembles wgmma; other passes compile the kernels to a trap and the launchers never pick them.
#pragma once
#include <cstdint>

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

// Descriptor of a K-major operand in the 128-byte swizzle (row r of a tile at r * 128, its
// 16-byte piece p at position p ^ (r % 8), 8-row atoms 1024 bytes apart and 1024-byte aligned;
// the leading offset is unused there). A k step starts 32 bytes further into the rows.
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

// mbarriers in shared memory (addr: a shared-space address, 8-byte aligned) tracking TMA copies.
__device__ __forceinline__ void mbar_init(uint32_t addr, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(arrivals) : "memory");
}
// Makes initialized mbarriers visible to the async proxy (the TMA unit) before a barrier.
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// One arrival that also announces `bytes` of copies still to complete on this phase.
__device__ __forceinline__ void mbar_arrive_expect(uint32_t addr, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(addr), "r"(bytes) : "memory");
}
// Waits until the phase with this parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t addr, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}
// TMA: the box at (col, row) of the map's matrix into shared memory at dst, counted on mbarrier bar.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* map, int32_t col, int32_t row, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
      ::"r"(dst), "l"(map), "r"(col), "r"(row), "r"(bar)
      : "memory");
}

}  // namespace kbit::cuda::wgmma
#endif  // KBIT_SM90A_DEVICE
