// CUDA registrations of the LLM.int8() ops (kernels in csrc/cuda/int8_*.cu, pipeline in
// cuda/int8.cuh). Inputs are checked as on the CPU; work buffers come from torch's caching
// allocator; kernels run on the current stream.
//
// int8 GEMM by token count M: up to kSmallM tokens (64 on narrow layers, and for shapes the
// others refuse) the skinny tensor-core kernel reads W once at memory bandwidth with everything
// fused; above, on Hopper, the wgmma kernel with its epilogue fused (K split across blocks when the
// tiles are few) from 512 tokens, or past 128 on wide layers; elsewhere cuBLAS' int8 GEMM through
// at::_int_mm (int32 out) and one fused epilogue pass. choose_path() has the measured rule.
// KBIT_INT8_PATH=skinny|wgmma|intmm forces a path where it applies (benchmarks, tests).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cuda/int8.cuh"
#include "ops/checks.h"
#include "ops/cuda_launch.h"
#include "ops/forced_path.h"
#include "ops/int8_checks.h"

namespace kbit::ops {
namespace {

constexpr int64_t kSmallM = 32;

enum class Path { Skinny, Wgmma, IntMm };

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

Path choose_path(int64_t M, int64_t N, int64_t K, const at::Tensor& q, const at::Tensor& w) {
  const bool wgmma_ok = cuda::int8_gemm_wgmma_supported(M, N, K) && aligned16(q) && aligned16(w);
  // cuBLAS int8 GEMM via at::_int_mm: it wants more than 16 rows and K, N multiples of 8.
  const bool int_mm_ok = M > 16 && K % 8 == 0 && N % 8 == 0;
  const int forced = forced_choice("KBIT_INT8_PATH", {"skinny", "wgmma", "intmm"});
  if (forced == 1) return Path::Skinny;
  if (forced == 2 && wgmma_ok) return Path::Wgmma;
  if (forced == 3 && int_mm_ok) return Path::IntMm;
  // Measured on an H100 (benchmarks/RESULTS.md, session 5, Llama shapes, 64..4096 tokens): the
  // skinny kernel wins to 64 tokens on 4096-feature layers; below 512 tokens the wgmma kernel
  // (split-K there) wins only past one 128-token tile on wide layers (14336 and 28672 features at
  // 256 tokens), cuBLAS elsewhere.
  if (M <= kSmallM || (M <= 64 && N <= 4096)) return Path::Skinny;
  if (wgmma_ok && (M >= 512 || (M > 128 && N >= 8192))) return Path::Wgmma;
  return int_mm_ok ? Path::IntMm : Path::Skinny;
}

int dtype_code(at::ScalarType s) {
  switch (s) {
    case at::kFloat:
      return cuda::kI8F32;
    case at::kHalf:
      return cuda::kI8F16;
    case at::kBFloat16:
      return cuda::kI8BF16;
    default:
      TORCH_CHECK_TYPE(false, "kbit: expected float32, float16 or bfloat16; got ", s);
  }
}

void check_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), "kbit: ", what, " must be a CUDA tensor; got one on ", t.device());
}

