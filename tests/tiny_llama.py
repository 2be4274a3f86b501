"""A tiny random-weight Llama (hf_tiny's shape) quantized by kbit, shared by the compile tests (CPU and
CUDA)."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

import kbit
from hf_tiny import VOCAB, tiny_config

LAYERS = 2
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down; lm_head stays in float
QUANT = {
    "4bit": dict(load_in_4bit=True, quant_type="nf4", double_quant=True),
    "8bit": dict(load_in_8bit=True, llm_int8_threshold=6.0),
}
OP = {"4bit": torch.ops.kbit.linear_4bit.default, "8bit": torch.ops.kbit.linear_8bit.default}


def tiny_llama(bits: str | None, dtype=torch.float32, device="cpu", seed=0) -> LlamaForCausalLM:
    """A 2-layer Llama (hidden 64, GQA 4/2 heads) in eval mode, quantized with QUANT[bits] unless
    bits is None. Never stops generating early (no eos), so outputs have a fixed length."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(tiny_config(LAYERS), dtype=dtype)
    if bits is not None:
        kbit.quantize_model(model, kbit.QuantConfig(compute_dtype=dtype, **QUANT[bits]))
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def count_op(graphs, op) -> int:
    """How many calls of `op` the FX graphs hold (a quantized layer left out of the graph, e.g.
    run eagerly after a graph break, would not be counted)."""
    subgraphs = [m for g in graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule)]
    # modules() includes the bodies of higher-order ops (e.g. checkpointed layers).
    return sum(1 for g in subgraphs for n in g.graph.nodes if n.op == "call_function" and n.target is op)


def prompt(batch=2, length=8, device="cpu", seed=1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=gen).to(device)
