"""The Hugging Face / PEFT paths on a GPU: quantize-while-loading onto CUDA, reloading, a QLoRA
step in bf16 with gradient checkpointing, and bitsandbytes' own CUDA checkpoints."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import kbit
from kbit.nn import Linear4bit, Linear8bitLt

from hf_tiny import PROJECTIONS, logits, quantized_copy, save_float, tokens

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CONFIGS = {
    "nf4": dict(load_in_4bit=True, quant_type="nf4", double_quant=True, compute_dtype=torch.float32),
    "int8": dict(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    return save_float(tmp_path_factory.mktemp("float"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_load_onto_cuda_and_reload(float_ckpt, tmp_path, name):
    config = kbit.QuantConfig(**CONFIGS[name])
    model = AutoModelForCausalLM.from_pretrained(float_ckpt, quantization_config=config, device_map={"": 0})
    layer = model.model.layers[0].mlp.up_proj
    assert type(layer) is (Linear4bit if name == "nf4" else Linear8bitLt) and layer.weight.is_cuda
    assert all(b.is_cuda for b in layer.buffers())
    ids = tokens().cuda()
    got = logits(model, ids).cpu()
    # The same quantized bytes as quantizing on the CPU (kernels are bit-compatible).
    reference = quantized_copy(config)
    cpu_layer = reference.model.layers[0].mlp.up_proj
    assert torch.equal(layer.weight.cpu(), cpu_layer.weight)
    tol = 1e-3 if name == "nf4" else 0.1
    torch.testing.assert_close(got, logits(reference), rtol=tol, atol=tol)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map={"": 0})
    torch.testing.assert_close(logits(reloaded, ids).cpu(), got, rtol=0, atol=0)


def test_qlora_step_bf16_gradient_checkpointing(float_ckpt):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    config = kbit.QuantConfig(load_in_4bit=True, compute_dtype=torch.bfloat16)
    model = kbit.from_pretrained(float_ckpt, quantization_config=config, dtype=torch.bfloat16,
                                 device_map={"": 0})
    model = prepare_model_for_kbit_training(model)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=PROJECTIONS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = tokens().cuda()
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("bits", [4, 8])
def test_checkpoint_from_bitsandbytes_cuda(float_ckpt, tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    if bits == 4:
        bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    else:
        bnb_config = BitsAndBytesConfig(load_in_8bit=True)
    try:
        bnb_model = AutoModelForCausalLM.from_pretrained(float_ckpt, quantization_config=bnb_config,
                                                         device_map={"": 0})
    except Exception as err:  # e.g. a bitsandbytes build without this GPU's kernels
        pytest.skip(f"bitsandbytes cannot quantize here: {err}")
    bnb_model.save_pretrained(tmp_path)
    ids = tokens().cuda()
    expected = logits(bnb_model, ids)
    model = kbit.from_pretrained(tmp_path, device_map={"": 0})
    tol = 1e-3 if bits == 4 else 0.1
    torch.testing.assert_close(logits(model, ids), expected, rtol=tol, atol=tol)
