// CUDA registration of linear_4bit (schema in schemas.cpp): C = A @ dequant(W)^T + bias.
// Picks the kernel by the number of tokens M (rows of A flattened to 2-D):
//   M = 1             fused one-token kernel (decode GEMV on tensor cores) where it applies
//                     (blocksize >= 64, K % 64 == 0), else the skinny kernel
//   M <= 16           fused skinny kernel (the same scheme for up to 16 tokens)
//   64 <= M <= 1024   on Hopper (sm_90a build, compute capability 9.0): the fused wgmma kernel, K
//                     split across blocks on narrow layers (cuda::linear_4bit_wgmma_preferred
//                     leaves 64 tokens on small weights to the tiled kernel, more than 128 tokens
//                     on weights under 2^24 elements, and 769..1024 tokens where its last wave of
//                     blocks would be mostly idle, to dequantize + cuBLAS)
//   16 < M <= 128     otherwise: fused tiled kernel (KBIT_LINEAR4_TILED_MAX moves the limit)
//   larger, or shapes the fused kernels do not take (K % 32 != 0, unaligned, float32 A):
//                     dequantize W into an (N, K) buffer of A's dtype, then cuBLAS (at::addmm).
// KBIT_LINEAR4_PATH=decode|skinny|tiled|wgmma|dequant forces a path where it applies (benchmarks, tests).
// On H100 (benchmarks/RESULTS.md) the tiled kernel beats dequantize + cuBLAS up to ~128 tokens.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>

#include "cuda/blockwise_4bit.cuh"
#include "cuda/linear_4bit.cuh"
#include "ops/checks.h"
#include "ops/cuda_launch.h"
#include "ops/forced_path.h"

namespace kbit::ops {
namespace {

enum class Path { Auto, Skinny, Tiled, Wgmma, Dequant, Decode };

Path forced_path() {
  return Path(forced_choice("KBIT_LINEAR4_PATH", {"skinny", "tiled", "wgmma", "dequant", "decode"}));  // 0 = Auto
}

// KBIT_LINEAR4_WGMMA_TILE=128|256 forces the wgmma kernel's tokens per block (benchmarks, tests).
int wgmma_tile() {
  switch (forced_choice("KBIT_LINEAR4_WGMMA_TILE", {"128", "256"})) {
    case 1:
      return 128;
    case 2:
      return 256;
    default:
      return 0;  // the kernel picks by token count
  }
}

int64_t tiled_max() {
  const char* p = std::getenv("KBIT_LINEAR4_TILED_MAX");
  return p ? std::atoll(p) : 128;
}

// Checks the scale tensors and fills `s`; `keep` holds the contiguous tensors alive. As on the
// CPU: float32 absmax is used as is; uint8 absmax is double-quantized and needs the nested state.
void scales_of(const at::Tensor& A, const at::Tensor& absmax, const std::optional<at::Tensor>& nested_absmax,
               const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& nested_offset,
               int64_t nblocks, int64_t nested_blocksize, cuda::AbsmaxRef& s, std::vector<at::Tensor>& keep) {
  check_same_device(absmax, A, "absmax", "A");
  TORCH_CHECK_VALUE(absmax.numel() == nblocks, "kbit: absmax has ", absmax.numel(), " values but the weight needs ",
                    nblocks);
  if (absmax.scalar_type() == at::kFloat) {
    keep.push_back(absmax.contiguous());
    s.absmax = keep.back().data_ptr<float>();
    return;
  }
  TORCH_CHECK_TYPE(absmax.scalar_type() == at::kByte, "kbit: absmax must be float32, or uint8 with double "
                   "quantization; got ", absmax.scalar_type());
  TORCH_CHECK_VALUE(nested_absmax.has_value() && nested_code.has_value() && nested_offset.has_value(),
                    "kbit: a uint8 (double-quantized) absmax needs nested_absmax, nested_code and nested_offset");
  check_blocksize(nested_blocksize, "nested_blocksize");
  const auto& na = *nested_absmax;
  const auto& nc = *nested_code;
  check_dtype(na, at::kFloat, "nested_absmax");
  check_dtype(nc, at::kFloat, "nested_code");
  check_float_input(*nested_offset, "nested_offset");
  check_same_device(na, A, "nested_absmax", "A");
  check_same_device(nc, A, "nested_code", "A");
  TORCH_CHECK_VALUE(na.numel() == ceil_div(nblocks, nested_blocksize), "kbit: nested_absmax has ", na.numel(),
                    " values but ", nblocks, " absmax bytes need ", ceil_div(nblocks, nested_blocksize));
  TORCH_CHECK_VALUE(nc.numel() == 256, "kbit: nested_code must hold 256 values; got ", nc.numel());
  TORCH_CHECK_VALUE(nested_offset->numel() == 1, "kbit: nested_offset must hold one value; got ",
                    nested_offset->numel());
  keep.push_back(absmax.contiguous());
  s.qabsmax = keep.back().data_ptr<uint8_t>();
  keep.push_back(na.contiguous());
  s.nested_absmax = keep.back().data_ptr<float>();
  keep.push_back(nc.contiguous());
  s.nested_code = keep.back().data_ptr<float>();
  // A scalar; a host tensor is copied over (the kernels read it on the device).
  keep.push_back(nested_offset->to(A.device(), at::kFloat).reshape({1}).contiguous());
  s.nested_offset = keep.back().data_ptr<float>();
  s.nested_log2 = 0;
  while ((int64_t(1) << s.nested_log2) < nested_blocksize) ++s.nested_log2;
}

// Dense fallback: W dequantized into A's dtype, then cuBLAS.
at::Tensor linear_dequant(const at::Tensor& A2, const cuda::Linear4bitArgs& args, const std::optional<at::Tensor>& bias) {
  auto W = at::empty({args.N, args.K}, A2.options());
  check_launch(cuda::dequantize_4bit(args.W, args.scales, args.N * args.K, args.blocksize, args.quant_type,
                                     W.data_ptr(), cuda_dtype(A2.scalar_type()), c10::cuda::getCurrentCUDAStream()),
               "linear_4bit dequantize");
  return bias ? at::addmm(*bias, A2, W.t()) : at::mm(A2, W.t());
}

at::Tensor linear_4bit_cuda(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax,
                            const std::optional<at::Tensor>& nested_absmax,
                            const std::optional<at::Tensor>& nested_code,
                            const std::optional<at::Tensor>& nested_offset, int64_t blocksize,
                            int64_t nested_blocksize, c10::string_view quant_type, at::IntArrayRef shape,
                            const std::optional<at::Tensor>& bias) {
  check_blocksize(blocksize);
  const auto qt = parse_quant_type(std::string(quant_type));
  check_float_input(A, "A");
  TORCH_CHECK(A.is_cuda(), "kbit: A must be a CUDA tensor; got ", A.device());
  TORCH_CHECK_VALUE(shape.size() == 2, "kbit: shape must be the weight's (out_features, in_features); got ", shape);
  const int64_t N = shape[0], K = shape[1];
  TORCH_CHECK_VALUE(N >= 0 && K >= 0, "kbit: shape must not have negative sizes; got ", shape);
  TORCH_CHECK_VALUE(A.dim() >= 1 && A.size(-1) == K, "kbit: A's last dimension (", A.dim() ? A.size(-1) : 0,
                    ") must equal in_features ", K);
  check_same_device(packed, A, "packed", "A");
  const auto p = packed_bytes(packed);
  TORCH_CHECK_VALUE(p.numel() == ceil_div(N * K, 2), "kbit: packed holds ", p.numel(), " bytes; a ", N, "x", K,
                    " weight needs ", ceil_div(N * K, 2));
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) {
    check_same_device(*bias, A, "bias", "A");
    check_float_input(*bias, "bias");
    TORCH_CHECK_VALUE(bias->numel() == N, "kbit: bias must have out_features = ", N, " values; got ", bias->numel());
    b = bias->reshape({N}).to(A.scalar_type()).contiguous();
  }
  const c10::cuda::CUDAGuard guard(A.device());
  cuda::Linear4bitArgs args;
  std::vector<at::Tensor> keep;
  scales_of(A, absmax, nested_absmax, nested_code, nested_offset, ceil_div(N * K, blocksize), nested_blocksize,
            args.scales, keep);

