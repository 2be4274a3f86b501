// Paged optimizer states: CUDA unified (managed) memory that the driver may move between the GPU
// and host memory under pressure, prefetched back to the GPU before it is used. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace kbit::cuda {

// Allocates `bytes` of managed memory for use on `device` and zero-fills it there (so the pages
// start on the GPU and the free-memory figure accounts for them). Refuses, with
// cudaErrorMemoryAllocation and nothing allocated, when `bytes + reserve` exceeds the device's
// free memory: managed memory beyond what the card has free can hang the GPU. *free_bytes gets
// the free memory seen.
cudaError_t managed_zeros(size_t bytes, int device, size_t reserve, void** out, size_t* free_bytes);

// Free memory of `device` now (cudaMemGetInfo).
cudaError_t device_free_memory(int device, size_t* free_bytes);

// Frees memory from managed_zeros (synchronizes the device, as cudaFree does).
void managed_free(void* ptr);

// True when ptr is managed memory.
bool is_managed(const void* ptr);

// Starts moving [ptr, ptr + bytes) to `device` (or to host memory when device < 0), ordered on
// `stream`. A no-op on systems without concurrent managed access (pages then move on demand).
cudaError_t managed_prefetch(const void* ptr, size_t bytes, int device, cudaStream_t stream);

}  // namespace kbit::cuda
