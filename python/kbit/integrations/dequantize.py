"""Back to float: a kbit layer as a plain nn.Linear (for merging adapters, exporting, or
transformers' `model.dequantize()`)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn import Linear4bit, Linear8bitLt


class DequantizedLinear(nn.Linear):
    """An nn.Linear (same state-dict keys) that accepts inputs of any float dtype like the kbit
    layer it replaces: the input is cast to the weight's dtype and the output back. A model
    prepared for k-bit training keeps its norms in float32, so hidden states arriving at a former
    quantized layer need not match a bf16 weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


def float_dtype_of(layer: nn.Module, default: torch.dtype = torch.float32) -> torch.dtype:
    """The float dtype a quantized layer stands for: the dtype its 4-bit weight was quantized from,
    else its bias's, else `default`."""
    if isinstance(layer, Linear4bit):
        return layer.weight_dtype
    if getattr(layer, "bias", None) is not None and layer.bias.is_floating_point():
        return layer.bias.dtype
    return default


def to_float_linear(layer: nn.Module, dtype: Optional[torch.dtype] = None,
                    weight: Optional[torch.Tensor] = None) -> "DequantizedLinear":
    """A DequantizedLinear holding `weight` (default: the layer's dequantized weight) in `dtype`."""
    if not isinstance(layer, (Linear4bit, Linear8bitLt)):
        raise TypeError(f"kbit: expected a Linear4bit or Linear8bitLt, got {type(layer).__name__}")
    dtype = dtype or float_dtype_of(layer)
    if weight is None:
        weight = layer.dequantize(torch.float32)
    device = layer.weight.device
    out = DequantizedLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                            device="meta")
    out.weight = nn.Parameter(weight.to(device=device, dtype=dtype), requires_grad=False)
    if layer.bias is not None:
        out.bias = nn.Parameter(layer.bias.detach().to(dtype), requires_grad=layer.bias.requires_grad)
    out.train(layer.training)
    return out


def dequantize_model(model: nn.Module, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Replaces every kbit layer of `model` by a float DequantizedLinear, in place."""
    replaced = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if isinstance(module, (Linear4bit, Linear8bitLt)):
            if id(module) not in replaced:
                replaced[id(module)] = to_float_linear(module, dtype)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, replaced[id(module)])
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, attr, False):
            setattr(model, attr, False)
    return model
