"""kbit's QuantConfig as transformers sees it: a QuantizationConfigMixin with quant_method "kbit".

config.json gets one of two forms:
- "kbit" (default): {"quant_method": "kbit", "bits": 4 or 8, kbit's option names...}. There is
  deliberately no `load_in_4bit` / `load_in_8bit` key: transformers sends any config holding a
  true one of those to its bitsandbytes quantizer, whatever its quant_method says.
- "bitsandbytes": the BitsAndBytesConfig dict, so that transformers + bitsandbytes load the
  checkpoint without kbit (the tensors are in bitsandbytes' format either way, FORMAT.md).
"""

from __future__ import annotations

import copy
import json
import warnings

from transformers.utils.quantization_config import QuantizationConfigMixin

from .. import config as kbit_config

SERIALIZE_AS = ("kbit", "bitsandbytes")
# Fields of a BitsAndBytesConfig dict that kbit understands (the rest is dropped with a warning).
_BNB_FIELDS = {
    "quant_method", "load_in_4bit", "load_in_8bit", "_load_in_4bit", "_load_in_8bit", "llm_int8_threshold",
    "llm_int8_skip_modules", "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage",
}


def is_bnb_dict(d: dict) -> bool:
    method = getattr(d.get("quant_method"), "value", d.get("quant_method"))
    loads = bool(d.get("load_in_4bit") or d.get("load_in_8bit"))
    return method == "bitsandbytes" or (method is None and loads)


class QuantConfig(kbit_config.QuantConfig, QuantizationConfigMixin):
    """kbit.QuantConfig plus what transformers expects of a quantization config. It has the same
    class name so that transformers accepts a kbit.QuantConfig passed to from_pretrained for a
    checkpoint saved with this one. `serialize_as` picks the config.json form (module docstring)."""

    def __init__(self, *args, serialize_as: str = "kbit", **kwargs):
        super().__init__(*args, **kwargs)
        if serialize_as not in SERIALIZE_AS:
            raise ValueError(f"kbit: serialize_as must be one of {SERIALIZE_AS}, got {serialize_as!r}")
        self.serialize_as = serialize_as

    @classmethod
    def from_quant_config(cls, config, serialize_as: str | None = None) -> "QuantConfig":
        """The transformers-facing copy of a kbit.QuantConfig (or of this class)."""
        if serialize_as is None:
            serialize_as = getattr(config, "serialize_as", "kbit")
        return cls.from_dict({**kbit_config.QuantConfig.to_dict(config), "serialize_as": serialize_as})

    @classmethod
    def from_dict(cls, config_dict: dict, return_unused_kwargs: bool = False, **kwargs):
        """Reads the "kbit" form, kbit.QuantConfig.to_dict()'s form, or a BitsAndBytesConfig dict
        (which then serializes back as bitsandbytes)."""
        d = dict(config_dict)
        if is_bnb_dict(d):
            dropped = sorted(set(d) - _BNB_FIELDS)
            if dropped:
                warnings.warn(f"kbit: ignoring bitsandbytes config fields kbit does not use: {dropped}")
            d = {k: v for k, v in d.items() if k in _BNB_FIELDS}
            d["quant_method"] = "bitsandbytes"
            d.setdefault("serialize_as", "bitsandbytes")
        else:
            method = getattr(d.get("quant_method"), "value", d.get("quant_method", "kbit"))
            if method != "kbit":
                raise ValueError(f"kbit: cannot read a quantization config with quant_method={method!r}")
            if "bits" in d:
                bits = d.pop("bits")
                if bits not in (4, 8):
                    raise ValueError(f"kbit: quantization config 'bits' must be 4 or 8, got {bits!r}")
                d["load_in_4bit"], d["load_in_8bit"] = bits == 4, bits == 8
        serialize_as = d.pop("serialize_as", "kbit")
        base = kbit_config.QuantConfig.from_dict(d)
        fields = kbit_config.QuantConfig.to_dict(base)
        fields.pop("quant_method")
        config = cls(serialize_as=serialize_as, **fields)
        for key in [k for k in kwargs if hasattr(config, k)]:
            setattr(config, key, kwargs.pop(key))
        config.validate()
        return (config, kwargs) if return_unused_kwargs else config

    def to_dict(self) -> dict:
        if self.serialize_as == "bitsandbytes":
            return self.to_bnb_dict()
        return self.to_kbit_dict()

    def to_kbit_dict(self, keep_serialize_as: bool = False) -> dict:
        d = kbit_config.QuantConfig.to_dict(self)
        d["bits"] = 4 if d.pop("load_in_4bit") else 8
        d.pop("load_in_8bit")
        if keep_serialize_as and self.serialize_as != "kbit":
            d["serialize_as"] = self.serialize_as
        return d

    def to_bnb_dict(self) -> dict:
        """The equivalent BitsAndBytesConfig dict (bitsandbytes has no blocksize option: its loader
        reads the blocksize from each weight's quant state)."""
        name = kbit_config._dtype_name
        return {
            "quant_method": "bitsandbytes",
            "load_in_4bit": self.load_in_4bit,
            "load_in_8bit": self.load_in_8bit,
            "_load_in_4bit": self.load_in_4bit,
            "_load_in_8bit": self.load_in_8bit,
            "bnb_4bit_quant_type": self.quant_type,
            "bnb_4bit_use_double_quant": self.double_quant,
            "bnb_4bit_compute_dtype": name(self.compute_dtype) or "float32",
            "bnb_4bit_quant_storage": name(self.quant_storage),
            "llm_int8_threshold": self.llm_int8_threshold,
            "llm_int8_skip_modules": None if self.skip_modules is None else list(self.skip_modules),
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
        }

    def to_diff_dict(self) -> dict:
        return self.to_dict()

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __iter__(self):
        yield from copy.deepcopy(self.to_dict()).items()

    def __eq__(self, other) -> bool:
        plain = kbit_config.QuantConfig.to_dict
        return isinstance(other, kbit_config.QuantConfig) and plain(self) == plain(other)

    __hash__ = None
