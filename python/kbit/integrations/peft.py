"""LoRA on kbit layers with PEFT (QLoRA).

kbit layers are nn.Linear subclasses, so PEFT's default dispatch already wraps them in its LoRA
Linear: training, saving and reloading adapters work with plain `get_peft_model`. What PEFT's
Linear cannot do is merge, because it adds the LoRA delta to `weight` in place, and a kbit weight
is packed bytes. `KbitLoraLinear` is PEFT's LoRA Linear with merging done on the dequantized weight:
the merged layer is a float `DequantizedLinear`, so `merge_and_unload()` gives float layers whose
outputs equal the adapted model's; the quantized layer is kept while merged, so `unmerge` restores
it exactly (no requantization error).

It reaches PEFT through PEFT's public custom-module mapping (`LoraConfig._register_custom_module`,
see `lora_config` / `get_peft_model` here); `use_kbit_lora(model)` upgrades the LoRA layers of a
model built without it (e.g. by `PeftModel.from_pretrained`), and `merge_and_unload` does both and
returns a plain float model.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from peft import LoraConfig
from peft import get_peft_model as _peft_get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.tuners_utils import check_adapters_to_merge

from ..nn import Linear4bit, Linear8bitLt
from .dequantize import dequantize_model, float_dtype_of, to_float_linear

_KBIT_LAYERS = (Linear4bit, Linear8bitLt)


class KbitLoraLinear(PeftLoraLinear):
    """PEFT's LoRA Linear over a Linear4bit / Linear8bitLt, merging through dequantization.

    `requantize_on_merge` (see `set_merge_mode`): merge into a new kbit layer of the same settings
    instead of a float one, as PEFT does for bitsandbytes (stays small, adds quantization error)."""

    requantize_on_merge = False

    def __init__(self, base_layer, adapter_name, config=None, **kwargs):
        if kwargs.get("use_dora") or getattr(config, "use_dora", False):
            raise ValueError("kbit: DoRA on kbit layers is not supported; use plain LoRA")
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def _holder_of_base(self):
        """The module whose `base_layer` attribute is the innermost base layer."""
        holder = self
        while hasattr(holder.base_layer, "base_layer"):
            holder = holder.base_layer
        return holder

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.lora_A]
        if not adapter_names:
            return
        for name in adapter_names:
            if name in self.lora_variant:
                raise NotImplementedError(
                    f"kbit: cannot merge the LoRA variant of adapter {name!r} into a kbit layer")
        base = self.get_base_layer()
        quantized = base if isinstance(base, _KBIT_LAYERS) else None
        weight = base.dequantize(torch.float32) if quantized is not None else base.weight.detach().float()
        bias_delta = None
        for name in adapter_names:
            weight = weight + self.get_delta_weight(name).float()
            if self.lora_bias[name]:
                if base.bias is None:
                    raise RuntimeError(
                        "Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.")
                delta = self.lora_B[name].bias.detach().float() * self.scaling[name]
                bias_delta = delta if bias_delta is None else bias_delta + delta
        if safe_merge and not torch.isfinite(weight).all():
            raise ValueError(
                f"NaNs detected in the merged weights. The adapter(s) {adapter_names} seem to be broken")
        if quantized is not None:
            merged = to_float_linear(quantized, float_dtype_of(quantized), weight)  # owns a bias copy
            _add_bias(merged, bias_delta)
            if self.requantize_on_merge:
                merged = _quantized_like(quantized, merged)
            self._holder_of_base().base_layer = merged
            # The layer from before the first merge (not a submodule: kept out of state_dict).
            self.__dict__.setdefault("_kbit_quantized_base", quantized)
        else:
            base.weight.data = weight.to(base.weight.dtype)
            _add_bias(base, bias_delta)
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        quantized = self.__dict__.pop("_kbit_quantized_base", None)
        if quantized is not None:
            self._holder_of_base().base_layer = quantized  # the exact quantized layer from before
            self.merged_adapters.clear()
            return
        super().unmerge()  # a float base layer: PEFT subtracts the deltas


def _add_bias(layer, delta) -> None:
    if delta is not None:
        layer.bias.data = (layer.bias.detach().float() + delta).to(layer.bias.dtype)


def _quantized_like(quantized, linear):
    """`linear` quantized with the settings of the kbit layer `quantized`."""
    if isinstance(quantized, Linear4bit):
        q = quantized
        return Linear4bit.from_linear(linear, compute_dtype=q.compute_dtype, quant_type=q.quant_type,
                                      double_quant=q.double_quant, blocksize=q.blocksize,
                                      quant_storage=q.quant_storage)
    return Linear8bitLt.from_linear(linear, threshold=quantized.threshold)


def set_merge_mode(model, requantize: bool) -> int:
    """Whether merging adapters into this model's kbit layers gives float layers (False, default:
    exact) or new kbit layers (True: stays quantized). Returns how many LoRA layers it set."""
    use_kbit_lora(model)
    layers = [m for m in model.modules() if isinstance(m, KbitLoraLinear)]
    for layer in layers:
        layer.requantize_on_merge = bool(requantize)
    return len(layers)


def register(config: LoraConfig) -> LoraConfig:
    """Makes `config` wrap kbit layers in KbitLoraLinear (PEFT's custom-module mapping)."""
    if getattr(config, "use_dora", False):
        raise ValueError("kbit: DoRA on kbit layers is not supported; use plain LoRA")
    config._register_custom_module({layer: KbitLoraLinear for layer in _KBIT_LAYERS})
    return config


def lora_config(**kwargs) -> LoraConfig:
    """LoraConfig(**kwargs) with kbit's LoRA layers registered."""
    return register(LoraConfig(**kwargs))


def get_peft_model(model, config: LoraConfig, **kwargs):
    """peft.get_peft_model with kbit's LoRA layers registered on a LoraConfig."""
    if isinstance(config, LoraConfig):
        register(config)
    return _peft_get_peft_model(model, config, **kwargs)


def use_kbit_lora(model) -> int:
    """Turns PEFT's default LoRA Linear layers over kbit layers into KbitLoraLinear, in place (the
    layer keeps all its adapters and state; only merging changes). Returns how many changed."""
    changed = 0
    for module in model.modules():
        if type(module) is PeftLoraLinear and isinstance(module.get_base_layer(), _KBIT_LAYERS):
            module.__class__ = KbitLoraLinear
            changed += 1
    return changed


def merge_and_unload(model, dtype: Optional[torch.dtype] = None, dequantize: bool = True, **kwargs):
    """Merges the adapters of a PEFT model over kbit layers and returns the base model with float
    layers where LoRA was. With `dequantize` (default) the remaining kbit layers become float too and
    the model is no longer marked quantized: a plain float model to save or serve. `dtype` casts the
    whole result (default: each layer keeps the dtype it was quantized from)."""
    use_kbit_lora(model)
    merged = model.merge_and_unload(**kwargs)
    if dequantize:
        dequantize_model(merged, dtype)
        quantizer = getattr(merged, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(merged)
        elif hasattr(merged, "is_quantized"):
            merged.is_quantized = False
    if dtype is not None:
        merged.to(dtype)
    return merged
