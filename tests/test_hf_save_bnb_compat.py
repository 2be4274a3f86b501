"""Checkpoints in bitsandbytes' format: kbit loads those written by transformers + bitsandbytes
(config quant_method "bitsandbytes") without bitsandbytes, and writes ones bitsandbytes loads.
The tests that need bitsandbytes itself skip without it; the hand-built checkpoint tests do not."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

import kbit
from kbit.nn import Linear4bit, Linear8bitLt

from hf_tiny import bnb_config_dict, float_model, logits, quantized_copy, save_float, write_bnb_checkpoint

pytestmark = pytest.mark.usefixtures("cpu_only")  # conftest.py says why

HAND_BUILT = {
    "nf4-dq": dict(bits=4, quant_type="nf4", double_quant=True),
    "fp4": dict(bits=4, quant_type="fp4", double_quant=False),
    "int8": dict(bits=8),
}


def _kbit_config(bits, quant_type="nf4", double_quant=True):
    if bits == 8:
        return kbit.QuantConfig(load_in_8bit=True)
    return kbit.QuantConfig(load_in_4bit=True, quant_type=quant_type, double_quant=double_quant,
                            compute_dtype=torch.float32)


def _tensors(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_loads_hand_built_bnb_checkpoint(tmp_path, name):
    spec = HAND_BUILT[name]
    path = write_bnb_checkpoint(tmp_path / "ckpt", **spec)
    model = kbit.from_pretrained(path)
    layer = model.model.layers[1].mlp.down_proj
    assert type(layer) is (Linear4bit if spec["bits"] == 4 else Linear8bitLt)
    if spec["bits"] == 4:
        assert layer.quant_type == spec["quant_type"] and layer.double_quant == spec["double_quant"]
    # The same numbers as quantizing the float model in memory with the same settings.
    reference = quantized_copy(_kbit_config(**spec))
    torch.testing.assert_close(logits(model), logits(reference), rtol=0, atol=0)
    # It saves back in bitsandbytes' form: same config method, same tensors byte for byte.
    out = tmp_path / "resaved"
    kbit.save_pretrained(model, out)
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "bitsandbytes"
    before, after = _tensors(path), _tensors(out)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key


def test_kbit_checkpoint_has_bnb_tensor_layout(tmp_path):
    """What kbit saves (quant_method "kbit" config) holds exactly the tensors a bitsandbytes save
    would: the hand-built bitsandbytes checkpoint of the same model."""
    spec = HAND_BUILT["nf4-dq"]
    model = quantized_copy(_kbit_config(**spec))
    model.save_pretrained(tmp_path / "kbit")
    write_bnb_checkpoint(tmp_path / "bnb", **spec)
    ours, theirs = _tensors(tmp_path / "kbit"), _tensors(tmp_path / "bnb")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_bnb_config_form_is_a_bitsandbytes_config(tmp_path):
    from transformers import BitsAndBytesConfig

    model = quantized_copy(_kbit_config(4))
    kbit.save_pretrained(model, tmp_path, config_format="bitsandbytes")
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    bnb = BitsAndBytesConfig.from_dict(saved)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.float32
    assert model.config.quantization_config.serialize_as == "kbit"  # only that save changed form
    with pytest.raises(ValueError, match="config_format"):
        kbit.save_pretrained(model, tmp_path, config_format="gguf")


# ---- with bitsandbytes (CPU backend) ---------------------------------------------------------------
def _bnb_configs():
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    return {
        "nf4-dq": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                     bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32),
        "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                                  bnb_4bit_compute_dtype=torch.float32),
        "int8": BitsAndBytesConfig(load_in_8bit=True),
    }


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    return save_float(tmp_path_factory.mktemp("float"))


@pytest.mark.parametrize("name", ["nf4-dq", "fp4", "int8"])
def test_loads_checkpoint_saved_by_transformers_and_bitsandbytes(float_ckpt, tmp_path, name):
    config = _bnb_configs()[name]
    bnb_model = AutoModelForCausalLM.from_pretrained(float_ckpt, quantization_config=config, device_map="cpu")
    bnb_model.save_pretrained(tmp_path)
    expected = logits(bnb_model)
    model = kbit.from_pretrained(tmp_path)
    assert type(model.model.layers[0].mlp.up_proj) is (Linear8bitLt if name == "int8" else Linear4bit)
    got = logits(model)
    if name == "int8":
        _assert_int8_close(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # kbit's own quantization of the same float weights gives the tensors bitsandbytes wrote.
    ours = tmp_path / "kbit"
    requantized = kbit.from_pretrained(float_ckpt, quantization_config=model.config.quantization_config)
    kbit.save_pretrained(requantized, ours)
    _assert_same_checkpoint(_tensors(tmp_path), _tensors(ours))


def _assert_int8_close(got, expected):
    """LLM.int8() quantizes activations per row, and bitsandbytes' CPU backend does it in float16:
    the two differ by int8 rounding noise, no more than each differs from the float model."""
    reference = logits(float_model())
    noise = (expected - reference).abs().max()
    assert (got - expected).abs().max() <= 1.5 * noise, ((got - expected).abs().max(), noise)


def _assert_same_checkpoint(theirs: dict, mine: dict) -> None:
    """bitsandbytes' CPU backend (the one here) differs from its CUDA kernels, which kbit matches
    bit for bit (test_bnb_vectors), in three harmless ways: FP4 may code a zero as -0 where kbit
    writes +0 (same value); the double-quant offset (a float mean) may differ in the last bit, and
    with it nested_absmax and the JSON; an 8-bit code of an absmax may be the neighbouring one near a
    midpoint. Everything else must be equal."""
    assert theirs.keys() == mine.keys()
    for key in theirs:
        a, b = theirs[key], mine[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if ".quant_state.bitsandbytes__" in key:
            fa, fb = (json.loads(bytes(t.tolist()).decode()) for t in (a, b))
            assert fa.keys() == fb.keys(), key
            for field in fa:
                if isinstance(fa[field], float):
                    assert fa[field] == pytest.approx(fb[field], rel=1e-6), (key, field)
                else:
                    assert fa[field] == fb[field], (key, field)
        elif key.endswith(".weight") and f"{key}.absmax" in theirs:  # packed 4-bit: compare code values
            quant_type = "fp4" if f"{key}.quant_state.bitsandbytes__fp4" in theirs else "nf4"
            code = kbit.functional.code_4bit(quant_type)
            nibbles = [torch.stack([t.flatten() >> 4, t.flatten() & 15]).long() for t in (a, b)]
            assert torch.equal(code[nibbles[0]], code[nibbles[1]]), key
        elif key.endswith(".weight.absmax") and a.dtype == torch.uint8:
            step = (a.int() - b.int()).abs()
            assert step.max() <= 1 and (step > 0).float().mean() < 0.05, key
        elif key.endswith("nested_absmax"):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=key)
        else:
            assert torch.equal(a, b), key


@pytest.mark.parametrize("name", ["nf4-dq", "int8"])
def test_kbit_checkpoint_loads_with_transformers_and_bitsandbytes(tmp_path, name):
    configs = _bnb_configs()
    import bitsandbytes as bnb

    model = quantized_copy(_kbit_config(4) if name == "nf4-dq" else _kbit_config(8))
    expected = logits(model)
    # The bitsandbytes config form: transformers + bitsandbytes load it with no kbit involved.
    kbit.save_pretrained(model, tmp_path / "bnb_form", config_format="bitsandbytes")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bnb_form", device_map="cpu")
    layer_type = bnb.nn.Linear4bit if name == "nf4-dq" else bnb.nn.Linear8bitLt
    assert isinstance(loaded.model.layers[0].mlp.up_proj, layer_type)
    _assert_close(name, logits(loaded), expected)
    # The default "kbit" form has the same tensors: bitsandbytes reads it given its own config.
    model.save_pretrained(tmp_path / "kbit_form")
    config = AutoConfig.from_pretrained(tmp_path / "kbit_form")
    config.quantization_config = configs[name].to_dict()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "kbit_form", config=config, device_map="cpu")
    assert isinstance(loaded.model.layers[0].mlp.up_proj, layer_type)
    _assert_close(name, logits(loaded), expected)


def _assert_close(name, got, expected):
    if name == "int8":
        _assert_int8_close(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bnb_dict_config_accepted_by_kbit_from_pretrained(float_ckpt):
    """A BitsAndBytesConfig-style dict given to kbit.from_pretrained quantizes with kbit."""
    model = kbit.from_pretrained(float_ckpt, quantization_config=bnb_config_dict(4))
    assert type(model.model.layers[0].self_attn.o_proj) is Linear4bit
    torch.testing.assert_close(logits(model), logits(quantized_copy(_kbit_config(4))), rtol=0, atol=0)
