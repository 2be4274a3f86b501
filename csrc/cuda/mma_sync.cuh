// Warp-level tensor-core instructions (sm_80+) used by more than one kernel: mma.sync m16n8k16
// with float32 accumulators, and ldmatrix. Torch-free.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace kbit::cuda::mma {

// c += a (16 x 16, row) * b (16 x 8, col), 16-bit T (bf16 or fp16) inputs, float32 c.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

// PTX names the 16-bit type; the rest is the same for bf16 and fp16.
#define KBIT_MMA16816(T, PTX_TYPE)                                                                      \
  template <>                                                                                         \
  __device__ __forceinline__ void mma16816<T>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,     \
                                              uint32_t b1) {                                          \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE                        \
                 ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"               \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                     \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                     \
  }
KBIT_MMA16816(__nv_bfloat16, "bf16")
KBIT_MMA16816(__half, "f16")
#undef KBIT_MMA16816

// Four 8 x 8 16-bit matrices from shared memory; lane L gives the address of row L % 8 of
// matrix L / 8 and receives r[i] of matrix i in mma.sync's fragment layout.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

}  // namespace kbit::cuda::mma
