"""QuantConfig: how to quantize a model (the options of BitsAndBytesConfig, under kbit's names or
bitsandbytes' `bnb_4bit_*` / `llm_int8_*` names)."""

from __future__ import annotations

import json
from typing import Any, Optional

import torch

from .nn.linear_4bit import BLOCKSIZES, QUANT_STORAGES

# BitsAndBytesConfig name -> kbit name.
ALIASES = {
    "bnb_4bit_quant_type": "quant_type",
    "bnb_4bit_use_double_quant": "double_quant",
    "bnb_4bit_compute_dtype": "compute_dtype",
    "bnb_4bit_quant_storage": "quant_storage",
    "bnb_4bit_blocksize": "blocksize",
    "llm_int8_skip_modules": "skip_modules",
}
# BitsAndBytesConfig fields kbit accepts only at the value that means "nothing special".
_IGNORED_IF = {"llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False}
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_UNSET: Any = object()


def _dtype(value, name: str) -> Optional[torch.dtype]:
    """A torch.dtype from a dtype, "bfloat16", "torch.bfloat16" or None."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(dtype, torch.dtype):
            return dtype
    raise ValueError(f"kbit: {name} must be a torch.dtype or its name (e.g. 'bfloat16'), got {value!r}")


def _same(name: str, a, b) -> bool:
    if name in ("compute_dtype", "quant_storage"):
        try:
            return _dtype(a, name) == _dtype(b, name)
        except ValueError:
            return False
    return a == b


def _dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    return None if dtype is None else str(dtype).removeprefix("torch.")


class QuantConfig:
    """Quantization settings for `quantize_model` and Hugging Face loading.

    Exactly one of `load_in_4bit` (NF4/FP4, QLoRA) and `load_in_8bit` (LLM.int8()) must be set.
    4-bit: `quant_type` "nf4" or "fp4", `double_quant` (quantize the scales too, ~0.37 bit/param
    saved), `compute_dtype` (the matmul dtype; None = the input's), `blocksize`, `quant_storage`
    (dtype the packed bytes are viewed as, e.g. bfloat16 for FSDP).
    8-bit: `llm_int8_threshold` (input columns with |x| >= it run in 16-bit; 0 disables).
    `skip_modules`: module names kept in float (by dotted name component, or a regex matching the
    whole name), besides the output embeddings, which are always kept.
    """

    quant_method = "kbit"

    def __init__(
        self,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        quant_type: str = _UNSET,
        double_quant: bool = _UNSET,
        compute_dtype: Optional[torch.dtype] = _UNSET,
        blocksize: int = _UNSET,
        quant_storage: torch.dtype = _UNSET,
        llm_int8_threshold: float = 6.0,
        skip_modules: Optional[list[str]] = _UNSET,
        **bnb_names,
    ):
        given = {"quant_type": quant_type, "double_quant": double_quant, "compute_dtype": compute_dtype,
                 "blocksize": blocksize, "quant_storage": quant_storage, "skip_modules": skip_modules}
        for name, value in bnb_names.items():
            if name in _IGNORED_IF:
                if value != _IGNORED_IF[name]:
                    raise ValueError(f"kbit: {name}={value!r} is not supported")
                continue
            if name not in ALIASES:
                raise ValueError(f"kbit: QuantConfig got an unknown option {name!r}")
            target = ALIASES[name]
            if given[target] is not _UNSET and _same(target, given[target], value) is False:
                raise ValueError(f"kbit: {name}={value!r} conflicts with {target}={given[target]!r}")
            given[target] = value
        defaults = {"quant_type": "nf4", "double_quant": True, "compute_dtype": torch.bfloat16,
                    "blocksize": 64, "quant_storage": torch.uint8, "skip_modules": None}
        given = {k: defaults[k] if v is _UNSET else v for k, v in given.items()}

        self.load_in_4bit = load_in_4bit
        self.load_in_8bit = load_in_8bit
        self.quant_type = given["quant_type"]
        self.double_quant = given["double_quant"]
        self.compute_dtype = _dtype(given["compute_dtype"], "compute_dtype")
        self.blocksize = given["blocksize"]
        self.quant_storage = _dtype(given["quant_storage"], "quant_storage")
        self.llm_int8_threshold = llm_int8_threshold
        skip = given["skip_modules"]
        self.skip_modules = None if skip is None else list(skip) if isinstance(skip, (list, tuple)) else skip
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad option."""
        for name in ("load_in_4bit", "load_in_8bit", "double_quant"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"kbit: {name} must be True or False, got {getattr(self, name)!r}")
        if self.load_in_4bit == self.load_in_8bit:
            raise ValueError("kbit: set exactly one of load_in_4bit=True and load_in_8bit=True"
                             + (" (both are set)" if self.load_in_4bit else ""))
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"kbit: quant_type must be 'nf4' or 'fp4', got {self.quant_type!r}")
        if self.blocksize not in BLOCKSIZES or isinstance(self.blocksize, bool):
            raise ValueError(f"kbit: blocksize must be one of {BLOCKSIZES}, got {self.blocksize!r}")
        if self.compute_dtype is not None and self.compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(
                f"kbit: compute_dtype must be None or one of {_COMPUTE_DTYPES}, got {self.compute_dtype}")
        if self.quant_storage not in QUANT_STORAGES:
            raise ValueError(f"kbit: quant_storage must be one of {QUANT_STORAGES}, got {self.quant_storage}")
        t = self.llm_int8_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise ValueError(f"kbit: llm_int8_threshold must be a number >= 0, got {t!r}")
        s = self.skip_modules
        if s is not None and (not isinstance(s, list) or not all(isinstance(n, str) and n for n in s)):
            raise ValueError(f"kbit: skip_modules must be None or a list of module names, got {s!r}")

    @property
    def bits(self) -> int:
        return 4 if self.load_in_4bit else 8

    def to_dict(self) -> dict:
        """JSON-serializable (dtypes as names); from_dict(to_dict()) gives an equal config."""
        return {
            "quant_method": self.quant_method,
            "load_in_4bit": self.load_in_4bit,
            "load_in_8bit": self.load_in_8bit,
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "compute_dtype": _dtype_name(self.compute_dtype),
            "blocksize": self.blocksize,
            "quant_storage": _dtype_name(self.quant_storage),
            "llm_int8_threshold": self.llm_int8_threshold,
            "skip_modules": None if self.skip_modules is None else list(self.skip_modules),
        }

    @classmethod
    def from_dict(cls, config: dict) -> "QuantConfig":
        """Reads to_dict()'s output, or a BitsAndBytesConfig dict (quant_method "bitsandbytes")."""
        config = dict(config)
        method = config.pop("quant_method", cls.quant_method)
        method = getattr(method, "value", method)  # transformers' QuantizationMethod enum
        if method not in (cls.quant_method, "bitsandbytes"):
            raise ValueError(f"kbit: cannot read a quantization config with quant_method={method!r}")
        for private in ("_load_in_4bit", "_load_in_8bit"):  # BitsAndBytesConfig's copies of load_in_*
            value = config.pop(private, None)
            if value is not None:
                config.setdefault(private[1:], value)
        return cls(**config)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def __eq__(self, other) -> bool:
        return isinstance(other, QuantConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        fields = (f"{k}={v!r}" for k, v in self.to_dict().items() if k != "quant_method")
        return f"QuantConfig({', '.join(fields)})"