  std::vector<int64_t> out_shape(A.sizes().begin(), A.sizes().end());
  out_shape.back() = N;
  const int64_t M = c10::multiply_integers(A.sizes().slice(0, A.dim() - 1));
  const auto A2 = A.reshape({M, K}).contiguous();
  if (M == 0 || N == 0) return at::empty(out_shape, A.options());
  if (K == 0) {
    auto out = at::zeros({M, N}, A.options());
    if (b) out.add_(*b);
    return out.view(out_shape);
  }

  args.A = A2.data_ptr();
  args.W = p.data_ptr<uint8_t>();
  args.bias = b ? b->data_ptr() : nullptr;
  args.M = M, args.N = N, args.K = K;
  args.blocksize = blocksize;
  args.quant_type = int(qt);
  args.dtype = cuda_dtype(A.scalar_type());
  args.wgmma_tile_tokens = wgmma_tile();

  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Path forced = forced_path();
  Path path = Path::Dequant;
  if (cuda::linear_4bit_fusable(args)) {
    if (forced != Path::Auto) path = forced;
    else if (cuda::linear_4bit_decode_supported(args)) path = Path::Decode;
    else if (M <= 16) path = Path::Skinny;
    else if (cuda::linear_4bit_wgmma_preferred(args)) path = Path::Wgmma;
    else path = M <= tiled_max() ? Path::Tiled : Path::Dequant;
    // A forced kernel that does not take the problem falls back to the next one that does.
    if (path == Path::Decode && !cuda::linear_4bit_decode_supported(args)) path = Path::Skinny;
    if (path == Path::Skinny && M > 16) path = Path::Tiled;
    if (path == Path::Wgmma && !cuda::linear_4bit_wgmma_supported(args)) path = Path::Tiled;
  }
  if (path == Path::Dequant) return linear_dequant(A2, args, b).view(out_shape);

  auto out = at::empty({M, N}, A.options());
  args.C = out.data_ptr();
  if (path == Path::Decode) {
    check_launch(cuda::linear_4bit_decode(args, stream), "linear_4bit decode");
  } else if (path == Path::Skinny) {
    check_launch(cuda::linear_4bit_skinny(args, stream), "linear_4bit skinny");
  } else {
    // Split K: partial sums meet in a zeroed float32 workspace, then one pass casts them.
    const bool wgmma = path == Path::Wgmma;
    const int splits = wgmma ? cuda::linear_4bit_wgmma_splits(args) : cuda::linear_4bit_tiled_splits(args);
    at::Tensor ws;
    if (splits > 1) ws = at::zeros({M, N}, A.options().dtype(at::kFloat));
    float* wsp = splits > 1 ? ws.data_ptr<float>() : nullptr;
    if (wgmma)
      check_launch(cuda::linear_4bit_wgmma(args, splits, wsp, stream), "linear_4bit wgmma");
    else
      check_launch(cuda::linear_4bit_tiled(args, splits, wsp, stream), "linear_4bit tiled");
  }
  return out.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(kbit, CUDA, m) { m.impl("linear_4bit", &linear_4bit_cuda); }

}  // namespace kbit::ops
