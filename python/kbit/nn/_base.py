"""What Linear4bit and Linear8bitLt share: dtype-safe device moves and state-dict plumbing."""

from __future__ import annotations

import torch
from torch import nn


def apply_keeping_dtype(fn, t: torch.Tensor) -> torch.Tensor:
    """Applies a Module._apply function (to(), cuda(), half(), to_empty(), ...) to a quantized tensor
    as raw bytes, so it may change device but never dtype: casting packed codes or scales would
    silently corrupt them."""
    if not (t.is_floating_point() or t.is_complex()):
        out = fn(t)  # integer tensors are never cast by the dtype-changing Module methods
        if out.dtype != t.dtype:
            raise TypeError(f"kbit: cannot convert a quantized {t.dtype} tensor to {out.dtype}")
        return out
    out = fn(t.reshape(-1).view(torch.uint8))
    if out.dtype != torch.uint8:
        raise TypeError(f"kbit: cannot convert a quantized {t.dtype} tensor to {out.dtype}")
    return out.view(t.dtype).reshape(t.shape)


class QuantizedLinearBase(nn.Linear):
    """nn.Linear subclass (so PEFT, HF and isinstance checks see a Linear with in_features,
    out_features, weight and bias) whose weight and quantization tensors keep their dtypes."""

    # Names (parameters or buffers) whose dtype must never change; set by subclasses.
    _quant_tensor_names: tuple[str, ...] = ()

    def __init__(self, in_features: int, out_features: int):
        # nn.Linear.__init__ would allocate and initialize a float weight; we never want one.
        nn.Module.__init__(self)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"kbit: {name} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features

    def reset_parameters(self) -> None:
        # Quantized weights are loaded or converted, never randomly initialized.
        pass

    def _init_bias(self, bias: bool, dtype, device) -> None:
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)

    def _take_bias(self, linear: nn.Linear) -> None:
        """Reuses a float layer's bias parameter as is (no copy)."""
        self.register_parameter("bias", linear.bias)

    def _apply(self, fn, recurse=True):
        held = []
        for name in self._quant_tensor_names:
            table = self._parameters if name in self._parameters else self._buffers
            if table.get(name) is not None:
                held.append((table, name, table[name]))
                table[name] = None  # hidden from nn.Module._apply, which would cast it
        try:
            super()._apply(fn, recurse)
        finally:
            for table, name, t in held:
                table[name] = t
        for table, name, t in held:
            with torch.no_grad():
                moved = apply_keeping_dtype(fn, t)
            if isinstance(t, nn.Parameter):
                if torch._has_compatible_shallow_copy_type(t, moved):
                    t.data = moved  # keep the Parameter object, as nn.Module._apply does
                else:
                    table[name] = type(t)(moved, requires_grad=t.requires_grad)
            else:
                table[name] = moved
        return self

    # ---- state dicts -------------------------------------------------------------------------
    def _load_others(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors, own):
        """Runs nn.Module's loader for everything except the tensors named in `own` (which the
        subclass loads itself) and drops the keys under them from `unexpected`."""
        hidden = []
        for name in own:
            table = self._parameters if name in self._parameters else self._buffers
            hidden.append((table, name, table.get(name)))
            table[name] = None
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected,
                                          errors)
        finally:
            for table, name, t in hidden:
                table[name] = t
        mine = tuple(prefix + name for name in own)
        under = tuple(m + "." for m in mine)
        unexpected[:] = [k for k in unexpected if not (k in mine or k.startswith(under))]

    def _load_device(self, incoming: torch.Tensor) -> torch.device:
        """Where loaded tensors go: the layer's device, or the checkpoint's when the layer is on meta."""
        current = self.weight.device
        return incoming.device if current.type == "meta" else current
