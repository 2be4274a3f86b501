"""What a quantized safetensors checkpoint holds, read from the file headers only (no tensor data,
nothing unpickled): which Linear layers are 4-bit or 8-bit, and how they are stored (FORMAT.md keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from ..quant_state import PACKED_KEY_PREFIX

_SAFETENSORS_DTYPES = {
    "U8": torch.uint8, "I8": torch.int8, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
}


@dataclass(frozen=True)
class StoredLayer:
    """One quantized Linear as stored: bits 4 or 8; for 4-bit its quant_type, whether its absmax is
    double-quantized and the dtype the packed bytes are stored as (quant_storage)."""

    bits: int
    quant_type: Optional[str] = None
    double_quant: bool = False
    storage: torch.dtype = torch.uint8


def header_dtypes(files: Iterable[str]) -> dict[str, torch.dtype]:
    """{key: dtype} over safetensors files, from their headers."""
    from safetensors import safe_open

    out = {}
    for path in files:
        if not str(path).endswith(".safetensors"):
            raise ValueError(f"kbit: {path} is not a .safetensors file")
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                code = f.get_slice(key).get_dtype()
                out[key] = _SAFETENSORS_DTYPES.get(code, torch.float32)
    return out


def stored_layers(keys: dict[str, torch.dtype]) -> dict[str, StoredLayer]:
    """{module name: StoredLayer} for every quantized Linear whose keys appear in `keys`."""
    out = {}
    marker = ".weight." + PACKED_KEY_PREFIX
    for key in keys:
        if marker in key:
            module, _, quant_type = key.partition(marker)
            out[module] = StoredLayer(
                bits=4, quant_type=quant_type, double_quant=f"{module}.weight.nested_absmax" in keys,
                storage=keys.get(f"{module}.weight", torch.uint8),
            )
        elif key.endswith(".SCB") and keys.get(key[: -len("SCB")] + "weight") == torch.int8:
            out[key[: -len(".SCB")]] = StoredLayer(bits=8)
    return out
