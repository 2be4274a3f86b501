// Launchers of kbit's LLM.int8() CUDA kernels (torch-free: raw pointers and a cudaStream_t).
// csrc/ops/int8_cuda.cpp checks shapes and dtypes, allocates, and calls these; each returns the
// launch's cudaError_t.
//
// Pipeline of one Linear8bitLt forward (linear_8bit) for M tokens, K in-, N out-features:
//   int8_row_quant       A -> q (int8), row_stats, column outlier mask (bit per column)
//   M small:  int8_linear_small      tensor-core skinny GEMM streaming W at bandwidth, with the
//                                    dequantization, outlier product and bias in its epilogue
//   M large:  int8_outlier_prep      sorted outlier list, q zeroed in outlier columns, A's and
//                                    W's first outlier columns gathered; then
//             Hopper: int8_gemm_wgmma  the int8 GEMM with the epilogue below fused in
//             else:   at::_int_mm (ops layer) and
//                     int8_dequant_epilogue  int32 -> dtype with row/col scales, outlier product, bias
//             then    int8_outlier_matmul    the outlier product on tensor cores when there are
//                                            more than kOutlierGather outlier columns (the two
//                                            above leave it out then); returns at once otherwise
// No step reads anything back to the host, so shapes are static (CUDA graphs, torch.compile).
// On sm_90, int8_linear_small and int8_gemm_wgmma (when chained), int8_outlier_prep and
// int8_outlier_matmul are launched with programmatic dependent launch (PDL, common.cuh): each may
// start while the kernel before it finishes and waits (griddepcontrol.wait) before it reads that
// kernel's output; the wgmma GEMM requests its first weight tiles before waiting. KBIT_NO_PDL=1
// turns it off.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace kbit::cuda {

// Element types of float tensors, as the ops layer passes them.
enum Int8Dtype : int { kI8F32 = 0, kI8F16 = 1, kI8BF16 = 2 };

// The most outlier columns the fused epilogues (int8_dequant_epilogue, int8_gemm_wgmma) take on
// CUDA cores, and the W columns int8_outlier_prep gathers for them (Wo has kOutlierGather rows of
// N). With more, they leave the outlier product out and int8_outlier_matmul adds it.
constexpr int kOutlierGather = 64;

// Row-wise quantization (bitsandbytes' rule, core/int8_rowwise.h): entries with |x| >= threshold
// are left out of row_stats and written as 0; NaN likewise. threshold must already be rounded to
// A's dtype; <= 0 means none. When colmask is not null (and threshold > 0), bit c of colmask
// (ceil(cols / 32) words) is set for each column holding an outlier; the launcher clears it first
// or, for few rows, has extra blocks own it. q is NOT zeroed in outlier columns here.
cudaError_t int8_row_quant(const void* A, int dtype, int64_t rows, int64_t cols, float threshold,
                           int8_t* q, float* row_stats, uint32_t* colmask, cudaStream_t stream);

// Outlier columns past which int8_outlier_matmul gathers A's and W's outlier columns itself from
// the list instead of reading int8_outlier_prep's compact copies (Ac, Wc) of the first ones.
constexpr int kOutlierCompact = 512;

// What int8_outlier_prep reads and writes; every output may be null (then it is skipped).
struct OutlierPrep {
  const uint32_t* colmask = nullptr;  // ceil(cols / 32) words, from int8_row_quant
  int64_t cols = 0, rows = 0;
  int32_t* count = nullptr;  // [1]: the number of outlier columns
  int32_t* list32 = nullptr; // their sorted indices (cols entries of room)
  int64_t* list64 = nullptr;
  int8_t* q = nullptr;       // rows x cols: zeroed in the outlier columns
  // For the many-token GEMMs: W (N x cols) and A (rows x cols, a_dtype), gathered.
  const int8_t* W = nullptr;
  int64_t N = 0;
  int8_t* Wo = nullptr;      // kOutlierGather x N: Wo[j, n] = W[n, list[j]] (the fused epilogues)
  int64_t compact = 0;       // columns of Wc and Ac: min(cols, kOutlierCompact)
  int8_t* Wc = nullptr;      // N x compact: Wc[n, j] = W[n, list[j]] (int8_outlier_matmul)
  const void* A = nullptr;
  int a_dtype = 0;
  void* Ac = nullptr;        // rows x compact, a_dtype: Ac[m, j] = A[m, list[j]]
};
cudaError_t int8_outlier_prep(const OutlierPrep& p, cudaStream_t stream);

