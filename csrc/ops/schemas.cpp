// Every kbit op's schema, in one place. Kernels register per device in *_cpu.cpp / *_cuda.cpp;
// fake (meta) implementations live in python/kbit/_ops.py beside the Python wrappers.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(kbit, m) {
  // 4-bit blockwise NF4/FP4 (FORMAT.md). packed: (ceil(n/2) bytes viewed as quant_storage, 1).
  m.def("quantize_4bit(Tensor A, int blocksize, str quant_type, ScalarType quant_storage) -> (Tensor, Tensor)");
  m.def("dequantize_4bit(Tensor packed, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype) -> Tensor");
  // 8-bit blockwise with a 256-value code (double quant, optimizer states).
  m.def("quantize_blockwise(Tensor A, Tensor code, int blocksize) -> (Tensor, Tensor)");
  m.def("dequantize_blockwise(Tensor q, Tensor absmax, Tensor code, int blocksize, ScalarType dtype) -> Tensor");
  // LLM.int8(): row-wise int8 with outlier columns (sorted int64 indices, maybe empty).
  m.def("int8_vectorwise_quant(Tensor A, float threshold) -> (Tensor, Tensor, Tensor)");
  // int8 GEMM: (A_q @ W_q^T) * a_stats[:, None] * w_stats[None, :] / 127^2 + bias, in `dtype`.
  m.def("int8_linear(Tensor A_q, Tensor W_q, Tensor a_stats, Tensor w_stats, Tensor? bias, ScalarType dtype) -> Tensor");
  // The whole LLM.int8() forward of a Linear8bitLt in one op: quantize A, int8 GEMM, add the
  // 16-bit product of A's outlier columns (|x| >= threshold) with W's dequantized columns, bias.
  m.def("linear_8bit(Tensor A, Tensor W_q, Tensor w_stats, float threshold, Tensor? bias) -> Tensor");
  // 4-bit matmul C = A @ dequant(W)^T + bias, W of `shape` (N, K). With double quant, absmax is
  // uint8 and decodes as dequantize_blockwise(absmax, nested_absmax, nested_code) + nested_offset.
  m.def("linear_4bit(Tensor A, Tensor packed, Tensor absmax, Tensor? nested_absmax, Tensor? nested_code, "
        "Tensor? nested_offset, int blocksize, int nested_blocksize, str quant_type, int[] shape, Tensor? bias) -> Tensor");
  // Optimizers (python/kbit/optim): one fused Adam ("adam": L2 decay) / AdamW ("adamw": decoupled)
  // step on p in place. 8-bit states: uint8 state1/state2 indexing the sorted codes code1/code2,
  // scaled per 256-element block by float32 absmax1/absmax2 (csrc/core/optim_adam.h).
  m.def("optimizer_update_8bit_blockwise(str optimizer_name, Tensor(a!) p, Tensor g, Tensor(b!) state1, "
        "Tensor(c!) state2, Tensor(d!) absmax1, Tensor(e!) absmax2, Tensor code1, Tensor code2, float beta1, "
        "float beta2, float eps, int step, float lr, float weight_decay, float gnorm_scale) -> ()");
  m.def("optimizer_update_32bit(str optimizer_name, Tensor(a!) p, Tensor g, Tensor(b!) state1, Tensor(c!) state2, "
        "float beta1, float beta2, float eps, int step, float lr, float weight_decay, float gnorm_scale) -> ()");
  // Paged states (CUDA only): zeros in CUDA managed memory on like's device, refused when larger
  // than the free device memory; prefetch moves them to the GPU (or to the host) on the stream.
  m.def("paged_zeros(Tensor like, int[] shape, ScalarType dtype) -> Tensor");
  m.def("paged_prefetch(Tensor(a!) t, bool to_cpu=False) -> ()");
}

// `import kbit._C` loads this library, which runs the registrations above.
static PyModuleDef kbit_module = {PyModuleDef_HEAD_INIT, "_C", "kbit's compiled ops (torch.ops.kbit)", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kbit_module); }
