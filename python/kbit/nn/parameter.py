"""The parameter type of a packed 4-bit weight.

It is an ordinary frozen nn.Parameter whose class name is `Params4bit`. PEFT's
prepare_model_for_kbit_training casts every bf16/fp16 parameter to fp32 unless its class has that
name, and accelerate keeps such parameters out of FSDP sharding when they are not floating point;
a packed weight stored as bf16 (quant_storage) must never be cast, so the name matters.
"""

from __future__ import annotations

import torch


class Params4bit(torch.nn.Parameter):
    """Packed NF4/FP4 bytes, viewed as the layer's quant_storage dtype. Frozen by default."""

    def __new__(cls, data: torch.Tensor | None = None, requires_grad: bool = False):
        if data is None:
            data = torch.empty(0, dtype=torch.uint8)
        return torch.Tensor._make_subclass(cls, data, requires_grad)

    def __reduce_ex__(self, proto):
        # nn.Parameter pickles as a plain Parameter; keep the type through torch.save / pickle.
        return (Params4bit, (self.data, self.requires_grad))

    def __repr__(self) -> str:
        return "Params4bit containing:\n" + torch.Tensor.__repr__(self.data)
