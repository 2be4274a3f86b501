"""kbit.get_memory_footprint / estimate_footprint: exact byte arithmetic (FORMAT.md) and agreement
with transformers' own count."""

import copy

import pytest
import torch
from torch import nn

from kbit.config import QuantConfig
from kbit.memory import estimate_footprint, get_memory_footprint, linear_bits_per_param, parameter_count
from kbit.nn import Linear4bit, Linear8bitLt
from kbit.quantize import quantize_model

OUT, IN = 384, 512  # n = 196608 weights = 3072 blocks of 64 = 12 nested blocks of 256
N = OUT * IN


def _layer(cls, **opts):
    lin = nn.Linear(IN, OUT, bias=False)
    return cls.from_linear(lin, **opts)


def test_nf4_bytes_exact():
    # 4 bits per weight + one float32 absmax per 64 weights + the 16-value code map.
    assert get_memory_footprint(_layer(Linear4bit)) == N // 2 + 4 * (N // 64) + 16 * 4
    assert linear_bits_per_param(nn.Sequential(_layer(Linear4bit))) == pytest.approx(4.5 + 8 * 64 / N)


def test_nf4_double_quant_bytes_exact():
    # uint8 absmax per block, float32 nested absmax per 256 blocks, 256-value nested map, offset.
    expected = N // 2 + N // 64 + 4 * (N // 64 // 256) + 256 * 4 + 16 * 4 + 4
    layer = _layer(Linear4bit, double_quant=True)
    assert get_memory_footprint(layer) == expected
    bits = get_memory_footprint(layer, breakdown=True)
    assert bits["quantized_weights"] == N // 2 and bits["quant_state"] == expected - N // 2
    # FORMAT.md: ~4.127 bits/param (4 + 8/64 + 32/(64*256)) plus the fixed per-layer maps.
    assert 8 * (N // 2 + N // 64 + 4 * (N // 64 // 256)) / N == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))


def test_int8_bytes_exact():
    # 8 bits per weight + one float32 scale per output row.
    assert get_memory_footprint(_layer(Linear8bitLt)) == N + 4 * OUT


def test_quant_storage_does_not_change_bytes():
    assert get_memory_footprint(_layer(Linear4bit, quant_storage=torch.bfloat16)) == \
        get_memory_footprint(_layer(Linear4bit))


def test_meta_layers_count_the_same():
    with torch.device("meta"):
        lin = nn.Linear(IN, OUT, bias=False)
    for cls, opts in ((Linear4bit, {}), (Linear4bit, {"double_quant": True}), (Linear8bitLt, {})):
        assert get_memory_footprint(cls.from_linear(lin, **opts)) == get_memory_footprint(_layer(cls, **opts))


def test_shared_storage_counted_once():
    a = nn.Linear(16, 16)
    model = nn.Sequential(a, nn.Linear(16, 16))
    model[1].weight = a.weight  # tied
    assert get_memory_footprint(model) == 16 * 16 * 4 + 2 * 16 * 4
    view = nn.Module()
    base = torch.zeros(100)
    view.register_buffer("x", base[:50])
    view.register_buffer("y", base[50:])
    assert get_memory_footprint(view) == 400  # one storage of 100 floats


transformers = pytest.importorskip("transformers")


def _tiny_config():
    return transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                    tie_word_embeddings=False)


@pytest.mark.parametrize("config", [None, QuantConfig(load_in_4bit=True), QuantConfig(load_in_4bit=True,
                                    double_quant=False), QuantConfig(load_in_8bit=True)])
def test_matches_transformers_and_meta_estimate(config):
    torch.manual_seed(0)
    # Built in bf16 the way from_pretrained builds it (rotary inv_freq buffers stay float32).
    model = transformers.AutoModelForCausalLM.from_config(_tiny_config(), dtype=torch.bfloat16)
    if config is not None:
        quantize_model(model, config)
    total = get_memory_footprint(model)
    # HF sums parameters and buffers; kbit's quant state lives in buffers, so the figures agree.
    assert model.get_memory_footprint() == total
    parts = get_memory_footprint(model, breakdown=True)
    assert parts["total"] == total == sum(v for k, v in parts.items() if k != "total")
    assert parts["embeddings"] == 256 * 128 * 2
    if config is not None:
        assert parts["float_linear"] == 256 * 128 * 2  # only lm_head stays a bf16 Linear
    # The meta-device estimate builds the same model without memory and must agree to the byte.
    if config is None:
        key = "bf16"
    else:
        key = "int8" if config.load_in_8bit else "nf4" + ("+dq" if config.double_quant else "")
    assert estimate_footprint(_tiny_config(), quant=config or "bf16") == {key: total}


def test_estimate_all_schemes_and_counts():
    est = estimate_footprint(_tiny_config())
    assert list(est) == ["fp32", "bf16", "int8", "nf4", "nf4+dq"]
    assert est["fp32"] == 2 * est["bf16"] - 2 * 16 * 4  # the two rotary buffers stay float32
    assert est["bf16"] > est["int8"] > est["nf4"]
    # Double quant saves 3 bytes per block of 64 but costs a 1 kB map, an offset and the nested
    # absmax per layer: a loss at this size.
    sizes = [128 * 128, 64 * 128, 64 * 128, 128 * 128, 256 * 128, 256 * 128, 128 * 256] * 2
    blocks = [n // 64 for n in sizes]
    extra = sum(1024 + 4 + 4 * -(-b // 256) - 3 * b for b in blocks)
    assert est["nf4+dq"] - est["nf4"] == extra
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(_tiny_config())
    n = parameter_count(model)
    q = quantize_model(copy.deepcopy(model), QuantConfig(load_in_4bit=True))
    assert parameter_count(q) == {"total": n["total"], "quantized": sum(sizes)}
    with pytest.raises(ValueError, match="scheme"):
        estimate_footprint(_tiny_config(), quant="int3")
