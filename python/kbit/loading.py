"""kbit.from_pretrained / kbit.save_pretrained: Hugging Face loading and saving of quantized models,
including checkpoints written by transformers + bitsandbytes, without bitsandbytes."""

from __future__ import annotations

import warnings
from typing import Optional

# from_pretrained keywords that also locate the config.
_CONFIG_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code", "subfolder")


def _hf():
    from .integrations import register_with_transformers

    register_with_transformers()
    from .integrations import hf_config

    return hf_config


def from_pretrained(
    path,
    quantization_config=None,
    model_class=None,
    allow_bin: bool = False,
    **kwargs,
):
    """Loads a Hugging Face model with kbit layers.

    - `quantization_config` given (a kbit.QuantConfig or a BitsAndBytesConfig-style dict): a float
      checkpoint is quantized while it loads, layer by layer.
    - None: a checkpoint already quantized by kbit, or by transformers + bitsandbytes (config.json
      quant_method "bitsandbytes", 4-bit or 8-bit), loads into kbit layers; bitsandbytes is not needed
      and gives the same outputs. Such a model saves back in the form it was read in.
    - A plain float checkpoint without a config loads as transformers would.

    Only .safetensors files are read unless `allow_bin=True` (then .bin files load with
    weights_only=True; nothing is ever unpickled). Other keywords go to `model_class.from_pretrained`
    (default AutoModelForCausalLM): device_map, dtype, attn_implementation, ...
    """
    if kwargs.get("weights_only") is False:
        raise ValueError("kbit: weights_only=False is refused: checkpoints are never unpickled")
    hf_config = _hf()
    from transformers import AutoConfig, AutoModelForCausalLM

    model_class = model_class or AutoModelForCausalLM
    config = kwargs.pop("config", None)
    if config is None:
        config = AutoConfig.from_pretrained(path, **{k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs})
    stored = getattr(config, "quantization_config", None)
    if stored is not None:
        stored = stored if isinstance(stored, dict) else stored.to_dict()
        method = getattr(stored.get("quant_method"), "value", stored.get("quant_method"))
        if hf_config.is_bnb_dict(stored) or method == "kbit":
            if quantization_config is not None:
                warnings.warn(
                    "kbit: the checkpoint is already quantized; its own quantization config is used")
            quantization_config = None
            # transformers picks the quantizer from this dict: kbit's form, remembering the original one.
            stored = hf_config.QuantConfig.from_dict(stored)
            config.quantization_config = stored.to_kbit_dict(keep_serialize_as=True)
    if quantization_config is not None:
        if isinstance(quantization_config, dict):
            quantization_config = hf_config.QuantConfig.from_dict(quantization_config)
        kwargs["quantization_config"] = hf_config.QuantConfig.from_quant_config(quantization_config)
    if not allow_bin:
        kwargs.setdefault("use_safetensors", True)
    return model_class.from_pretrained(path, config=config, **kwargs)


def save_pretrained(model, path, config_format: Optional[str] = None, **kwargs):
    """model.save_pretrained(path) for a kbit model (safetensors, bitsandbytes' tensor format).

    config_format: "kbit" writes quant_method "kbit" to config.json (reloads with
    kbit.from_pretrained, or AutoModel*.from_pretrained after `import kbit`); "bitsandbytes" writes
    the equivalent BitsAndBytesConfig so that transformers + bitsandbytes load it without kbit
    (kbit.from_pretrained still does); None keeps the model's current form.
    """
    hf_config = _hf()
    from .quantize import iter_quantized

    if getattr(model, "hf_quantizer", None) is None and next(iter_quantized(model), None) is not None:
        raise ValueError(
            "kbit: this model has kbit layers but no quantization config; quantize it with "
            "kbit.quantize_model or load it with kbit.from_pretrained"
        )
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    if config_format is None or not isinstance(qc, hf_config.QuantConfig):
        if config_format is not None:
            raise ValueError("kbit: config_format needs a model quantized by kbit")
        return model.save_pretrained(path, **kwargs)
    if config_format not in hf_config.SERIALIZE_AS:
        raise ValueError(
            f"kbit: config_format must be one of {hf_config.SERIALIZE_AS}, got {config_format!r}")
    before = qc.serialize_as
    qc.serialize_as = config_format
    try:
        return model.save_pretrained(path, **kwargs)
    finally:
        qc.serialize_as = before


__all__ = ["from_pretrained", "save_pretrained"]
