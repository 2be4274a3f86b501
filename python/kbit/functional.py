"""Quantize, dequantize and matmul on tensors: the user-level API over torch.ops.kbit."""

from __future__ import annotations

import functools
from typing import Optional

import torch

from . import _ops
from .quant_state import QUANT_TYPES_4BIT, QuantState

__all__ = [
    "QuantState",
    "create_dynamic_map",
    "quantize_4bit",
    "dequantize_4bit",
    "quantize_blockwise",
    "dequantize_blockwise",
    "int8_vectorwise_quant",
    "int8_quantize_weight",
    "int8_dequantize_weight",
    "linear_4bit",
    "linear_8bit",
    "code_4bit",
]

NESTED_BLOCKSIZE = 256  # double quantization re-quantizes the absmax in blocks of 256 (FORMAT.md)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
_FP4 = [v / 12.0 for v in (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)]
_FP4 = _FP4 + [-v for v in _FP4]


def code_4bit(quant_type: str, device=None) -> torch.Tensor:
    """The 16 code values of NF4 or FP4 by 4-bit index (FORMAT.md)."""
    if quant_type not in QUANT_TYPES_4BIT:
        raise ValueError(f"kbit: quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    return torch.tensor(_NF4 if quant_type == "nf4" else _FP4, dtype=torch.float32, device=device)


def create_dynamic_map(signed: bool = True, device=None) -> torch.Tensor:
    """The sorted 256-value dynamic map of 8-bit blockwise quantization (FORMAT.md), a new tensor."""
    if not signed:
        raise NotImplementedError("kbit: only the signed dynamic map is defined by the format")
    return _dynamic_map_cpu().to(device, copy=True)


@functools.lru_cache(maxsize=None)
def _dynamic_map_cpu() -> torch.Tensor:
    # Built once: every double-quantized layer asks for the map (twice while it is constructed),
    # and building it costs ~0.2 ms of host time, a visible share of loading a model.
    values = []
    for i in range(7):
        points = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float32)
        mids = (points[:-1] + points[1:]) / 2.0
        values.append(mids * (10.0 ** (i - 6)))
    pos = torch.cat(values)
    return torch.cat([pos, -pos, torch.tensor([0.0, 1.0])]).sort().values


def _check_tensor(A, name: str, dtypes=_FLOAT_DTYPES):
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"kbit: {name} must be a torch.Tensor, got {type(A).__name__}")
    if A.dtype not in dtypes:
        raise TypeError(f"kbit: {name} must be one of {', '.join(str(d) for d in dtypes)}; got {A.dtype}")


def _check_finite(A, name: str):
    # min/max propagate NaN and show Inf, in one vectorized pass without a boolean temporary.
    if A.numel() and A.device.type != "meta" and not bool(torch.isfinite(torch.stack(torch.aminmax(A))).all()):
        raise ValueError(f"kbit: {name} contains NaN or Inf; it cannot be quantized")


# ---- 4-bit ------------------------------------------------------------------------------------
def quantize_4bit(
    A: torch.Tensor,
    blocksize: int = 64,
    quant_type: str = "nf4",
    double_quant: bool = False,
    quant_storage: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, QuantState]:
    """NF4/FP4 blockwise quantization. Returns the packed bytes (shape (ceil(n/2)/itemsize, 1)) and
    the state to decode them. With double_quant the absmax is itself quantized to 8 bits."""
    _check_tensor(A, "A")
    _check_finite(A, "A")
    packed, absmax = _ops.quantize_4bit(A, blocksize, quant_type, quant_storage)
    offset = nested = None
    if double_quant:
        offset = _absmax_mean(absmax)
        qabsmax, nested = quantize_blockwise(absmax - offset, blocksize=NESTED_BLOCKSIZE)
        absmax = qabsmax
    state = QuantState(
        absmax=absmax,
        shape=A.shape,
        dtype=A.dtype,
        blocksize=blocksize,
        quant_type=quant_type,
        code=code_4bit(quant_type, A.device),
        offset=offset,
        nested=nested,
    )
    return packed, state


# Elements of absmax summed per float64 conversion in _absmax_mean (a 512 KB temporary).
_MEAN_CHUNK = 1 << 16


