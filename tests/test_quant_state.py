"""QuantState's bitsandbytes state-dict format: exact keys, JSON fields, round trip, clear errors."""

import json

import pytest
import torch

import kbit.functional as F
from kbit.quant_state import QuantState, pack_json


def _json(t):
    return json.loads(bytes(t.tolist()).decode())


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bnb_dict_keys_and_round_trip(double_quant, quant_type):
    W = torch.randn(32, 80, dtype=torch.bfloat16)
    packed, state = F.quantize_4bit(W, quant_type=quant_type, double_quant=double_quant)
    d = state.as_bnb_dict("layer.weight.")
    expected = {"layer.weight.absmax", "layer.weight.quant_map", f"layer.weight.quant_state.bitsandbytes__{quant_type}"}
    if double_quant:
        expected |= {"layer.weight.nested_absmax", "layer.weight.nested_quant_map"}
    assert set(d) == expected
    fields = _json(d[f"layer.weight.quant_state.bitsandbytes__{quant_type}"])
    assert fields["quant_type"] == quant_type and fields["blocksize"] == 64
    assert fields["dtype"] == "bfloat16" and fields["shape"] == [32, 80]
    if double_quant:
        assert fields["nested_blocksize"] == 256 and fields["nested_dtype"] == "float32"
        assert fields["nested_offset"] == pytest.approx(state.offset.item())
    back = QuantState.from_bnb_dict(d, prefix="layer.weight.")
    torch.testing.assert_close(F.dequantize_4bit(packed, back), F.dequantize_4bit(packed, state), rtol=0, atol=0)


def test_from_bnb_dict_accepts_256_slot_quant_map():
    packed, state = F.quantize_4bit(torch.randn(16, 16))
    d = state.as_bnb_dict()
    d["quant_map"] = torch.cat([d["quant_map"], torch.zeros(240)])
    back = QuantState.from_bnb_dict(d)
    assert back.code.numel() == 16


def test_from_bnb_dict_errors_name_the_key():
    _, state = F.quantize_4bit(torch.randn(16, 16), double_quant=True)
    d = state.as_bnb_dict("w.")
    broken = dict(d)
    del broken["w.nested_absmax"]
    with pytest.raises(ValueError, match="w.nested_absmax"):
        QuantState.from_bnb_dict(broken, prefix="w.")
    broken = dict(d)
    broken["w.quant_state.bitsandbytes__nf4"] = torch.tensor(list(b"{not json"), dtype=torch.uint8)
    with pytest.raises(ValueError, match="valid JSON"):
        QuantState.from_bnb_dict(broken, prefix="w.")
    broken = dict(d)
    broken["w.quant_state.bitsandbytes__nf4"] = pack_json({"quant_type": "nf4", "blocksize": 64, "shape": [16, 16]})
    with pytest.raises(ValueError, match="dtype"):
        QuantState.from_bnb_dict(broken, prefix="w.")
    broken = {k: v for k, v in d.items() if "quant_state" not in k}
    with pytest.raises(ValueError, match="exactly one"):
        QuantState.from_bnb_dict(broken, prefix="w.")


def test_to_moves_every_tensor():
    _, state = F.quantize_4bit(torch.randn(16, 16), double_quant=True)
    moved = state.to("meta")
    assert all(t.device.type == "meta" for t in moved.tensors())
    assert all(t.device.type == "cpu" for t in state.tensors())
