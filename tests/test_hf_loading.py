"""Loading through transformers' own from_pretrained with quant_method "kbit": quantize-while-loading,
config.json round trip, flags PEFT/Trainer read, true footprint, memory while loading, refusals."""

import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch
from transformers import AutoModelForCausalLM

import kbit
from kbit.integrations.transformers import KbitHfQuantizer
from kbit.nn import Linear4bit, Linear8bitLt

from hf_tiny import PROJECTIONS, float_model, logits, quantized_copy, save_float

pytestmark = pytest.mark.usefixtures("cpu_only")  # conftest.py says why

CONFIGS = {
    "nf4": dict(load_in_4bit=True, quant_type="nf4", double_quant=True, compute_dtype=torch.float32),
    "fp4": dict(load_in_4bit=True, quant_type="fp4", double_quant=False, compute_dtype=torch.float32),
    "int8": dict(load_in_8bit=True),
}
LAYER = {"nf4": Linear4bit, "fp4": Linear4bit, "int8": Linear8bitLt}


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    return save_float(tmp_path_factory.mktemp("float"))


def _load(path, name):
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=kbit.QuantConfig(**CONFIGS[name]))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_pretrained_quantizes_while_loading(float_ckpt, name):
    config = kbit.QuantConfig(**CONFIGS[name])
    model = AutoModelForCausalLM.from_pretrained(float_ckpt, quantization_config=config)
    for proj in PROJECTIONS:
        owner = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        layer = getattr(getattr(model.model.layers[1], owner), proj)
        assert type(layer) is LAYER[name], proj
    assert type(model.lm_head) is torch.nn.Linear  # output embeddings stay in float
    # Exactly what quantizing the float model in memory gives.
    torch.testing.assert_close(logits(model), logits(quantized_copy(config)), rtol=0, atol=0)
    assert model.is_quantized and model.quantization_method == "kbit"
    assert model.is_loaded_in_4bit == config.load_in_4bit and model.is_loaded_in_8bit == config.load_in_8bit
    assert isinstance(model.hf_quantizer, KbitHfQuantizer) and model.hf_quantizer.is_trainable
    assert model.config.quantization_config.quant_method == "kbit"


@pytest.mark.parametrize("name", ["nf4", "int8"])
def test_config_json_round_trip(float_ckpt, tmp_path, name):
    model = _load(float_ckpt, name)
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin"))
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "kbit" and saved["bits"] == model.config.quantization_config.bits
    # No load_in_* key: transformers would hand such a config to its bitsandbytes quantizer.
    assert "load_in_4bit" not in saved and "load_in_8bit" not in saved
    expected = logits(model)
    for reloaded in (AutoModelForCausalLM.from_pretrained(tmp_path), kbit.from_pretrained(tmp_path)):
        assert type(reloaded.model.layers[0].mlp.up_proj) is LAYER[name]
        assert reloaded.config.quantization_config == model.config.quantization_config
        torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=0)


def test_kbit_from_pretrained_with_config_and_dtype(float_ckpt):
    config = kbit.QuantConfig(load_in_4bit=True)  # bf16 compute by default
    model = kbit.from_pretrained(float_ckpt, quantization_config=config, dtype=torch.bfloat16,
                                 device_map="cpu")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.layers[0].self_attn.q_proj.compute_dtype == torch.bfloat16
    assert torch.isfinite(logits(model)).all()


def test_memory_footprint_is_the_true_figure(float_ckpt):
    model = _load(float_ckpt, "nf4")
    expected = 0
    for module in model.modules():
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        expected += sum(t.numel() * t.element_size() for t in tensors)
    assert model.get_memory_footprint() == expected == kbit.get_memory_footprint(model)
    layer = model.model.layers[0].mlp.up_proj
    assert layer.weight_absmax.dtype == torch.uint8  # the quant state is part of the figure
    assert model.get_memory_footprint() < 0.5 * float_model().get_memory_footprint()


def test_quantize_while_loading_holds_one_float_weight_at_a_time(float_ckpt, monkeypatch):
    """Each float Linear weight is quantized on arrival and freed before the next one arrives, and
    no other float Linear weight exists in the model meanwhile."""
    seen = []
    original = KbitHfQuantizer.quantize_layer

    def watch(self, model, name, weight):
        alive = [ref for ref in seen if ref() is not None]
        floats = [n for n, m in model.named_modules()
                  if type(m) is torch.nn.Linear and n != "lm_head" and m.weight.device.type != "meta"]
        assert not alive, "an earlier float weight is still alive"
        assert not floats, f"float Linear weights present while loading {name}: {floats}"
        seen.append(weakref.ref(weight))
        return original(self, model, name, weight)

    monkeypatch.setattr(KbitHfQuantizer, "quantize_layer", watch)
    AutoModelForCausalLM.from_pretrained(float_ckpt, quantization_config=kbit.QuantConfig(**CONFIGS["nf4"]))
    gc.collect()
    assert len(seen) == 2 * len(PROJECTIONS)
    assert all(ref() is None for ref in seen)