def _absmax_mean(absmax: torch.Tensor) -> torch.Tensor:
    """The double-quantization offset: the float32 mean of absmax, summed in float64 and rounded
    once, so that it (and every nested byte) is the same on any device and matches bitsandbytes'
    vectors (a float32 sum depends on the summation order). Summed in chunks: sum(dtype=float64)
    converts its whole input first, and a float64 copy of a large layer's absmax (7 MB for
    14336 x 4096) would raise the peak memory of loading, which quantizes while the layer's float
    weight is still held."""
    flat = absmax.reshape(-1)
    parts = [flat[i : i + _MEAN_CHUNK].sum(dtype=torch.float64) for i in range(0, flat.numel(), _MEAN_CHUNK)]
    if not parts:
        total = torch.zeros((), dtype=torch.float64, device=absmax.device)
    else:
        total = parts[0] if len(parts) == 1 else torch.stack(parts).sum()
    return (total.float() * (1.0 / max(flat.numel(), 1))).to(torch.float32)


def dequantize_4bit(packed: torch.Tensor, state: QuantState, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Decodes a 4-bit tensor back to `dtype` (default: the dtype it was quantized from)."""
    return _ops.dequantize_4bit(
        packed, state.dequantized_absmax(), state.blocksize, state.quant_type, state.shape, dtype or state.dtype
    )


# ---- 8-bit blockwise ----------------------------------------------------------------------------
def quantize_blockwise(
    A: torch.Tensor, code: Optional[torch.Tensor] = None, blocksize: int = 256
) -> tuple[torch.Tensor, QuantState]:
    """8-bit blockwise quantization with a sorted 256-value code (default: the signed dynamic map)."""
    _check_tensor(A, "A")
    if code is None:
        code = create_dynamic_map(device=A.device)
    q, absmax = _ops.quantize_blockwise(A, code, blocksize)
    return q, QuantState(absmax=absmax, shape=A.shape, dtype=A.dtype, blocksize=blocksize, quant_type="8bit", code=code)


def dequantize_blockwise(q: torch.Tensor, state: QuantState) -> torch.Tensor:
    return _ops.dequantize_blockwise(q, state.absmax, state.code, state.blocksize, state.dtype)


# ---- LLM.int8() ---------------------------------------------------------------------------------
def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """Row-wise int8 quantization. Returns (q int8, row_stats float32, outlier_cols int64): the
    columns with any |x| >= threshold are left out of q (zeros) and listed in outlier_cols."""
    _check_tensor(A, "A")
    return _ops.int8_vectorwise_quant(A, float(threshold))


def int8_quantize_weight(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8() weight quantization: (CB int8, SCB float32 row absmax), computed from W in
    float16 as bitsandbytes does so that checkpoints match byte for byte."""
    _check_tensor(W, "W")
    if W.dim() != 2:
        raise ValueError(f"kbit: W must be 2-D (out_features, in_features), got shape {tuple(W.shape)}")
    _check_finite(W, "W")
    CB, SCB, _ = _ops.int8_vectorwise_quant(W.to(torch.float16), 0.0)
    return CB, SCB


def int8_dequantize_weight(CB: torch.Tensor, SCB: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (CB.to(torch.float32) * (SCB.unsqueeze(1) / 127.0)).to(dtype)


# ---- matmuls ------------------------------------------------------------------------------------
def linear_4bit(A: torch.Tensor, packed: torch.Tensor, state: QuantState, bias: Optional[torch.Tensor] = None):
    """A @ dequant(W)^T + bias in one op; double-quantized absmax is decoded inside the kernel."""
    nested = state.nested
    return _ops.linear_4bit(
        A,
        packed,
        state.absmax,
        None if nested is None else nested.absmax,
        None if nested is None else nested.code,
        state.offset,
        state.blocksize,
        NESTED_BLOCKSIZE if nested is None else nested.blocksize,
        state.quant_type,
        state.shape,
        bias,
    )


def linear_8bit(
    A: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, threshold: float = 6.0, bias: Optional[torch.Tensor] = None
):
    """The LLM.int8() forward in one op: int8 GEMM plus the 16-bit outlier-column product."""
    return _ops.linear_8bit(A, CB, SCB, float(threshold), bias)
