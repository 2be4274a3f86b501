// The floor under a weight-streaming GEMV: how long a kernel that does nothing but read the packed
// weight once takes, timed the way the Python benchmarks time kbit (CUDA events around one call,
// L2 flushed before it, median of 40), beside cuBLAS's bf16 GEMV of the same layer at one token.
// bf16 time / read time bounds the speedup any kernel reading those bytes can show in the tables,
// and read bytes / read time the share of copy bandwidth it can reach. Standalone (no torch):
//
//   nvcc -O3 -std=c++17 -arch=sm_90a benchmarks/read_floor.cu -o /tmp/read_floor -lcublas
//   /tmp/read_floor write     # or: read (a clean L2 instead of one full of dirty lines)
//   /tmp/read_floor graph     # decode-step floor, see graph_floor()
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define CHECK(x)                                                                  \
  do {                                                                            \
    cudaError_t e_ = (x);                                                         \
    if (e_ != cudaSuccess) {                                                      \
      std::printf("CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__); \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

// Reads n16 16-byte vectors once, 8 loads in flight per thread, bypassing L1 (as the GEMVs do).
__global__ void __launch_bounds__(256) read_once(const uint4* p, int64_t n16, uint32_t* sink) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  uint32_t x = 0;
  for (; i + 7 * stride < n16; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u)
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w)
                   : "l"(p + i + u * stride));
#pragma unroll
    for (int u = 0; u < 8; ++u) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n16; i += stride) x ^= p[i].x ^ p[i].w;
  if (x == 0x5eed5eedu) *sink = x;  // keeps the loads; practically never true
}

__global__ void flush_write(uint4* p, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = make_uint4(1, 1, 1, 1);
}

__global__ void flush_read(const uint4* p, int64_t n, uint32_t* sink) {
  uint32_t x = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x ^= p[i].x;
  if (x == 0x5eed5eedu) *sink = x;
}

__global__ void empty_kernel() {}

struct Timer {
  uint4* flush = nullptr;
  int64_t n = (int64_t(256) << 20) / 16;
  uint32_t* sink = nullptr;
  bool write = true;

  // Median microseconds of f() between two events, the L2 flushed before each call.
  float operator()(const std::function<void()>& f, int reps = 40) {
    for (int i = 0; i < 5; ++i) f();
    CHECK(cudaDeviceSynchronize());
    std::vector<cudaEvent_t> a(reps), b(reps);
    for (int i = 0; i < reps; ++i) {
      CHECK(cudaEventCreate(&a[i]));
      CHECK(cudaEventCreate(&b[i]));
    }
    for (int i = 0; i < reps; ++i) {
      if (write)
        flush_write<<<1024, 256>>>(flush, n);
      else
        flush_read<<<1024, 256>>>(flush, n, sink);
      CHECK(cudaEventRecord(a[i]));
      f();
      CHECK(cudaEventRecord(b[i]));
    }
    CHECK(cudaDeviceSynchronize());
    std::vector<float> t(reps);
    for (int i = 0; i < reps; ++i) {
      CHECK(cudaEventElapsedTime(&t[i], a[i], b[i]));
      cudaEventDestroy(a[i]);
      cudaEventDestroy(b[i]);
    }
    std::sort(t.begin(), t.end());
    return 1000.0f * t[reps / 2];
  }
};

// Median ms of one replay of the graph that `record` captures on a fresh stream.
float graph_ms(const std::function<void(cudaStream_t)>& record, int reps = 20) {
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  record(s);  // warm-up (cuBLAS picks its kernels outside the capture)
  CHECK(cudaStreamSynchronize(s));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  record(s);
  CHECK(cudaStreamEndCapture(s, &g));
  CHECK(cudaGraphInstantiate(&ge, g, 0));
  std::vector<float> t(reps);
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) CHECK(cudaGraphLaunch(ge, s));
  for (int i = 0; i < reps; ++i) {
    CHECK(cudaEventRecord(a, s));
    CHECK(cudaGraphLaunch(ge, s));
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    CHECK(cudaEventElapsedTime(&t[i], a, b));
  }
  std::sort(t.begin(), t.end());
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
  return t[reps / 2];
}