// C (M x N, out_dtype) = (Aq @ W^T) * a_stats[:, None] * w_stats[None, :] / 127^2 + bias, where
// with colmask the columns it marks use A's 16/32-bit values instead: Aq's entries there are
// ignored and A[:, c] @ (W[:, c] * w_stats / 127)^T is added. bias (float32) may be null.
// Any M; fast for small M (one pass over W per 32 rows of A). Needs K % 16 == 0 and 16-byte
// aligned Aq and W for the tensor-core path, else runs a slow generic kernel. chained: the
// previous kernel on the stream is int8_row_quant (which writes no W), so this one may start
// while it finishes and load W early (programmatic dependent launch, sm_90).
cudaError_t int8_linear_small(const int8_t* Aq, const float* a_stats, const int8_t* W,
                              const float* w_stats, const float* bias, const uint32_t* colmask,
                              const void* A, int a_dtype, int64_t M, int64_t N, int64_t K, void* out,
                              int out_dtype, bool chained, cudaStream_t stream);

// out (M x N, out_dtype) = C * a_stats[:, None] * w_stats[None, :] / 127^2 + bias, plus, when
// count is not null and count[0] <= kOutlierGather, the outlier product over the count[0] columns
// list[] (A's values times W's columns times w_stats / 127; Wo as int8_outlier_prep gathers it).
// Needs N % 4 == 0.
cudaError_t int8_dequant_epilogue(const int32_t* C, const float* a_stats, const float* w_stats,
                                  const float* bias, int64_t M, int64_t N, const int32_t* list,
                                  const int32_t* count, const int8_t* Wo, int64_t K,
                                  const void* A, int a_dtype, void* out, int out_dtype,
                                  cudaStream_t stream);

// When count[0] > kOutlierGather: out (M x N, A's dtype, written by one of the GEMMs above) +=
// A[:, c] @ (W[:, c] * w_stats / 127)^T over the count[0] columns c of list, on tensor cores; else
// nothing (the kernel reads count and returns). A is M x K in a_dtype; list, Ac and Wc (compact
// columns each) as int8_outlier_prep makes them. Needs N even.
cudaError_t int8_outlier_matmul(const int32_t* list, const int32_t* count, const void* A, int a_dtype,
                                const int8_t* W, const float* w_stats, int64_t M, int64_t N, int64_t K,
                                const void* Ac, const int8_t* Wc, int64_t compact, void* out, cudaStream_t stream);

// Hopper (sm_90a build on a compute capability 9.0 device): out = int8_dequant_epilogue's formula
// applied to Aq @ W^T, computed on warpgroup MMAs in the same kernel. Needs K % 16 == 0,
// N % 8 == 0 and 16-byte aligned Aq and W; with count (not null), Aq zeroed in the listed columns
// and list / Wo as int8_outlier_prep makes them. splits > 1 splits K across blocks: workspace then
// holds int8_gemm_wgmma_workspace(M, N, splits) int32 zeros (it is left dirty). chained: the
// previous kernel on the stream is int8_row_quant or int8_outlier_prep, which write no W, so this
// one is launched with PDL and requests its first W tiles before waiting for that kernel; otherwise
// (W may have just been written) it starts after it, as usual.
bool int8_gemm_wgmma_supported(int64_t M, int64_t N, int64_t K);
// Ways to split K so that few-token problems fill the GPU (1: no workspace needed).
int int8_gemm_wgmma_splits(int64_t M, int64_t N, int64_t K);
// int32 elements of workspace for `splits` (0 for 1).
int64_t int8_gemm_wgmma_workspace(int64_t M, int64_t N, int splits);
cudaError_t int8_gemm_wgmma(const int8_t* Aq, const float* a_stats, const int8_t* W, const float* w_stats,
                            const float* bias, int64_t M, int64_t N, int64_t K, const int32_t* list,
                            const int32_t* count, const int8_t* Wo, const void* A, int a_dtype, void* out,
                            int out_dtype, int splits, int32_t* workspace, bool chained, cudaStream_t stream);

}  // namespace kbit::cuda
