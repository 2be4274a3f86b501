"""Tiny Hugging Face checkpoints for the HF / PEFT tests: a random float Llama saved with
save_pretrained, and a bitsandbytes-format checkpoint written by hand (no bitsandbytes needed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import kbit
from kbit import functional as F

VOCAB = 128
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_config(layers: int = 2) -> LlamaConfig:
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                      tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    return cfg


def float_model(seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(layers)).eval()
    # Larger-than-init weights so quantization noise cannot hide a wrong layer.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    return model


def save_float(path: Path, seed: int = 0, **kwargs) -> Path:
    float_model(seed).save_pretrained(str(path), **kwargs)
    return path


def tokens(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=gen)


def logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens() if ids is None else ids).logits.float()


def quantized_copy(config: kbit.QuantConfig, seed: int = 0) -> LlamaForCausalLM:
    """The float model of `seed` quantized in memory (the reference for loaded models)."""
    return kbit.quantize_model(float_model(seed), config)


def bnb_config_dict(bits: int, quant_type="nf4", double_quant=True, compute_dtype="float32") -> dict:
    """A BitsAndBytesConfig dict as transformers writes it into config.json."""
    return {
        "quant_method": "bitsandbytes", "load_in_4bit": bits == 4, "load_in_8bit": bits == 8,
        "_load_in_4bit": bits == 4, "_load_in_8bit": bits == 8, "bnb_4bit_quant_type": quant_type,
        "bnb_4bit_use_double_quant": double_quant, "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8", "llm_int8_threshold": 6.0, "llm_int8_skip_modules": None,
        "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
    }


def write_bnb_checkpoint(path: Path, bits: int, seed: int = 0, quant_type="nf4", double_quant=True) -> Path:
    """A checkpoint laid out as transformers + bitsandbytes saves one (FORMAT.md keys), built from
    kbit.functional directly rather than from kbit's layers."""
    model = float_model(seed)
    tensors = {}
    for key, value in model.state_dict().items():
        module = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and module.split(".")[-1] in PROJECTIONS:
            if bits == 4:
                packed, state = F.quantize_4bit(value.contiguous(), blocksize=64, quant_type=quant_type,
                                                double_quant=double_quant)
                tensors[key] = packed
                tensors.update(state.as_bnb_dict(key + "."))
            else:
                cb, scb = F.int8_quantize_weight(value)
                tensors[key], tensors[module + ".SCB"] = cb, scb
                tensors[module + ".weight_format"] = torch.tensor(0, dtype=torch.uint8)
        else:
            tensors[key] = value
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = bnb_config_dict(bits, quant_type, double_quant)
    (path / "config.json").write_text(json.dumps(config))
    return path
