// LLM.int8() epilogue after an int32 GEMM (at::_int_mm for many tokens): one pass over C that
// applies the row and column scales, adds the 16-bit outlier product and bias, and writes the
// output dtype, so the outlier product costs no pass of its own over the output.
//
// A block (256 threads) owns a 64 x 128 tile of C: thread (x = tid % 32, y = tid / 32) reads
// 16 bytes (4 int32) from each of rows y, y + 8, ..., y + 56 at columns 4x..4x+3, all 8 loads
// issued before any use. Outlier columns (count[0] of them, sorted in list) are taken 32 at a
// time: A's values for the tile's rows and W's values for its columns go to shared memory (W's
// from the Wo gather of int8_outlier_prep, contiguous per column), and each output adds
// sum_j A[m, c_j] * W[n, c_j] in float32, scaled by w_stats[n] / 127. Past kOutlierGather
// columns this kernel leaves the outlier product to int8_outlier_matmul.
#include "cuda/int8_common.cuh"

namespace kbit::cuda {
namespace {

using namespace int8;

constexpr int kThreads = 256;
constexpr int kTileM = 64, kTileN = 128, kRows = kTileM / 8;
constexpr int kRound = 32;  // outlier columns per round

struct EpiParams {
  const int32_t* C;
  const float* a_stats;
  const float* w_stats;
  const float* bias;
  int64_t M, N;
  const int32_t* list;
  const int32_t* count;
  const int8_t* Wo;
  int64_t K;
  const void* A;
  int a_dtype;
  void* out;
};

template <typename TO>
__device__ __forceinline__ void store4(TO* p, const float (&v)[4]) {
  if constexpr (sizeof(TO) == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    uint32_t h[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = bits16(from_f32<TO>(v[i]));
    *reinterpret_cast<uint2*>(p) = make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
  }
}

template <typename TO>
__global__ void __launch_bounds__(kThreads) epilogue_kernel(const EpiParams p) {
  const int x = threadIdx.x & 31, y = threadIdx.x >> 5;
  const int64_t m0 = int64_t(blockIdx.y) * kTileM, n = int64_t(blockIdx.x) * kTileN + 4 * x;
  const bool col_ok = n < p.N;  // N % 4 == 0: the 4 columns are all in or all out
  int4 c[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t m = m0 + y + 8 * i;
    c[i] = col_ok && m < p.M ? __ldcs(reinterpret_cast<const int4*>(p.C + m * p.N + n)) : make_int4(0, 0, 0, 0);
  }
  float ws[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
  if (col_ok) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      ws[j] = p.w_stats[n + j];
      if (p.bias) b[j] = p.bias[n + j];
    }
  }
  float f[kRows][4];
#pragma unroll
  for (int i = 0; i < kRows; ++i) f[i][0] = f[i][1] = f[i][2] = f[i][3] = 0.0f;

  // Uniform across the block. Past kOutlierGather columns int8_outlier_matmul adds the whole
  // outlier product instead.
  const int total = p.count && *p.count <= kOutlierGather ? *p.count : 0;
  if (total > 0) {
    __shared__ float s_a[kTileM][kRound + 1];
    __shared__ __align__(16) float s_w[kRound][kTileN];
    __shared__ int s_list[kRound];
    const int64_t nb = int64_t(blockIdx.x) * kTileN;
    for (int base = 0; base < total; base += kRound) {
      const int cnt = min(kRound, total - base);
      if (threadIdx.x < cnt) s_list[threadIdx.x] = p.list[base + threadIdx.x];
      __syncthreads();
      batched_copy<8>(
          cnt * kTileM,
          [&](int64_t i) {
            const int64_t m = m0 + i % kTileM;
            return m < p.M ? load_any(p.A, m * p.K + s_list[i / kTileM], p.a_dtype) : 0.0f;
          },
          [&](int64_t i, float v) { s_a[i % kTileM][i / kTileM] = v; });
      batched_copy<8>(
          cnt * kTileN,
          [&](int64_t i) {
            const int64_t nn = nb + i % kTileN;
            return nn < p.N ? float(p.Wo[(base + i / kTileN) * p.N + nn]) : 0.0f;
          },
          [&](int64_t i, float v) { s_w[i / kTileN][i % kTileN] = v; });
      __syncthreads();
      for (int j = 0; j < cnt; ++j) {
        const float4 w4 = *reinterpret_cast<const float4*>(&s_w[j][4 * x]);
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
          const float a = s_a[y + 8 * i][j];
          f[i][0] += a * w4.x;
          f[i][1] += a * w4.y;
          f[i][2] += a * w4.z;
          f[i][3] += a * w4.w;
        }
      }
      __syncthreads();
    }
  }

  if (!col_ok) return;
  TO* out = static_cast<TO*>(p.out);
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t m = m0 + y + 8 * i;
    if (m >= p.M) continue;
    const float rs = p.a_stats[m];
    const int ci[4] = {c[i].x, c[i].y, c[i].z, c[i].w};
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = float(ci[j]) * (rs * ws[j]) * (1.0f / (127.0f * 127.0f));
      if (total > 0) v[j] += f[i][j] * (ws[j] / 127.0f);
      v[j] += b[j];
    }
    store4<TO>(out + m * p.N + n, v);
  }
}

}  // namespace

cudaError_t int8_dequant_epilogue(const int32_t* C, const float* a_stats, const float* w_stats,
                                  const float* bias, int64_t M, int64_t N, const int32_t* list,
                                  const int32_t* count, const int8_t* Wo, int64_t K,
                                  const void* A, int a_dtype, void* out, int out_dtype,
                                  cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  if (N % 4 != 0 || reinterpret_cast<uintptr_t>(C) % 16 != 0) return cudaErrorInvalidValue;
  const int64_t gy = (M + kTileM - 1) / kTileM, gx = (N + kTileN - 1) / kTileN;
  if (gy > 65535 || gx > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const EpiParams p{C, a_stats, w_stats, bias, M, N, list, count, Wo, K, A, a_dtype, out};
  const dim3 grid{unsigned(gx), unsigned(gy)};
  return with_dtype(out_dtype, [&](auto t) {
    epilogue_kernel<decltype(t)><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace kbit::cuda