@pytest.mark.parametrize("source", ["float", "quantized"])
def test_loading_allocates_no_copies_of_the_quant_state(float_ckpt, tmp_path, monkeypatch, source):
    """After loading, transformers replaces each non-persistent buffer with a new empty tensor;
    kbit's quant state (non-persistent buffers) must not be among them (those copies would raise the
    load peak by the size of all the scales), and the layers must end up with the state they loaded."""
    from transformers.modeling_utils import PreTrainedModel

    replaced = []
    original = PreTrainedModel._move_missing_keys_from_meta_to_device

    def watch(self, *args, **kwargs):
        replaced.extend(name for name, _ in self.named_non_persistent_buffers())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_move_missing_keys_from_meta_to_device", watch)
    path = float_ckpt
    if source == "quantized":
        _load(float_ckpt, "nf4").save_pretrained(tmp_path)
        path = tmp_path
    model = _load(path, "nf4") if source == "float" else AutoModelForCausalLM.from_pretrained(path)
    assert not [n for n in replaced if ".weight_" in n], replaced
    torch.testing.assert_close(logits(model), logits(quantized_copy(kbit.QuantConfig(**CONFIGS["nf4"]))),
                               rtol=0, atol=0)


def test_quantize_model_marks_a_transformers_model_for_saving(tmp_path):
    config = kbit.QuantConfig(**CONFIGS["nf4"])
    model = quantized_copy(config)
    assert model.is_quantized and model.hf_quantizer.is_trainable
    model.save_pretrained(tmp_path)
    reloaded = kbit.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)


def test_dequantize_gives_a_float_model(float_ckpt):
    model = _load(float_ckpt, "nf4")
    quantized = logits(model)
    model = model.dequantize()
    assert not any(isinstance(m, (Linear4bit, Linear8bitLt)) for m in model.modules())
    assert not getattr(model, "is_quantized", False) and not hasattr(model.config, "quantization_config")
    torch.testing.assert_close(logits(model), quantized, rtol=1e-4, atol=1e-4)


def test_safetensors_only_unless_allowed(tmp_path):
    model = float_model()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    config = kbit.QuantConfig(**CONFIGS["nf4"])
    with pytest.raises(Exception, match="safetensors"):
        kbit.from_pretrained(tmp_path, quantization_config=config)
    with pytest.raises(ValueError, match="weights_only"):
        kbit.from_pretrained(tmp_path, quantization_config=config, allow_bin=True, weights_only=False)
    with pytest.raises(ValueError, match="weights_only"):  # transformers' own entry point refuses too
        AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config, weights_only=False)
    loaded = kbit.from_pretrained(tmp_path, quantization_config=config, allow_bin=True)  # weights_only=True
    assert type(loaded.model.layers[0].mlp.up_proj) is Linear4bit
    torch.testing.assert_close(logits(loaded), logits(quantized_copy(config)), rtol=0, atol=0)


def test_damaged_checkpoint_names_the_layer(float_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    model = _load(float_ckpt, "nf4")
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight.absmax"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Exception) as info:
        kbit.from_pretrained(tmp_path)
    assert "model.layers.1.mlp.down_proj" in str(info.value) or "conversion" in str(info.value).lower()


def test_registration_after_import_kbit_without_bitsandbytes(float_ckpt, tmp_path):
    """`import kbit` first (no transformers yet), bitsandbytes made unimportable: transformers'
    from_pretrained finds quant_method "kbit" and kbit loads a bitsandbytes-format checkpoint."""
    from hf_tiny import write_bnb_checkpoint

    bnb_ckpt = write_bnb_checkpoint(tmp_path / "bnb", bits=4)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["bitsandbytes"] = None  # import bitsandbytes -> ImportError
        import kbit
        assert "transformers.quantizers.auto" not in sys.modules
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(float_ckpt)!r},
            quantization_config=kbit.QuantConfig(load_in_4bit=True, compute_dtype=torch.float32))
        assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
        model = kbit.from_pretrained({str(bnb_ckpt)!r})
        assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_hf_config_forms():
    from transformers.utils.quantization_config import QuantizationConfigMixin

    from kbit.integrations.hf_config import QuantConfig as HfQuantConfig

    plain = kbit.QuantConfig(load_in_4bit=True, quant_type="fp4", double_quant=False, blocksize=128)
    hf = HfQuantConfig.from_quant_config(plain)
    assert isinstance(hf, QuantizationConfigMixin) and hf == plain and hf.quant_method == "kbit"
    assert HfQuantConfig.from_dict(hf.to_dict()) == plain
    assert hf.to_dict()["bits"] == 4 and dict(hf) == hf.to_dict()
    bnb = hf.to_bnb_dict()
    assert bnb["quant_method"] == "bitsandbytes" and bnb["bnb_4bit_quant_type"] == "fp4"
    from_bnb = HfQuantConfig.from_dict(bnb)
    assert from_bnb.serialize_as == "bitsandbytes" and from_bnb.to_dict() == bnb
    assert from_bnb.blocksize == 64  # bitsandbytes' config has no blocksize: the checkpoint carries it
    with pytest.raises(ValueError, match="bits"):
        HfQuantConfig.from_dict({"quant_method": "kbit", "bits": 3})
    with pytest.raises(ValueError, match="quant_method"):
        HfQuantConfig.from_dict({"quant_method": "gptq", "bits": 4})
    with pytest.raises(ValueError, match="serialize_as"):
        HfQuantConfig(load_in_8bit=True, serialize_as="json")
