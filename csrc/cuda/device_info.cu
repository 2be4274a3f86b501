// Device facts for the launchers (device_info.h).
#include "cuda/device_info.h"

#include <cuda_runtime.h>

#include <cstdlib>

namespace kbit::cuda {

int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) return 132;
  if (cached[dev] == 0) {
    int n = 0;
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    cached[dev] = n > 0 ? n : 132;
  }
  return cached[dev];
}

int compute_capability() {
  static int cached[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return 0;
  if (dev < 64 && cached[dev] != 0) return cached[dev];
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
    return 0;
  if (dev < 64) cached[dev] = 10 * major + minor;
  return 10 * major + minor;
}

bool pdl_allowed() {
  static const bool disabled = std::getenv("KBIT_NO_PDL") != nullptr;
  return !disabled && compute_capability() >= 90;
}

}  // namespace kbit::cuda