// The threshold as A's dtype rounds it (the CPU reference compares in that precision); 0 = none.
float rounded_threshold(at::ScalarType s, double threshold) {
  if (!(threshold > 0)) return 0.0f;
  if (s == at::kHalf) return float(at::Half(float(threshold)));
  if (s == at::kBFloat16) return float(at::BFloat16(float(threshold)));
  return float(threshold);
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

// out (M x N) = dequantized q @ W^T + bias [+ outlier product over colmask's columns, from A].
void int8_gemm(const at::Tensor& q, const at::Tensor& rs, const at::Tensor& w, const at::Tensor& ws,
               const at::Tensor& bias, const at::Tensor& colmask, const at::Tensor& A, int64_t M, int64_t N,
               int64_t K, at::Tensor& out, bool chained) {
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const int a_code = A.defined() ? dtype_code(A.scalar_type()) : cuda::kI8F32;
  const int out_code = dtype_code(out.scalar_type());
  const void* a_ptr = A.defined() ? A.data_ptr() : nullptr;
  const Path path = choose_path(M, N, K, q, w);
  if (path == Path::Skinny) {
    check_launch(cuda::int8_linear_small(q.data_ptr<int8_t>(), rs.data_ptr<float>(), w.data_ptr<int8_t>(),
                                         ws.data_ptr<float>(), ptr_or_null<float>(bias),
                                         ptr_or_null<uint32_t>(colmask), a_ptr, a_code, M, N, K, out.data_ptr(),
                                         out_code, chained, stream),
                 "int8_linear_small");
    return;
  }
  at::Tensor list, count, Wo, Wc, Ac;
  const int64_t compact = std::min<int64_t>(K, cuda::kOutlierCompact);
  if (colmask.defined()) {
    // Sorted outlier list, q zeroed there (the int8 GEMM must not count them), A's and W's outlier
    // columns gathered for the epilogues and the outlier matmul.
    list = at::empty({K}, q.options().dtype(at::kInt));
    count = at::empty({1}, q.options().dtype(at::kInt));
    Wo = at::empty({cuda::kOutlierGather, N}, q.options().dtype(at::kChar));
    Wc = at::empty({N, compact}, q.options().dtype(at::kChar));
    Ac = at::empty({M, compact}, A.options());
    cuda::OutlierPrep prep;
    prep.colmask = ptr_or_null<uint32_t>(colmask);
    prep.cols = K, prep.rows = M, prep.N = N, prep.compact = compact;
    prep.count = count.data_ptr<int32_t>();
    prep.list32 = list.data_ptr<int32_t>();
    prep.q = q.data_ptr<int8_t>();
    prep.W = w.data_ptr<int8_t>();
    prep.Wo = Wo.data_ptr<int8_t>();
    prep.Wc = Wc.data_ptr<int8_t>();
    prep.A = a_ptr, prep.a_dtype = a_code, prep.Ac = Ac.data_ptr();
    check_launch(cuda::int8_outlier_prep(prep, stream), "int8_outlier_prep");
  }
  if (path == Path::Wgmma) {
    const int splits = cuda::int8_gemm_wgmma_splits(M, N, K);
    at::Tensor work;  // split-K partial sums and tile counters, zeroed
    if (splits > 1) work = at::zeros({cuda::int8_gemm_wgmma_workspace(M, N, splits)}, q.options().dtype(at::kInt));
    check_launch(cuda::int8_gemm_wgmma(q.data_ptr<int8_t>(), rs.data_ptr<float>(), w.data_ptr<int8_t>(),
                                       ws.data_ptr<float>(), ptr_or_null<float>(bias), M, N, K,
                                       ptr_or_null<int32_t>(list), ptr_or_null<int32_t>(count),
                                       ptr_or_null<int8_t>(Wo), a_ptr, a_code, out.data_ptr(), out_code, splits,
                                       ptr_or_null<int32_t>(work), chained, stream),
                 "int8_gemm_wgmma");
  } else {
    const at::Tensor C = at::_int_mm(q.view({M, K}), w.t());
    check_launch(cuda::int8_dequant_epilogue(C.data_ptr<int32_t>(), rs.data_ptr<float>(), ws.data_ptr<float>(),
                                             ptr_or_null<float>(bias), M, N, ptr_or_null<int32_t>(list),
                                             ptr_or_null<int32_t>(count), ptr_or_null<int8_t>(Wo), K, a_ptr,
                                             a_code, out.data_ptr(), out_code, stream),
                 "int8_dequant_epilogue");
  }
  // Many outlier columns: both GEMMs above left the outlier product out; this adds it (and does
  // nothing when there are few). The count is on the device, so it is launched either way.
  if (colmask.defined())
    check_launch(cuda::int8_outlier_matmul(list.data_ptr<int32_t>(), count.data_ptr<int32_t>(), a_ptr, a_code,
                                           w.data_ptr<int8_t>(), ws.data_ptr<float>(), M, N, K, Ac.data_ptr(),
                                           Wc.data_ptr<int8_t>(), compact, out.data_ptr(), stream),
                 "int8_outlier_matmul");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_vectorwise_quant_cuda(const at::Tensor& A,
                                                                          double threshold) {
  check_float_input(A, "A");
  check_cuda(A, "A");
  const int64_t rows = leading_rows(A, "A"), cols = A.size(-1);
  c10::cuda::CUDAGuard guard(A.device());
  auto a = A.contiguous();
  auto q = at::empty(A.sizes(), A.options().dtype(at::kChar));
  auto row_stats = at::empty({rows}, A.options().dtype(at::kFloat));
  auto none = at::empty({0}, A.options().dtype(at::kLong));
  if (rows == 0) return {q, row_stats, none};
  if (cols == 0) return {q, row_stats.zero_(), none};
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const float thr = rounded_threshold(A.scalar_type(), threshold);
  at::Tensor colmask;
  if (thr > 0) colmask = at::empty({(cols + 31) / 32}, A.options().dtype(at::kInt));
  check_launch(cuda::int8_row_quant(a.data_ptr(), dtype_code(A.scalar_type()), rows, cols, thr,
                                    q.data_ptr<int8_t>(), row_stats.data_ptr<float>(),
                                    ptr_or_null<uint32_t>(colmask), stream),
               "int8_row_quant");
  if (!colmask.defined()) return {q, row_stats, none};
  auto list = at::empty({cols}, A.options().dtype(at::kLong));
  auto count = at::empty({1}, A.options().dtype(at::kInt));
  cuda::OutlierPrep prep;
  prep.colmask = ptr_or_null<uint32_t>(colmask);
  prep.cols = cols, prep.rows = rows;
  prep.count = count.data_ptr<int32_t>();
  prep.list64 = list.data_ptr<int64_t>();
  prep.q = q.data_ptr<int8_t>();
  check_launch(cuda::int8_outlier_prep(prep, stream), "int8_outlier_prep");
  // The one host sync: this op's output size depends on the data (linear_8bit has none).
  const int64_t n = count.item<int32_t>();
  return {q, row_stats, list.narrow(0, 0, n)};
}

at::Tensor int8_linear_cuda(const at::Tensor& A_q, const at::Tensor& W_q, const at::Tensor& a_stats,
                            const at::Tensor& w_stats, const c10::optional<at::Tensor>& bias,
                            at::ScalarType dtype) {
  check_dtype(A_q, at::kChar, "A_q");
  check_dtype(a_stats, at::kFloat, "a_stats");
  check_float_dtype(dtype, "dtype");
  check_cuda(A_q, "A_q");
  const int64_t M = leading_rows(A_q, "A_q"), K = A_q.size(-1);
  check_int8_weight(W_q, w_stats, K, A_q);
  check_same_device(a_stats, A_q, "a_stats", "A_q");
  const int64_t N = W_q.size(0);
  TORCH_CHECK_VALUE(a_stats.numel() == M, "kbit: a_stats has ", a_stats.numel(), " values but A_q has ", M,
                    " rows");
  c10::cuda::CUDAGuard guard(A_q.device());
  auto b = checked_bias(bias, N, at::kFloat, A_q);
  auto out = at::empty({M, N}, A_q.options().dtype(dtype));
  if (M > 0 && N > 0) {
    auto q = A_q.contiguous().view({M, K});
    int8_gemm(q, a_stats.contiguous(), W_q.contiguous(), w_stats.contiguous(), b, at::Tensor(), at::Tensor(), M,
              N, K, out, /*chained=*/false);
  }
  return out.view(out_shape(A_q, N));
}

at::Tensor linear_8bit_cuda(const at::Tensor& A, const at::Tensor& W_q, const at::Tensor& w_stats,
                            double threshold, const c10::optional<at::Tensor>& bias) {
  check_float_input(A, "A");
  check_cuda(A, "A");
  const int64_t M = leading_rows(A, "A"), K = A.size(-1);
  check_int8_weight(W_q, w_stats, K, A);
  const int64_t N = W_q.size(0);
  c10::cuda::CUDAGuard guard(A.device());
  auto b = checked_bias(bias, N, at::kFloat, A);
  auto out = at::empty({M, N}, A.options());
  if (M == 0 || N == 0) return out.view(out_shape(A, N));
  if (K == 0) {
    out.zero_();
    if (b.defined()) out.add_(b);
    return out.view(out_shape(A, N));
  }
  auto a = A.contiguous();
  // Made contiguous before int8_row_quant: the GEMM is chained to it (PDL) and may read W before
  // that kernel has finished, so no kernel that writes W may come between them.
  const auto w = W_q.contiguous(), w_s = w_stats.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const float thr = rounded_threshold(A.scalar_type(), threshold);
  auto q = at::empty({M, K}, A.options().dtype(at::kChar));
  auto rs = at::empty({M}, A.options().dtype(at::kFloat));
  at::Tensor colmask;
  if (thr > 0) colmask = at::empty({(K + 31) / 32}, A.options().dtype(at::kInt));
  check_launch(cuda::int8_row_quant(a.data_ptr(), dtype_code(A.scalar_type()), M, K, thr, q.data_ptr<int8_t>(),
                                    rs.data_ptr<float>(), ptr_or_null<uint32_t>(colmask), stream),
               "int8_row_quant");
  int8_gemm(q, rs, w, w_s, b, colmask, a, M, N, K, out, /*chained=*/true);
  return out.view(out_shape(A, N));
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CUDA, m) {
  m.impl("int8_vectorwise_quant", &int8_vectorwise_quant_cuda);
  m.impl("int8_linear", &int8_linear_cuda);
  m.impl("linear_8bit", &linear_8bit_cuda);
}

}  // namespace kbit::ops
