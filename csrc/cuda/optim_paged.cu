#include "cuda/optim_paged.cuh"

namespace kbit::cuda {

cudaError_t managed_zeros(size_t bytes, int device, size_t reserve, void** out, size_t* free_bytes) {
  *out = nullptr;
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return err;
  size_t free_b = 0, total_b = 0;
  err = cudaMemGetInfo(&free_b, &total_b);
  if (err != cudaSuccess) return err;
  *free_bytes = free_b;
  if (bytes + reserve > free_b) return cudaErrorMemoryAllocation;
  err = cudaMallocManaged(out, bytes == 0 ? 1 : bytes, cudaMemAttachGlobal);
  if (err != cudaSuccess) return err;
  // A synchronous memset touches every page on the GPU before the next allocation's check.
  err = cudaMemset(*out, 0, bytes);
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    cudaFree(*out);
    *out = nullptr;
  }
  return err;
}

cudaError_t device_free_memory(int device, size_t* free_bytes) {
  size_t total = 0;
  cudaError_t err = cudaSetDevice(device);
  return err == cudaSuccess ? cudaMemGetInfo(free_bytes, &total) : err;
}

void managed_free(void* ptr) {
  if (ptr) cudaFree(ptr);
}

bool is_managed(const void* ptr) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of a failed query
    return false;
  }
  return attr.type == cudaMemoryTypeManaged;
}

cudaError_t managed_prefetch(const void* ptr, size_t bytes, int device, cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  int current = 0, concurrent = 0;
  cudaError_t err = cudaGetDevice(&current);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device < 0 ? current : device);
  if (err != cudaSuccess || !concurrent) return err;
#if CUDART_VERSION >= 13000
  cudaMemLocation loc{};
  loc.type = device < 0 ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  loc.id = device < 0 ? 0 : device;
  return cudaMemPrefetchAsync(ptr, bytes, loc, 0, stream);
#else
  return cudaMemPrefetchAsync(ptr, bytes, device < 0 ? cudaCpuDeviceId : device, stream);
#endif
}

}  // namespace kbit::cuda
