"""True memory footprint of a model, and estimates from a model config without allocating."""

from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import nn

from .config import QuantConfig
from .nn import Linear4bit, Linear8bitLt
from .quant_state import QuantState

CATEGORIES = ("quantized_weights", "quant_state", "float_linear", "embeddings", "other_params", "buffers")
SCHEMES = ("fp32", "bf16", "int8", "nf4", "nf4+dq")


def _storage_key(t: torch.Tensor):
    """Identifies the memory a tensor lives in, so shared storages count once. Meta tensors have no
    memory to compare, so each counts on its own."""
    if t.device.type != "meta":
        ptr = t.untyped_storage().data_ptr()
        if ptr:
            return (str(t.device), ptr)
    return ("id", id(t))


def _nbytes(t: torch.Tensor) -> int:
    if t.device.type == "meta":
        return t.nelement() * t.element_size()
    return t.untyped_storage().nbytes()


def _classified(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """(category, tensor) for every parameter, buffer and quant-state tensor of the model."""
    for module in model.modules():
        quantized = isinstance(module, (Linear4bit, Linear8bitLt))
        for name, p in module._parameters.items():
            if p is None:
                continue
            if name == "weight" and quantized:
                yield "quantized_weights", p
            elif name == "weight" and isinstance(module, nn.Embedding):
                yield "embeddings", p
            elif name == "weight" and isinstance(module, nn.Linear):
                yield "float_linear", p
            else:
                yield "other_params", p
        for b in module._buffers.values():
            if b is not None:
                yield ("quant_state" if quantized else "buffers"), b
        state = getattr(module, "quant_state", None)  # quant states kept outside buffers
        if isinstance(state, QuantState):
            for t in state.tensors():
                yield "quant_state", t


def get_memory_footprint(model: nn.Module, breakdown: bool = False) -> Union[int, dict]:
    """Bytes held by the model: every parameter and buffer plus every quant-state tensor, each
    storage counted once. breakdown=True returns {category: bytes, ..., "total": bytes} with the
    categories of CATEGORIES (the 4-bit/8-bit weights, their scales and code maps, float Linear
    weights such as lm_head, embeddings, other parameters (norms, biases), other buffers)."""
    seen = set()
    out = dict.fromkeys(CATEGORIES, 0)
    for category, t in _classified(model):
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        out[category] += _nbytes(t)
    out["total"] = sum(out[c] for c in CATEGORIES)
    return out if breakdown else out["total"]


def parameter_count(model: nn.Module) -> dict:
    """{"total": parameters the float model had, "quantized": those now in 4/8-bit layers}."""
    total = quantized = 0
    seen = set()
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            if name == "weight" and isinstance(module, (Linear4bit, Linear8bitLt)):
                n = module.in_features * module.out_features
                quantized += n
            else:
                n = p.numel()
            total += n
    return {"total": total, "quantized": quantized}


def linear_bits_per_param(model: nn.Module, names: Optional[list[str]] = None) -> float:
    """Bits per weight parameter of Linear layers (packed weight + scales + code maps over
    in*out), for the layers `names` (default: every kbit-quantized layer)."""
    if names is None:
        names = [n for n, m in model.named_modules() if isinstance(m, (Linear4bit, Linear8bitLt))]
    nbytes = params = 0
    for name in names:
        m = model.get_submodule(name)
        tensors = [m.weight] + [b for b in m._buffers.values() if b is not None and isinstance(
            m, (Linear4bit, Linear8bitLt))]
        nbytes += sum(_nbytes(t) for t in tensors)
        params += m.in_features * m.out_features
    return 8.0 * nbytes / params if params else 0.0


# ---- estimates from a config (meta device) ----------------------------------------------------
def scheme(name_or_config: Union[str, QuantConfig]) -> tuple[str, torch.dtype, Optional[QuantConfig]]:
    """(name, dtype of the unquantized parts, QuantConfig or None) for "fp32", "bf16", "int8",
    "nf4", "nf4+dq", "fp4", "fp4+dq", or a QuantConfig."""
    if isinstance(name_or_config, QuantConfig):
        c = name_or_config
        name = "int8" if c.load_in_8bit else c.quant_type + ("+dq" if c.double_quant else "")
        return name, c.compute_dtype or torch.bfloat16, c
    name = str(name_or_config).lower()
    if name in ("fp32", "bf16"):
        return name, torch.float32 if name == "fp32" else torch.bfloat16, None
    if name == "int8":
        return name, torch.bfloat16, QuantConfig(load_in_8bit=True)
    base, _, dq = name.partition("+")
    if base in ("nf4", "fp4") and dq in ("", "dq"):
        return name, torch.bfloat16, QuantConfig(load_in_4bit=True, quant_type=base, double_quant=bool(dq))
    raise ValueError(f"kbit: unknown scheme {name_or_config!r}; expected one of {SCHEMES} (or fp4, fp4+dq)")


def as_hf_config(model_config):
    """A transformers config from a config object, a dict (with "model_type") or a config.json path."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model_config, PretrainedConfig):
        return model_config
    if isinstance(model_config, dict):
        d = dict(model_config)
        if "model_type" not in d:
            raise ValueError("kbit: a model config dict needs a 'model_type' entry")
        return AutoConfig.for_model(d.pop("model_type"), **d)
    return AutoConfig.from_pretrained(str(model_config))


def build_meta_model(model_config, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The HF model of `model_config` on the meta device (shapes and dtypes, no memory)."""
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = as_hf_config(model_config)
    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        except ValueError:  # not a causal LM architecture
            return AutoModel.from_config(cfg, dtype=dtype)


def estimate_footprint(model_config, quant=None, breakdown: bool = False) -> dict:
    """Footprint of a model from its config without allocating it: {scheme: bytes} (or
    {scheme: breakdown dict}) for FP32, BF16, INT8, NF4, NF4+DQ, or only for `quant` (a scheme
    name or a QuantConfig). Quantized schemes keep the unquantized parts in bf16 (or the
    config's compute_dtype), as loading with transformers does."""
    cfg = as_hf_config(model_config)
    from .quantize import quantize_model

    out = {}
    for s in (SCHEMES if quant is None else [quant]):
        name, dtype, qc = scheme(s)
        model = build_meta_model(cfg, dtype)
        if qc is not None:
            quantize_model(model, qc, progress=False)
        out[name] = get_memory_footprint(model, breakdown=breakdown)
    return out
