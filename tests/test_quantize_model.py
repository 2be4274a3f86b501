"""kbit.quantize_model on a tiny random Llama from transformers and on plain modules."""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from kbit.config import QuantConfig
from kbit.nn import Linear4bit, Linear8bitLt
from kbit.quantize import find_targets, name_matches, quantize_model

transformers = pytest.importorskip("transformers")

NF4 = QuantConfig(load_in_4bit=True, compute_dtype=torch.float32)
INT8 = QuantConfig(load_in_8bit=True)


def tiny_llama(tie=False, layers=2):
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                   tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("config,bound", [(NF4, 0.3), (INT8, 0.05)])
def test_logits_stay_close(config, bound):
    model = tiny_llama()
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        ref = model(ids).logits
        q = quantize_model(copy.deepcopy(model), config)
        out = q(ids).logits
    # Measured ~0.15 (NF4) and ~0.015 (INT8) on this model; quantization must change something.
    assert 1e-4 < _rel(out, ref) < bound
    kind = Linear4bit if config.load_in_4bit else Linear8bitLt
    layer = q.model.layers[0]
    for lin in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.down_proj):
        assert type(lin) is kind
    assert type(q.lm_head) is nn.Linear  # output embeddings stay float
    assert q.is_loaded_in_4bit == config.load_in_4bit and q.is_loaded_in_8bit == config.load_in_8bit


def test_options_reach_layers():
    q = quantize_model(tiny_llama(), QuantConfig(load_in_4bit=True, quant_type="fp4", double_quant=False,
                                                 blocksize=128, compute_dtype=torch.float16))
    lin = q.model.layers[1].mlp.up_proj
    assert (lin.quant_type, lin.blocksize, lin.double_quant) == ("fp4", 128, False)
    assert lin.compute_dtype == torch.float16
    q8 = quantize_model(tiny_llama(), QuantConfig(load_in_8bit=True, llm_int8_threshold=3.0))
    assert q8.model.layers[0].mlp.up_proj.threshold == 3.0


def test_tied_lm_head_skipped():
    model = tiny_llama(tie=True)
    q = quantize_model(model, NF4)
    assert type(q.lm_head) is nn.Linear and q.lm_head.weight is q.model.embed_tokens.weight


def test_skip_modules_by_name_component():
    cfg = QuantConfig(load_in_4bit=True, skip_modules=["mlp.down_proj", "layers.1.self_attn"])
    q = quantize_model(tiny_llama(), cfg)
    assert type(q.model.layers[0].mlp.down_proj) is nn.Linear
    assert type(q.model.layers[0].mlp.up_proj) is Linear4bit
    assert type(q.model.layers[1].self_attn.k_proj) is nn.Linear
    assert type(q.model.layers[0].self_attn.k_proj) is Linear4bit


def test_name_matches():
    assert name_matches("model.layers.1.mlp", "layers.1")
    assert not name_matches("model.layers.10.mlp", "layers.1")
    assert name_matches("lm_head", "lm_head") and name_matches("a.lm_head", "lm_head")
    assert not name_matches("a.xlm_head", "lm_head")
    assert name_matches("model.layers.3.mlp.up_proj", r"model\.layers\.\d+\.mlp\.up_proj")


def test_plain_module_shared_and_mha():
    shared = nn.Linear(64, 64)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(64, 8))
    model.attn = nn.MultiheadAttention(64, 4)
    q = quantize_model(model, INT8)
    assert type(q[0]) is Linear8bitLt and q[0] is q[2]  # one module, quantized once
    assert type(q[3]) is Linear8bitLt  # no get_output_embeddings: only names are skipped
    assert type(q.attn.out_proj) is not Linear8bitLt  # MultiheadAttention reads its weight directly
    assert not hasattr(q, "get_output_embeddings")


def test_float_weights_are_freed():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    refs = [weakref.ref(m.weight) for m in model]
    quantize_model(model, NF4)
    gc.collect()
    assert all(r() is None for r in refs)


def test_meta_model():
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(tiny_llama().config)
    q = quantize_model(model, QuantConfig(load_in_4bit=True))
    lin = q.model.layers[0].mlp.up_proj
    assert type(lin) is Linear4bit and lin.weight.device.type == "meta"
    assert lin.weight.shape == (128 * 256 // 2, 1)


def test_find_targets_and_progress(capsys):
    model = tiny_llama()
    names = [n[0] for n in find_targets(model, NF4)]
    assert len(names) == 2 * 7 and "lm_head" not in names
    quantize_model(model, NF4, progress=False)
    assert "quantizing" not in capsys.readouterr().err


def test_bad_arguments():
    with pytest.raises(TypeError):
        quantize_model(nn.Linear(4, 4), "nf4")
    with pytest.raises(ValueError):
        quantize_model(nn.Linear(4, 4), {"load_in_4bit": True, "quant_type": "int3"})
