// Launchers of the fused 4-bit linear kernels: C = A @ dequant(W)^T + bias with W (N, K) stored
// as FORMAT.md packs it (row-major, element 2i in the high nibble). Four kernels:
//   decode: M = 1 (blocksize >= 64, K % 64 == 0): bandwidth-bound, W streamed once, K split
//           across warps, few instructions per weight;
//   skinny: M <= 16 tokens: the same scheme for up to 16 tokens and any blocksize;
//   tiled:  M > 16: 128 weight rows x 64 tokens per block, activations staged in shared memory,
//           K optionally split across blocks (float32 atomics into a workspace, then a cast pass);
//   wgmma:  Hopper, 64..1024 tokens: 128 weight rows x 128 or 256 tokens per block on warpgroup
//           MMAs, activations by TMA, K split across blocks as the tiled kernel does where the
//           row tiles are few.
// All dequantize W in registers straight into tensor-core (mma.sync / wgmma) A fragments and
// decode double-quantized absmax inline. Torch-free; no CUDA device types in this header.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/blockwise_4bit.cuh"
#include "cuda/blockwise_dtype.h"

namespace kbit::cuda {

struct Linear4bitArgs {
  const void* A = nullptr;     // (M, K) row-major, dtype
  const uint8_t* W = nullptr;  // packed 4-bit weight, N * K / 2 bytes
  AbsmaxRef scales;            // per blocksize elements of the flat weight
  const void* bias = nullptr;  // (N,) dtype, or null
  void* C = nullptr;           // (M, N) row-major, dtype
  int64_t M = 0, N = 0, K = 0;
  int64_t blocksize = 64;
  int quant_type = 0;          // 0 = NF4, 1 = FP4
  DType dtype = DType::BF16;   // F16 or BF16
  int wgmma_tile_tokens = 0;   // wgmma kernel: 128 or 256 tokens per block; 0 = by M
};

// Whether the fused kernels accept these arguments: 16-bit dtype, K % 32 == 0, N and K below 2^30,
// 16-byte aligned
// A and W. Otherwise the caller dequantizes and uses a dense matmul.
bool linear_4bit_fusable(const Linear4bitArgs& a);

// Whether the one-token kernel takes these arguments: M == 1, fusable, blocksize >= 64,
// K % 64 == 0 and N * K < 2^31.
bool linear_4bit_decode_supported(const Linear4bitArgs& a);

// One token where linear_4bit_decode_supported(); cudaErrorInvalidValue elsewhere.
cudaError_t linear_4bit_decode(const Linear4bitArgs& a, cudaStream_t stream);

// M <= 16.
cudaError_t linear_4bit_skinny(const Linear4bitArgs& a, cudaStream_t stream);

// How many ways the tiled kernel splits K for this problem; > 1 needs an M x N float32 workspace
// filled with zeros.
int linear_4bit_tiled_splits(const Linear4bitArgs& a);

// Any M >= 1; workspace as linear_4bit_tiled_splits says (null when it returns 1).
cudaError_t linear_4bit_tiled(const Linear4bitArgs& a, int splits, float* workspace, cudaStream_t stream);

// After a split-K run (tiled or wgmma): C = cast(workspace + bias), the workspace M x N float32.
cudaError_t linear_4bit_finish_splits(const Linear4bitArgs& a, const float* workspace, cudaStream_t stream);

// Hopper warpgroup-MMA kernel (many tokens): it takes these arguments when the extension holds
// sm_90a code, the current device is compute capability 9.0, the fused kernels take them
// (linear_4bit_fusable) and N is at most 65535 * 128.
bool linear_4bit_wgmma_supported(const Linear4bitArgs& a);

// Whether this problem should take the wgmma kernel (by token count and row tiles, from H100
// timings); implies linear_4bit_wgmma_supported().
bool linear_4bit_wgmma_preferred(const Linear4bitArgs& a);

// How many ways the wgmma kernel splits K for this problem (so that narrow layers fill the GPU);
// > 1 needs an M x N float32 workspace filled with zeros.
int linear_4bit_wgmma_splits(const Linear4bitArgs& a);

// Any M >= 1 where linear_4bit_wgmma_supported(); cudaErrorInvalidValue elsewhere. Workspace as
// linear_4bit_wgmma_splits says (null when it returns 1).
cudaError_t linear_4bit_wgmma(const Linear4bitArgs& a, int splits, float* workspace, cudaStream_t stream);

}  // namespace kbit::cuda
