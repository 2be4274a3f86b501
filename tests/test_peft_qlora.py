"""QLoRA: gradients through the frozen kbit layers, PEFT's prepare/get_peft_model on kbit models,
HF Trainer with gradient checkpointing, adapter save/reload, merging into a float model."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

import kbit
from kbit.integrations import peft as kbit_peft
from kbit.integrations.dequantize import DequantizedLinear
from kbit.nn import Linear4bit, Linear8bitLt

from hf_tiny import PROJECTIONS, VOCAB, logits, save_float, tokens

pytestmark = pytest.mark.usefixtures("cpu_only")  # conftest.py says why


# ---- autograd through the quantized layers -----------------------------------------------------------
def _float_reference(layer, x, bias):
    weight = layer.dequantize(torch.float32)
    x_ref = x.detach().clone().requires_grad_(True)
    b_ref = None if bias is None else bias.detach().clone().requires_grad_(True)
    return weight, x_ref, b_ref


@pytest.mark.parametrize("quant_type,double_quant", [("nf4", True), ("fp4", False)])
def test_linear4bit_gradients_match_the_dequantized_float_layer(quant_type, double_quant):
    linear = torch.nn.Linear(96, 40)
    layer = Linear4bit.from_linear(linear, compute_dtype=torch.float32, quant_type=quant_type,
                                   double_quant=double_quant)
    layer.bias.requires_grad_(True)
    x = torch.randn(3, 5, 96, requires_grad=True)
    weight, x_ref, b_ref = _float_reference(layer, x, layer.bias)
    grad = torch.randn(3, 5, 40)
    layer(x).backward(grad)
    (x_ref @ weight.T + b_ref).backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad, rtol=1e-5, atol=1e-5)
    assert not layer.weight.requires_grad and layer.weight.grad is None  # the frozen weight gets nothing


def test_linear4bit_bf16_compute_gives_float32_input_gradients():
    layer = Linear4bit.from_linear(torch.nn.Linear(64, 32, bias=False), compute_dtype=torch.bfloat16,
                                   double_quant=True)
    x = torch.randn(4, 64, requires_grad=True)
    weight, x_ref, _ = _float_reference(layer, x, None)
    grad = torch.randn(4, 32)
    layer(x).backward(grad)
    (x_ref @ weight.T).backward(grad)
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=2e-2, atol=2e-2)  # bf16 rounding only


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_linear8bit_gradients_use_the_dequantized_weight(threshold):
    layer = Linear8bitLt.from_linear(torch.nn.Linear(96, 40), threshold=threshold)
    layer.bias.requires_grad_(True)
    x = torch.randn(2, 7, 96)
    x[0, 3, 5] = 9.0  # an outlier column for threshold 6
    x.requires_grad_(True)
    weight, x_ref, b_ref = _float_reference(layer, x, layer.bias)
    grad = torch.randn(2, 7, 40)
    out = layer(x)
    out.backward(grad)
    reference = x_ref @ weight.T + b_ref
    reference.backward(grad)
    # int8 activations: the forward is approximate, the backward exact in the dequantized W.
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)  # backward is exact in W
    torch.testing.assert_close(layer.bias.grad, b_ref.grad)
    assert layer.weight.grad is None


# ---- PEFT on a kbit model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    return save_float(tmp_path_factory.mktemp("float"))


def _load(path, bits=4):
    if bits == 4:
        config = kbit.QuantConfig(load_in_4bit=True, double_quant=True, compute_dtype=torch.float32)
    else:
        config = kbit.QuantConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config)


def _lora(**kwargs):
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=PROJECTIONS, task_type="CAUSAL_LM",
                      **kwargs)


def _packed(model):
    """{layer name as in the base model: packed weight} of every kbit layer (PEFT adds prefixes)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (Linear4bit, Linear8bitLt)):
            name = name.removeprefix("base_model.model.").removesuffix(".base_layer")
            out[name] = m.weight.detach().clone()
    return out


class _Repeating(torch.utils.data.Dataset):
    def __init__(self, n=8, length=16):
        gen = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, VOCAB, (length,), generator=gen)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"input_ids": self.ids, "labels": self.ids, "attention_mask": torch.ones_like(self.ids)}


def test_prepare_and_get_peft_model_wrap_kbit_layers(float_ckpt):
    model = prepare_model_for_kbit_training(_load(float_ckpt))
    assert model.is_gradient_checkpointing
    peft_model = get_peft_model(model, _lora())  # plain PEFT: its default dispatch
    wrapped = [m for m in peft_model.modules() if isinstance(m, PeftLoraLinear)]
    assert len(wrapped) == 2 * len(PROJECTIONS)
    assert all(isinstance(m.get_base_layer(), Linear4bit) for m in wrapped)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(m.get_base_layer().weight.dtype == torch.uint8 for m in wrapped)  # never cast


