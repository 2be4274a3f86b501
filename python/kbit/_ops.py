"""Thin typed wrappers over torch.ops.kbit.* with their fake (meta) implementations and autograd.

The schemas live in csrc/ops/schemas.cpp; the CPU/CUDA kernels register there too. A fake kernel
here gives every op shapes and dtypes without data, which torch.compile, FakeTensor and the meta
device use."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _C  # noqa: F401  (loads the library, which registers the ops)

ops = torch.ops.kbit


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# The matmul ops carry a Python autograd kernel (register_autograd below), which every call passes
# through even when no gradient can flow: a few microseconds of Python per linear layer, the bulk
# of an eager decode step's host time. When grad mode is off or no input requires grad, that
# kernel would only redispatch below autograd; this does the same from C++. Under torch.compile
# the op is called plainly so that tracing sees the usual dispatch.
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch._C.is_grad_enabled
_any_requires_grad = torch._C._any_requires_grad
_below_autograd = torch._C._AutoDispatchBelowAutograd


def _call_differentiable(op, *args):
    if not _is_compiling() and not (_grad_enabled() and _any_requires_grad(*args)):
        with _below_autograd():
            return op(*args)
    return op(*args)


def _leading_rows(A: torch.Tensor) -> int:
    rows = 1
    for s in A.shape[:-1]:
        rows *= s
    return rows


# ---- 4-bit blockwise -------------------------------------------------------------------------
def quantize_4bit(A: torch.Tensor, blocksize: int, quant_type: str, quant_storage: torch.dtype):
    return ops.quantize_4bit.default(A, blocksize, quant_type, quant_storage)


@torch.library.register_fake("kbit::quantize_4bit")
def _(A, blocksize, quant_type, quant_storage):
    nbytes = _ceil_div(A.numel(), 2)
    itemsize = torch.empty((), dtype=quant_storage).element_size()
    packed = A.new_empty((nbytes // itemsize, 1), dtype=quant_storage)
    absmax = A.new_empty((_ceil_div(A.numel(), blocksize),), dtype=torch.float32)
    return packed, absmax


def dequantize_4bit(packed, absmax, blocksize: int, quant_type: str, shape: Sequence[int], dtype: torch.dtype):
    return ops.dequantize_4bit.default(packed, absmax, blocksize, quant_type, list(shape), dtype)


@torch.library.register_fake("kbit::dequantize_4bit")
def _(packed, absmax, blocksize, quant_type, shape, dtype):
    return packed.new_empty(tuple(shape), dtype=dtype)


# ---- 8-bit blockwise -------------------------------------------------------------------------
def quantize_blockwise(A: torch.Tensor, code: torch.Tensor, blocksize: int):
    return ops.quantize_blockwise.default(A, code, blocksize)


@torch.library.register_fake("kbit::quantize_blockwise")
def _(A, code, blocksize):
    return A.new_empty(A.shape, dtype=torch.uint8), A.new_empty((_ceil_div(A.numel(), blocksize),), dtype=torch.float32)


def dequantize_blockwise(q, absmax, code, blocksize: int, dtype: torch.dtype):
    return ops.dequantize_blockwise.default(q, absmax, code, blocksize, dtype)


@torch.library.register_fake("kbit::dequantize_blockwise")
def _(q, absmax, code, blocksize, dtype):
    return q.new_empty(q.shape, dtype=dtype)


# ---- LLM.int8() ------------------------------------------------------------------------------
def int8_vectorwise_quant(A: torch.Tensor, threshold: float):
    return ops.int8_vectorwise_quant.default(A, threshold)


@torch.library.register_fake("kbit::int8_vectorwise_quant")
def _(A, threshold):
    # The number of outlier columns depends on the data.
    n_outliers = torch.library.get_ctx().new_dynamic_size()
    return (
        A.new_empty(A.shape, dtype=torch.int8),
        A.new_empty((_leading_rows(A),), dtype=torch.float32),
        A.new_empty((n_outliers,), dtype=torch.int64),
    )


def int8_linear(A_q, W_q, a_stats, w_stats, bias: Optional[torch.Tensor], dtype: torch.dtype):
    return ops.int8_linear.default(A_q, W_q, a_stats, w_stats, bias, dtype)


@torch.library.register_fake("kbit::int8_linear")
def _(A_q, W_q, a_stats, w_stats, bias, dtype):
    return A_q.new_empty((*A_q.shape[:-1], W_q.shape[0]), dtype=dtype)


def linear_8bit(A, W_q, w_stats, threshold: float, bias: Optional[torch.Tensor]):
    return _call_differentiable(ops.linear_8bit.default, A, W_q, w_stats, threshold, bias)


@torch.library.register_fake("kbit::linear_8bit")
def _(A, W_q, w_stats, threshold, bias):
    return A.new_empty((*A.shape[:-1], W_q.shape[0]))


def _linear_8bit_setup(ctx, inputs, output):
    A, W_q, w_stats, threshold, bias = inputs
    ctx.save_for_backward(W_q, w_stats)
    ctx.bias_needs_grad = bias is not None and bias.requires_grad


def _linear_8bit_backward(ctx, grad_out):
    W_q, w_stats = ctx.saved_tensors
    # dL/dA = dL/dC @ W, with W the dequantized frozen weight (never a float copy kept around).
    W = (W_q.to(grad_out.dtype) * (w_stats / 127.0).to(grad_out.dtype).unsqueeze(1))
    grad_A = grad_out @ W
    grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.bias_needs_grad else None
    return grad_A, None, None, None, grad_bias


torch.library.register_autograd("kbit::linear_8bit", _linear_8bit_backward, setup_context=_linear_8bit_setup)


# ---- 4-bit matmul ----------------------------------------------------------------------------
def linear_4bit(
    A,
    packed,
    absmax,
    nested_absmax: Optional[torch.Tensor],
    nested_code: Optional[torch.Tensor],
    nested_offset: Optional[torch.Tensor],
    blocksize: int,
    nested_blocksize: int,
    quant_type: str,
    shape: Sequence[int],
    bias: Optional[torch.Tensor],
):
    return _call_differentiable(
        ops.linear_4bit.default, A, packed, absmax, nested_absmax, nested_code, nested_offset, blocksize,
        nested_blocksize, quant_type, shape if type(shape) is list else list(shape), bias,
    )


@torch.library.register_fake("kbit::linear_4bit")
def _(A, packed, absmax, nested_absmax, nested_code, nested_offset, blocksize, nested_blocksize, quant_type, shape,
      bias):
    return A.new_empty((*A.shape[:-1], shape[0]))


def _linear_4bit_setup(ctx, inputs, output):
    (A, packed, absmax, nested_absmax, nested_code, nested_offset, blocksize, nested_blocksize, quant_type, shape,
     bias) = inputs
    ctx.save_for_backward(packed, absmax, nested_absmax, nested_code, nested_offset)
    ctx.layout = (blocksize, nested_blocksize, quant_type, list(shape))
    ctx.bias_needs_grad = bias is not None and bias.requires_grad


def _linear_4bit_backward(ctx, grad_out):
    packed, absmax, nested_absmax, nested_code, nested_offset = ctx.saved_tensors
    blocksize, nested_blocksize, quant_type, shape = ctx.layout
    if absmax.dtype == torch.uint8:
        absmax = dequantize_blockwise(absmax, nested_absmax, nested_code, nested_blocksize, torch.float32)
        absmax = absmax + nested_offset
    # dL/dA = dL/dC @ W with W decoded from the frozen 4-bit weight for this step only.
    W = dequantize_4bit(packed, absmax, blocksize, quant_type, shape, grad_out.dtype)
    grad_A = grad_out @ W
    grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.bias_needs_grad else None
    return grad_A, None, None, None, None, None, None, None, None, None, grad_bias


torch.library.register_autograd("kbit::linear_4bit", _linear_4bit_backward, setup_context=_linear_4bit_setup)
