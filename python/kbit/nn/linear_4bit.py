"""Linear4bit: an nn.Linear whose weight is stored as NF4/FP4 blocks (QLoRA, FORMAT.md)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import _ops
from .. import functional as F
from ..quant_state import PACKED_KEY_PREFIX, QUANT_TYPES_4BIT, QuantState
from ._base import QuantizedLinearBase
from .parameter import Params4bit

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
QUANT_STORAGES = (torch.uint8, torch.int8, torch.float16, torch.bfloat16, torch.float32)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# bitsandbytes' state-dict suffixes after "<name>.weight." (the JSON entry is matched by prefix).
_STATE_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def check_4bit_options(quant_type, blocksize, quant_storage, compute_dtype) -> None:
    if quant_type not in QUANT_TYPES_4BIT:
        raise ValueError(f"kbit: quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"kbit: blocksize must be one of {BLOCKSIZES}, got {blocksize!r}")
    if quant_storage not in QUANT_STORAGES:
        raise ValueError(f"kbit: quant_storage must be one of {QUANT_STORAGES}, got {quant_storage!r}")
    if compute_dtype is not None and compute_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"kbit: compute_dtype must be None or one of {_FLOAT_DTYPES}, got {compute_dtype!r}")


class Linear4bit(QuantizedLinearBase):
    """y = x @ dequant(W)^T + b with W held as 4-bit codes plus per-block scales.

    The packed weight is the `weight` parameter (frozen, `Params4bit`); the scales and code maps are
    non-persistent buffers (`weight_absmax`, `weight_quant_map`, and with double quantization
    `weight_nested_absmax`, `weight_nested_quant_map`, `weight_offset`), so `.to()`, deepcopy,
    pickling and HF's get_memory_footprint see them, while `state_dict()` writes bitsandbytes' keys.

    A new layer holds zeros; fill it with `load_state_dict` (a kbit/bitsandbytes 4-bit state dict,
    or a float `weight` that is then quantized) or build it with `Linear4bit.from_linear`.
    `compute_dtype` (None: the input's dtype) is what the matmul runs in; the output has the
    input's dtype.
    """

    _quant_tensor_names = (
        "weight", "weight_absmax", "weight_quant_map", "weight_nested_absmax", "weight_nested_quant_map",
        "weight_offset",
    )

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        compute_dtype: Optional[torch.dtype] = None,
        quant_type: str = "nf4",
        double_quant: bool = False,
        blocksize: int = 64,
        quant_storage: torch.dtype = torch.uint8,
        device=None,
    ):
        super().__init__(in_features, out_features)
        check_4bit_options(quant_type, blocksize, quant_storage, compute_dtype)
        self.compute_dtype = compute_dtype
        n = in_features * out_features
        itemsize = torch.empty((), dtype=quant_storage).element_size()
        if _ceil_div(n, 2) % itemsize:
            raise ValueError(
                f"kbit: {out_features}x{in_features} packs into {_ceil_div(n, 2)} bytes, which is not a "
                f"whole number of {quant_storage} elements; use quant_storage=torch.uint8"
            )
        for name in self._quant_tensor_names[1:]:
            self.register_buffer(name, None, persistent=False)
        dtype = compute_dtype or torch.get_default_dtype()
        packed, state = _empty_state(n, (out_features, in_features), dtype, blocksize, quant_type,
                                     double_quant, quant_storage, device)
        self._set_quantized(packed, state)
        self._init_bias(bias, dtype, device)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        compute_dtype: Optional[torch.dtype] = None,
        quant_type: str = "nf4",
        double_quant: bool = False,
        blocksize: int = 64,
        quant_storage: torch.dtype = torch.uint8,
    ) -> "Linear4bit":
        """Quantizes a float nn.Linear on its device (the bias is reused, not copied). On the meta
        device it returns a meta layer of the right shapes without computing anything."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"kbit: from_linear needs an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        if weight.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"kbit: the weight to quantize must be a float tensor, not {weight.dtype}")
        layer = cls(linear.in_features, linear.out_features, bias=False, compute_dtype=compute_dtype,
                    quant_type=quant_type, double_quant=double_quant, blocksize=blocksize,
                    quant_storage=quant_storage, device="meta")
        layer._quantize_float(weight.detach())
        layer._take_bias(linear)
        layer.train(linear.training)
        return layer

    # ---- the quantized state -----------------------------------------------------------------
    @property
    def quant_state(self) -> QuantState:
        """A QuantState over this layer's current buffers (built on each access, so it always
        follows .to(), load_state_dict and direct buffer replacement)."""
        nested = None
        if self.weight_nested_absmax is not None:
            nested = QuantState(
                absmax=self.weight_nested_absmax, shape=torch.Size(self.weight_absmax.shape),
                dtype=torch.float32, blocksize=self.nested_blocksize, quant_type="8bit",
                code=self.weight_nested_quant_map,
            )
        return QuantState(
            absmax=self.weight_absmax, shape=torch.Size((self.out_features, self.in_features)),
            dtype=self.weight_dtype, blocksize=self.blocksize, quant_type=self.quant_type,
            code=self.weight_quant_map, offset=self.weight_offset, nested=nested,
        )

    @property
    def double_quant(self) -> bool:
        return self.weight_nested_absmax is not None

    def _set_quantized(self, packed: torch.Tensor, state: QuantState) -> None:
        self.weight = Params4bit(packed, requires_grad=False)
        self.quant_type = state.quant_type
        self.blocksize = state.blocksize
        self.weight_dtype = state.dtype  # of the float weight; bitsandbytes records it as "dtype"
        self.quant_storage = packed.dtype
        self.weight_absmax = state.absmax
        self.weight_quant_map = state.code
        nested = state.nested
        self.nested_blocksize = F.NESTED_BLOCKSIZE if nested is None else nested.blocksize
        self.weight_nested_absmax = None if nested is None else nested.absmax
        self.weight_nested_quant_map = None if nested is None else nested.code
        self.weight_offset = state.offset

    def _quantize_float(self, weight: torch.Tensor) -> None:
        opts = dict(blocksize=self.blocksize, quant_type=self.quant_type, double_quant=self.double_quant,
                    quant_storage=self.quant_storage)
        if weight.device.type == "meta":
            packed, state = _empty_state(weight.numel(), weight.shape, weight.dtype, device="meta", **opts)
        else:
            packed, state = F.quantize_4bit(weight.contiguous(), **opts)
        self._set_quantized(packed, state)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The float weight (out_features, in_features) these codes stand for (a new tensor)."""
        return F.dequantize_4bit(self.weight, self.quant_state, dtype or self.weight_dtype)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per call this is host time on the decode path (hundreds of layer calls per token), so it
        # reads the tensors straight from the module's tables (one nn.Module.__getattr__ each
        # otherwise), builds no QuantState, and converts only what has another dtype.
        params, buffers = self._parameters, self._buffers
        weight = params["weight"]
        if weight.dtype != self.quant_storage:
            raise RuntimeError(
                f"kbit: the packed 4-bit weight was cast from {self.quant_storage} to {weight.dtype}; "
                "quantized weights must not be converted"
            )
        in_dtype = x.dtype
        compute_dtype = self.compute_dtype
        if compute_dtype is not None and compute_dtype != in_dtype:
            x = x.to(compute_dtype)
        bias = params["bias"]
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        out = _ops.linear_4bit(
            x, weight, buffers["weight_absmax"], buffers["weight_nested_absmax"],
            buffers["weight_nested_quant_map"], buffers["weight_offset"], self.blocksize, self.nested_blocksize, self.quant_type,
            [self.out_features, self.in_features], bias,
        )
        return out if out.dtype == in_dtype else out.to(in_dtype)

    def extra_repr(self) -> str:
        dq = ", double_quant=True" if self.double_quant else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, quant_type={self.quant_type}, "
                f"blocksize={self.blocksize}{dq}, compute_dtype={self.compute_dtype}")

    # ---- state dicts (bitsandbytes' keys, FORMAT.md) -----------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight and bias
        if self.weight.device.type == "meta":
            # A meta layer has no quant state to write (its JSON needs real values); transformers
            # lists a meta model's state-dict keys as the keys it expects to load.
            return
        for key, value in self.quant_state.as_bnb_dict(prefix + "weight.").items():
            destination[key] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        self._load_others(state_dict, prefix, local_metadata, strict, missing, unexpected, errors,
                          ("weight",))
        key = prefix + "weight"
        if key not in state_dict:
            missing.append(key)
            return
        extras = {k: v for k, v in state_dict.items() if k.startswith(key + ".")}
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        try:
            self._load_weight(key, state_dict[key], extras, assign, strict, unexpected)
        except (ValueError, TypeError) as err:
            errors.append(str(err))

    def _load_weight(self, key, weight, extras, assign, strict, unexpected) -> None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"kbit: {key!r} must be a tensor, got {type(weight).__name__}")
        device = self._load_device(weight)
        if not extras:
            # A float checkpoint: quantize it with this layer's settings.
            shape = (self.out_features, self.in_features)
            if weight.dtype not in _FLOAT_DTYPES or tuple(weight.shape) != shape:
                raise ValueError(
                    f"kbit: {key!r} has shape {tuple(weight.shape)} and dtype {weight.dtype}, but no "
                    f"'{key}.absmax' / '{key}.{PACKED_KEY_PREFIX}<nf4|fp4>' entries: expected a packed 4-bit "
                    f"weight with its quant state, or a float weight of shape "
                    f"{(self.out_features, self.in_features)}"
                )
            with torch.no_grad():
                self._quantize_float(weight.to(device))
            return
        known = tuple(f"{key}.{s}" for s in _STATE_KEYS)
        for k in extras:
            if not (k in known or k.startswith(f"{key}.{PACKED_KEY_PREFIX}")) and strict:
                unexpected.append(k)
        state = QuantState.from_bnb_dict(extras, device=device, prefix=key + ".")
        _check_loaded(key, weight, state, (self.out_features, self.in_features))
        copy = not assign
        state.absmax = state.absmax.to(device, copy=copy)
        state.code = state.code.clone()
        if state.nested is not None:
            state.nested.absmax = state.nested.absmax.to(device, copy=copy)
            state.nested.code = state.nested.code.clone()
        self._set_quantized(weight.detach().to(device, copy=copy), state)


def _empty_state(n, shape, dtype, blocksize, quant_type, double_quant, quant_storage, device):
    """Zero-filled packed weight and quant state of the right shapes (on meta: no memory)."""
    itemsize = torch.empty((), dtype=quant_storage).element_size()
    packed = torch.zeros((_ceil_div(n, 2) // itemsize, 1), dtype=quant_storage, device=device)
    blocks = _ceil_div(n, blocksize)
    code = F.code_4bit(quant_type).to(device)
    nested = offset = None
    if double_quant:
        absmax = torch.zeros(blocks, dtype=torch.uint8, device=device)
        nested = QuantState(
            absmax=torch.zeros(_ceil_div(blocks, F.NESTED_BLOCKSIZE), dtype=torch.float32, device=device),
            shape=torch.Size((blocks,)), dtype=torch.float32, blocksize=F.NESTED_BLOCKSIZE, quant_type="8bit",
            code=F.create_dynamic_map().to(device),
        )
        offset = torch.zeros((), dtype=torch.float32, device=device)
    else:
        absmax = torch.zeros(blocks, dtype=torch.float32, device=device)
    state = QuantState(absmax=absmax, shape=torch.Size(shape), dtype=dtype, blocksize=blocksize,
                       quant_type=quant_type, code=code, offset=offset, nested=nested)
    return packed, state


def _check_loaded(key: str, weight: torch.Tensor, state: QuantState, shape: tuple) -> None:
    """Shapes that must agree between a 4-bit checkpoint entry and this layer (names the key)."""
    if tuple(state.shape) != tuple(shape):
        raise ValueError(
            f"kbit: {key!r} was quantized from shape {tuple(state.shape)}, but this layer is {shape}")
    if state.blocksize not in BLOCKSIZES:
        raise ValueError(f"kbit: {key!r} has blocksize {state.blocksize}; expected one of {BLOCKSIZES}")
    n = shape[0] * shape[1]
    nbytes = weight.numel() * weight.element_size()
    if weight.dim() != 2 or weight.shape[1] != 1 or nbytes != _ceil_div(n, 2):
        raise ValueError(
            f"kbit: {key!r} must be packed 4-bit data of shape (bytes / itemsize, 1) holding "
            f"{_ceil_div(n, 2)} bytes; got shape {tuple(weight.shape)} of {weight.dtype}"
        )
    blocks = _ceil_div(n, state.blocksize)
    if state.absmax.numel() != blocks:
        raise ValueError(
            f"kbit: '{key}.absmax' must hold {blocks} values (one per block), got {state.absmax.numel()}")
    if state.code.numel() != 16:
        raise ValueError(f"kbit: '{key}.quant_map' must hold 16 code values, got {state.code.numel()}")
    nested = state.nested
    if nested is not None:
        if nested.blocksize <= 0:
            raise ValueError(f"kbit: {key!r} has nested_blocksize {nested.blocksize}")
        want = _ceil_div(blocks, nested.blocksize)
        if nested.absmax.numel() != want:
            raise ValueError(
                f"kbit: '{key}.nested_absmax' must hold {want} values, got {nested.absmax.numel()}")