def test_trainer_qlora_save_reload_merge(float_ckpt, tmp_path):
    model = prepare_model_for_kbit_training(_load(float_ckpt),
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    before = _packed(model)
    peft_model = get_peft_model(model, _lora())
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=2, learning_rate=2e-2,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False, disable_tqdm=True,
    )
    trainer = Trainer(model=peft_model, args=args, train_dataset=_Repeating())
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0] - 0.1, losses
    after = _packed(peft_model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    peft_model.eval()
    expected = logits(peft_model)
    assert not torch.allclose(expected, logits(_load(float_ckpt)))  # the adapter changes the outputs
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_load(float_ckpt), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=0)

    merged = kbit_peft.merge_and_unload(reloaded)
    assert not any(isinstance(m, (Linear4bit, Linear8bitLt, PeftLoraLinear)) for m in merged.modules())
    assert type(merged.model.layers[0].mlp.up_proj) is DequantizedLinear
    assert not getattr(merged, "is_quantized", False) and not hasattr(merged.config, "quantization_config")
    torch.testing.assert_close(logits(merged), expected, rtol=1e-4, atol=1e-4)
    merged.save_pretrained(tmp_path / "merged")  # a plain float checkpoint
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(plain), expected, rtol=1e-4, atol=1e-4)


def _randomize_lora(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


@pytest.mark.parametrize("bits", [4, 8])
def test_registered_lora_layers_merge_and_unmerge(float_ckpt, bits):
    model = _load(float_ckpt, bits)
    peft_model = kbit_peft.get_peft_model(model, _lora())
    layers = [m for m in peft_model.modules() if isinstance(m, PeftLoraLinear)]
    assert layers and all(type(m) is kbit_peft.KbitLoraLinear for m in layers)
    _randomize_lora(peft_model)
    expected = logits(peft_model)
    base = layers[0].get_base_layer()
    packed = base.weight.detach().clone()

    peft_model.merge_adapter()
    assert type(layers[0].get_base_layer()) is DequantizedLinear
    tol = 1e-4 if bits == 4 else 0.15  # int8 activations in the unmerged forward
    torch.testing.assert_close(logits(peft_model), expected, rtol=tol, atol=tol)
    peft_model.unmerge_adapter()
    assert layers[0].get_base_layer() is base and torch.equal(base.weight, packed)  # exactly restored
    torch.testing.assert_close(logits(peft_model), expected, rtol=0, atol=0)

    merged = peft_model.merge_and_unload()  # PEFT's own call
    assert type(merged.model.layers[1].self_attn.v_proj) is DequantizedLinear
    torch.testing.assert_close(logits(merged), expected, rtol=tol, atol=tol)


def test_8bit_lora_backward_reaches_adapters_only(float_ckpt):
    model = prepare_model_for_kbit_training(_load(float_ckpt, bits=8))
    peft_model = get_peft_model(model, _lora())
    _randomize_lora(peft_model)
    ids = tokens()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    assert all(m.weight.grad is None for m in peft_model.modules() if isinstance(m, Linear8bitLt))


def test_trainer_refuses_a_quantized_model_without_adapters(float_ckpt, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="purely quantized"):
        Trainer(model=_load(float_ckpt), args=args, train_dataset=_Repeating())


def test_dora_is_refused_for_kbit_layers(float_ckpt):
    with pytest.raises(ValueError, match="DoRA"):
        kbit_peft.get_peft_model(_load(float_ckpt), _lora(use_dora=True))


def test_merge_can_requantize_like_bitsandbytes(float_ckpt):
    model = _load(float_ckpt)
    peft_model = get_peft_model(model, _lora())  # plain PEFT layers, upgraded by set_merge_mode
    assert kbit_peft.set_merge_mode(peft_model, requantize=True) == 2 * len(PROJECTIONS)
    _randomize_lora(peft_model)
    expected = logits(peft_model)
    layer = peft_model.base_model.model.model.layers[0].mlp.up_proj
    original = layer.get_base_layer()
    merged_float = original.dequantize(torch.float32) + layer.get_delta_weight("default")
    peft_model.merge_adapter()
    requantized = layer.get_base_layer()
    assert type(requantized) is Linear4bit and requantized is not original
    assert requantized.double_quant and requantized.quant_type == original.quant_type
    # The merged weight, rounded to NF4 once more with the layer's own settings.
    packed, _ = kbit.functional.quantize_4bit(merged_float.to(original.weight_dtype), quant_type="nf4",
                                              blocksize=original.blocksize, double_quant=True)
    assert torch.equal(requantized.weight, packed)
    assert not torch.equal(logits(peft_model), expected)  # that extra rounding shows
    peft_model.unmerge_adapter()
    assert layer.get_base_layer() is original
    torch.testing.assert_close(logits(peft_model), expected, rtol=0, atol=0)


def test_num_parameters_counts_packed_weights_without_bitsandbytes(float_ckpt):
    # transformers' own num_parameters imports bitsandbytes for any 4-bit model; Trainer calls it.
    full = AutoModelForCausalLM.from_pretrained(float_ckpt)
    model = _load(float_ckpt)
    assert model.num_parameters() == full.num_parameters()
    assert model.num_parameters(exclude_embeddings=True) == full.num_parameters(exclude_embeddings=True)
    assert model.num_parameters(only_trainable=True) == full.num_parameters() - sum(
        p.numel() for n, p in full.named_parameters() if n.endswith("proj.weight"))
    peft_model = get_peft_model(prepare_model_for_kbit_training(model), _lora())
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < peft_model.num_parameters(only_trainable=True) == trainable
