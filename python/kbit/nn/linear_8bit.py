"""Linear8bitLt: an nn.Linear whose weight is stored as LLM.int8() rows (FORMAT.md)."""

from __future__ import annotations

import torch
from torch import nn

from .. import _ops
from .. import functional as F
from ._base import QuantizedLinearBase

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Linear8bitLt(QuantizedLinearBase):
    """y = x @ W^T + b with W held as int8 rows `weight` (CB) and their float32 absmax `SCB`.

    The forward is LLM.int8(): input columns with any |x| >= threshold are multiplied in 16-bit,
    the rest in int8 (threshold 0 disables that). The output has the input's dtype. State dicts
    use bitsandbytes' keys: weight (int8), bias, SCB, weight_format (uint8 0 = row-major).
    """

    _quant_tensor_names = ("weight", "SCB")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, threshold: float = 6.0,
                 device=None):
        super().__init__(in_features, out_features)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
            raise ValueError(f"kbit: threshold must be a number >= 0, got {threshold!r}")
        self.threshold = float(threshold)
        self.weight = nn.Parameter(
            torch.zeros((out_features, in_features), dtype=torch.int8, device=device), requires_grad=False
        )
        self.register_buffer("SCB", torch.zeros(out_features, dtype=torch.float32, device=device))
        self._init_bias(bias, torch.get_default_dtype(), device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float = 6.0) -> "Linear8bitLt":
        """Quantizes a float nn.Linear on its device (the bias is reused, not copied). On the meta
        device it returns a meta layer without computing anything."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"kbit: from_linear needs an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=False, threshold=threshold, device="meta")
        layer._quantize_float(linear.weight.detach())
        layer._take_bias(linear)
        layer.train(linear.training)
        return layer

    def _quantize_float(self, weight: torch.Tensor) -> None:
        if weight.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"kbit: the weight to quantize must be one of {_FLOAT_DTYPES}, got {weight.dtype}")
        if weight.device.type == "meta":
            CB = torch.empty(weight.shape, dtype=torch.int8, device="meta")
            SCB = torch.empty(weight.shape[0], dtype=torch.float32, device="meta")
        else:
            CB, SCB = F.int8_quantize_weight(weight.contiguous())
        self.weight = nn.Parameter(CB, requires_grad=False)
        self.SCB = SCB

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight (out_features, in_features) these int8 rows stand for (a new tensor)."""
        return F.int8_dequantize_weight(self.weight, self.SCB, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Host time per call matters in decode: tensors come straight from the module's tables (no
        # nn.Module.__getattr__), and the bias is converted only when its dtype differs.
        params = self._parameters
        bias = params["bias"]
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return _ops.linear_8bit(x, params["weight"], self._buffers["SCB"], self.threshold, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, threshold={self.threshold}")

    # ---- state dicts (bitsandbytes' keys, FORMAT.md) -----------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight, bias, SCB
        if self.weight.device.type != "meta":  # transformers takes a meta model's keys as the ones to load
            destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        own = ("weight", "SCB", "weight_format")
        self._load_others(state_dict, prefix, local_metadata, strict, missing, unexpected, errors, own[:2])
        unexpected[:] = [k for k in unexpected if k != prefix + "weight_format"]
        key = prefix + "weight"
        if key not in state_dict:
            missing.append(key)
            return
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        try:
            self._load_weight(prefix, state_dict, assign)
        except (ValueError, TypeError) as err:
            errors.append(str(err))

    def _load_weight(self, prefix, state_dict, assign) -> None:
        key, scb_key, fmt_key = prefix + "weight", prefix + "SCB", prefix + "weight_format"
        weight = state_dict[key]
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"kbit: {key!r} must be a tensor, got {type(weight).__name__}")
        shape = (self.out_features, self.in_features)
        if tuple(weight.shape) != shape:
            raise ValueError(f"kbit: {key!r} has shape {tuple(weight.shape)}, expected {shape}")
        device = self._load_device(weight)
        if weight.dtype in _FLOAT_DTYPES and scb_key not in state_dict:
            with torch.no_grad():
                self._quantize_float(weight.to(device))  # a float checkpoint: quantize it
            return
        if weight.dtype != torch.int8:
            raise ValueError(
                f"kbit: {key!r} must be int8 (or a float weight without {scb_key!r}), got {weight.dtype}")
        if scb_key not in state_dict:
            raise ValueError(f"kbit: int8 weight {key!r} needs its row scales {scb_key!r}, which are missing")
        scb = state_dict[scb_key]
        is_tensor = isinstance(scb, torch.Tensor)
        if not is_tensor or not scb.is_floating_point() or tuple(scb.shape) != (shape[0],):
            got = f"shape {tuple(scb.shape)} of {scb.dtype}" if is_tensor else type(scb).__name__
            raise ValueError(f"kbit: {scb_key!r} must be a float tensor of shape ({shape[0]},), got {got}")
        if fmt_key in state_dict:
            fmt = state_dict[fmt_key]
            value = fmt.item() if isinstance(fmt, torch.Tensor) and fmt.numel() == 1 else fmt
            if value != 0:
                raise ValueError(
                    f"kbit: {fmt_key!r} is {value!r}; only 0 (row-major int8, what bitsandbytes >= 0.45 "
                    "writes) is supported"
                )
        self.weight = nn.Parameter(weight.detach().to(device, copy=not assign), requires_grad=False)
        self.SCB = scb.detach().to(device=device, dtype=torch.float32, copy=not assign)