// Every linear layer of `layers` Llama-3.1-8B decoder layers at one token, back to back in one CUDA
// graph (as bench_decode_gemv.py runs kbit and torch): cuBLAS bf16 GEMVs against kernels that only
// read what an NF4 + double-quant layer holds (packed weight, 1-byte absmax per 64, nested float
// scales per 256 blocks) or an int8 layer holds (weight, float row scale). No flush: the weights
// together are far larger than the L2.
int graph_floor(int layers) {
  const int64_t shape[7][2] = {{4096, 4096}, {1024, 4096}, {1024, 4096}, {4096, 4096},
                               {14336, 4096}, {14336, 4096}, {4096, 14336}};
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cublasHandle_t handle;
  cublasCreate(&handle);
  void* workspace;
  CHECK(cudaMalloc(&workspace, 32 << 20));
  cublasSetWorkspace(handle, workspace, 32 << 20);
  uint32_t* sink;
  CHECK(cudaMalloc(&sink, 16));
  std::vector<__nv_bfloat16*> W;
  std::vector<int64_t> nf4_bytes, int8_bytes, N, K;
  __nv_bfloat16 *x, *y;
  CHECK(cudaMalloc(&x, 14336 * 2));
  CHECK(cudaMalloc(&y, 14336 * 2));
  CHECK(cudaMemset(x, 0, 14336 * 2));
  double bf16_total = 0, nf4_total = 0, int8_total = 0;
  for (int l = 0; l < layers; ++l)
    for (const auto& s : shape) {
      __nv_bfloat16* w;
      CHECK(cudaMalloc(&w, s[0] * s[1] * 2));
      CHECK(cudaMemset(w, 0, s[0] * s[1] * 2));
      W.push_back(w);
      N.push_back(s[0]);
      K.push_back(s[1]);
      const int64_t blocks = s[0] * s[1] / 64;
      nf4_bytes.push_back(s[0] * s[1] / 2 + blocks + (blocks + 255) / 256 * 4);
      int8_bytes.push_back(s[0] * s[1] + s[0] * 4);
      bf16_total += s[0] * s[1] * 2.0;
      nf4_total += nf4_bytes.back();
      int8_total += int8_bytes.back();
    }
  const float one = 1.0f, zero = 0.0f;
  const float bf16_ms = graph_ms([&](cudaStream_t st) {
    cublasSetStream(handle, st);
    for (size_t i = 0; i < W.size(); ++i)
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(N[i]), 1, int(K[i]), &one, W[i], CUDA_R_16BF, int(K[i]), x,
                   CUDA_R_16BF, int(K[i]), &zero, y, CUDA_R_16BF, int(N[i]), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  });
  auto reads = [&](const std::vector<int64_t>& bytes) {
    return graph_ms([&](cudaStream_t st) {
      for (size_t i = 0; i < W.size(); ++i)
        read_once<<<sms * 4, 256, 0, st>>>(reinterpret_cast<const uint4*>(W[i]), bytes[i] / 16, sink);
    });
  };
  const float nf4_ms = reads(nf4_bytes), int8_ms = reads(int8_bytes);
  std::printf("# %d Llama-3.1-8B layers' linears at one token, one CUDA graph each\n", layers);
  std::printf("| contender | MB read | ms per %d layers | GB/s | bf16 / this |\n|---|---|---|---|---|\n", layers);
  std::printf("| cuBLAS bf16 GEMVs | %.0f | %.4f | %.0f | 1.00x |\n", bf16_total / 1e6, bf16_ms, bf16_total / bf16_ms / 1e6);
  std::printf("| read NF4 + DQ bytes only | %.0f | %.4f | %.0f | %.2fx |\n", nf4_total / 1e6, nf4_ms,
              nf4_total / nf4_ms / 1e6, bf16_ms / nf4_ms);
  std::printf("| read int8 bytes only | %.0f | %.4f | %.0f | %.2fx |\n", int8_total / 1e6, int8_ms,
              int8_total / int8_ms / 1e6, bf16_ms / int8_ms);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "graph") == 0) return graph_floor(argc > 2 ? std::atoi(argv[2]) : 4);
  Timer timer;
  timer.write = !(argc > 1 && std::strcmp(argv[1], "read") == 0);
  CHECK(cudaMalloc(&timer.flush, timer.n * 16));
  CHECK(cudaMemset(timer.flush, 1, timer.n * 16));
  CHECK(cudaMalloc(&timer.sink, 16));
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cublasHandle_t handle;
  cublasCreate(&handle);

  const int64_t copy_bytes = int64_t(1) << 30;
  void *src, *dst;
  CHECK(cudaMalloc(&src, copy_bytes));
  CHECK(cudaMalloc(&dst, copy_bytes));
  CHECK(cudaMemset(src, 3, copy_bytes));
  const float copy_us = timer([&] { cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice); });
  const double copy_bw = 2.0 * copy_bytes / (copy_us * 1e-6);
  CHECK(cudaFree(src));
  CHECK(cudaFree(dst));
  const float empty_us = timer([] { empty_kernel<<<1, 32>>>(); });
  std::printf("# flush %s; copy bandwidth %.2f TB/s; an empty kernel measures %.1f us\n",
              timer.write ? "write" : "read", copy_bw / 1e12, empty_us);
  std::printf("| layer (out x in) | bf16 GEMV us | read N*K bytes (int8) us | %% copy BW | bf16 / read "
              "| read N*K/2 bytes (4-bit) us | %% copy BW | bf16 / read |\n|---|---|---|---|---|---|---|---|\n");

  const int64_t shapes[4][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}, {28672, 8192}};
  for (const auto& s : shapes) {
    const int64_t N = s[0], K = s[1];
    __nv_bfloat16 *W, *x, *y;
    CHECK(cudaMalloc(&W, N * K * 2));
    CHECK(cudaMalloc(&x, K * 2));
    CHECK(cudaMalloc(&y, N * 2));
    CHECK(cudaMemset(W, 0, N * K * 2));
    CHECK(cudaMemset(x, 0, K * 2));
    const float one = 1.0f, zero = 0.0f;
    const float bf16_us = timer([&] {
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(N), 1, int(K), &one, W, CUDA_R_16BF, int(K), x, CUDA_R_16BF,
                   int(K), &zero, y, CUDA_R_16BF, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    });
    const uint4* bytes = reinterpret_cast<const uint4*>(W);
    const float int8_us = timer([&] { read_once<<<sms * 4, 256>>>(bytes, N * K / 16, timer.sink); });
    const float nf4_us = timer([&] { read_once<<<sms * 4, 256>>>(bytes, N * K / 32, timer.sink); });
    CHECK(cudaGetLastError());
    std::printf("| %lldx%lld | %.1f | %.1f | %.0f%% | %.2fx | %.1f | %.0f%% | %.2fx |\n", (long long)N, (long long)K,
                bf16_us, int8_us, 100.0 * N * K / (int8_us * 1e-6) / copy_bw, bf16_us / int8_us, nf4_us,
                100.0 * N * K / 2 / (nf4_us * 1e-6) / copy_bw, bf16_us / nf4_us);
    CHECK(cudaFree(W));
    CHECK(cudaFree(x));
    CHECK(cudaFree(y));
  }
  return 0;
}
