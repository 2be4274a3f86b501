// Raising a kernel's dynamic shared-memory limit (torch-free; shared by every kernel family).
#pragma once
#include <cuda_runtime.h>

namespace kbit::cuda {

// Lets `kernel` launch with `bytes` (more than the default 48 KB) of dynamic shared memory on the
// current device. The limit is set per device, so the caller keeps one flag per device (a static
// array per kernel instantiation) and this sets it on the first launch on each device.
template <typename Kernel>
cudaError_t allow_dynamic_smem(Kernel kernel, int bytes, bool (&done_per_device)[64]) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess || (dev >= 0 && dev < 64 && done_per_device[dev])) return e;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess && dev >= 0 && dev < 64) done_per_device[dev] = true;
  return e;
}

}  // namespace kbit::cuda
