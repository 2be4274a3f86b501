"""QuantState: everything besides the packed bytes that a quantized tensor needs to be decoded,
and its (de)serialization in bitsandbytes' state-dict format (FORMAT.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

# The non-tensor fields travel as UTF-8 JSON in a uint8 tensor under this key + quant_type.
PACKED_KEY_PREFIX = "quant_state.bitsandbytes__"
QUANT_TYPES_4BIT = ("nf4", "fp4")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str, key: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"kbit: quant state field {key!r} names an unknown dtype {name!r}")
    return dtype


def pack_json(fields: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(fields).encode("utf-8")), dtype=torch.uint8)


def unpack_json(tensor: torch.Tensor, key: str) -> dict:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8:
        raise ValueError(f"kbit: {key!r} must be a uint8 tensor of UTF-8 JSON")
    try:
        fields = json.loads(bytes(tensor.cpu().flatten().tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"kbit: {key!r} does not hold valid JSON: {err}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"kbit: {key!r} must hold a JSON object")
    return fields


@dataclass
class QuantState:
    """How to decode a blockwise-quantized tensor.

    For 4-bit weights `quant_type` is "nf4" or "fp4" and `code` holds the 16 code values; with double
    quantization `absmax` is uint8 and decodes as `dequantize_blockwise(absmax, nested) + offset`.
    For 8-bit blockwise tensors `quant_type` is "8bit" and `code` holds 256 values.
    """

    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    quant_type: str
    code: torch.Tensor
    offset: Optional[torch.Tensor] = None
    nested: Optional["QuantState"] = field(default=None)

    @property
    def double_quant(self) -> bool:
        return self.nested is not None

    def to(self, device) -> "QuantState":
        return replace(
            self,
            absmax=self.absmax.to(device),
            code=self.code.to(device),
            offset=None if self.offset is None else self.offset.to(device),
            nested=None if self.nested is None else self.nested.to(device),
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this state holds (for memory accounting)."""
        out = [self.absmax, self.code]
        if self.offset is not None:
            out.append(self.offset)
        if self.nested is not None:
            out.extend(self.nested.tensors())
        return out

    def dequantized_absmax(self) -> torch.Tensor:
        """The float32 per-block absmax, decoding double quantization."""
        if self.nested is None:
            return self.absmax
        n = self.nested
        decoded = torch.ops.kbit.dequantize_blockwise(self.absmax, n.absmax, n.code, n.blocksize, torch.float32)
        return decoded + self.offset

    # ---- bitsandbytes' state-dict format ------------------------------------------------------
    def as_bnb_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Tensors keyed as bitsandbytes writes them, e.g. prefix "layer.weight."."""
        if self.quant_type not in QUANT_TYPES_4BIT:
            raise ValueError(f"kbit: only 4-bit states have a bitsandbytes key format, not {self.quant_type!r}")
        fields = {
            "quant_type": self.quant_type,
            "blocksize": self.blocksize,
            "dtype": _dtype_name(self.dtype),
            "shape": list(self.shape),
        }
        out = {prefix + "absmax": self.absmax, prefix + "quant_map": self.code}
        if self.nested is not None:
            out[prefix + "nested_absmax"] = self.nested.absmax
            out[prefix + "nested_quant_map"] = self.nested.code
            fields.update(
                nested_blocksize=self.nested.blocksize,
                nested_dtype=_dtype_name(self.nested.dtype),
                nested_offset=float(self.offset.item()),
            )
        out[prefix + PACKED_KEY_PREFIX + self.quant_type] = pack_json(fields)
        return out

    @classmethod
    def from_bnb_dict(cls, tensors: dict[str, torch.Tensor], device=None, prefix: str = "") -> "QuantState":
        """Rebuilds a 4-bit state from the keys that follow `prefix` (e.g. "absmax", "quant_map", ...)."""

        def get(name: str, required: bool = True):
            key = prefix + name
            if key not in tensors:
                if required:
                    raise ValueError(f"kbit: quantized state dict is missing {key!r}")
                return None
            value = tensors[key]
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"kbit: {key!r} must be a tensor")
            return value

        packed = [k for k in tensors if k.startswith(prefix + PACKED_KEY_PREFIX)]
        if len(packed) != 1:
            raise ValueError(
                f"kbit: expected exactly one {prefix + PACKED_KEY_PREFIX}<nf4|fp4> entry, found {packed or 'none'}"
            )
        fields = unpack_json(tensors[packed[0]], packed[0])
        quant_type = fields.get("quant_type", packed[0].rsplit("__", 1)[-1])
        if quant_type not in QUANT_TYPES_4BIT:
            raise ValueError(f"kbit: {packed[0]!r} has unknown quant_type {quant_type!r}")
        for name in ("blocksize", "dtype", "shape"):
            if name not in fields:
                raise ValueError(f"kbit: {packed[0]!r} lacks the field {name!r}")
        absmax = get("absmax")
        code = get("quant_map").to(torch.float32).flatten()
        # bitsandbytes sometimes stores the 16 4-bit code values in 256 slots; keep the first 16.
        if code.numel() not in (16, 256):
            raise ValueError(f"kbit: {prefix}quant_map must hold 16 (or 256) values, got {code.numel()}")
        code = code[:16].contiguous()
        nested = offset = None
        if absmax.dtype == torch.uint8:
            for name in ("nested_blocksize", "nested_dtype", "nested_offset"):
                if name not in fields:
                    raise ValueError(f"kbit: double-quantized {packed[0]!r} lacks the field {name!r}")
            nested_code = get("nested_quant_map").to(torch.float32).flatten().contiguous()
            if nested_code.numel() != 256:
                raise ValueError(f"kbit: {prefix}nested_quant_map must hold 256 values, got {nested_code.numel()}")
            nested = cls(
                absmax=get("nested_absmax").to(device=device, dtype=torch.float32),
                shape=torch.Size(absmax.shape),
                dtype=_dtype_from_name(fields["nested_dtype"], "nested_dtype"),
                blocksize=int(fields["nested_blocksize"]),
                quant_type="8bit",
                code=nested_code.to(device),
            )
            offset = torch.tensor(float(fields["nested_offset"]), dtype=torch.float32, device=device)
        elif absmax.dtype != torch.float32:
            raise ValueError(f"kbit: {prefix}absmax must be float32 or uint8, got {absmax.dtype}")
        return cls(
            absmax=absmax.to(device).flatten(),
            shape=torch.Size(int(s) for s in fields["shape"]),
            dtype=_dtype_from_name(fields["dtype"], "dtype"),
            blocksize=int(fields["blocksize"]),
            quant_type=quant_type,
            code=code.to(device),
            offset=offset,
            nested=nested,
        )
