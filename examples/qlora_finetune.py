"""QLoRA fine-tuning with kbit: a 4-bit NF4 (double-quantized) base model computing in bf16, LoRA
adapters on all seven Linear projections of every layer, gradient checkpointing, Hugging Face Trainer.

    # a real checkpoint (quantized while it loads) and your own text file, on a GPU
    python examples/qlora_finetune.py --model meta-llama/Llama-3.1-8B --text corpus.txt --steps 200

    # Llama-3.1-8B shape with random weights (no download), synthetic tokens, on a GPU
    python examples/qlora_finetune.py --shape llama-3.1-8b --steps 10 --seq-len 2048

    # seconds on a CPU: a tiny random Llama (what the tests run)
    python examples/qlora_finetune.py --tiny

The optimizer is kbit's paged 8-bit AdamW by default (--optim picks another): transformers' `optim=`
names are a closed list, so it reaches Trainer through `optimizer_cls_and_kwargs`.

Afterwards the adapter is in OUTPUT/adapter (reload it with peft.PeftModel.from_pretrained on a
kbit-loaded base); --merge also writes OUTPUT/merged, the adapter merged into a float model.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import kbit
from kbit.integrations import peft as kbit_peft
from kbit.integrations.transformers import attach_quantizer
from kbit.quantize import find_targets, quantize_linear

# --optim: the names QLoRA scripts pass to transformers' `optim=`, here served by kbit.optim.
OPTIMIZERS = {
    "paged_adamw_8bit": kbit.optim.PagedAdamW8bit,
    "adamw_8bit": kbit.optim.AdamW8bit,
    "paged_adamw_32bit": kbit.optim.PagedAdamW,
    "adamw_torch": torch.optim.AdamW,
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         rope_theta=500000.0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="a Hugging Face checkpoint (path or hub id) to quantize while loading")
    src.add_argument("--shape", choices=sorted(SHAPES), help="a Llama of this shape with random weights")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny random Llama, a few short steps")
    p.add_argument("--layers", type=int, help="override the number of layers of --shape")
    p.add_argument("--text", help="a UTF-8 text file to train on (needs --model, for its tokenizer)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--optim", choices=sorted(OPTIMIZERS), default="paged_adamw_8bit")
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default="qlora_out")
    p.add_argument("--merge", action="store_true", help="also save the adapter merged into a float model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        args.shape, args.device = args.shape or "tiny", "cpu"
        args.steps, args.seq_len, args.batch_size = min(args.steps, 4), min(args.seq_len, 32), 2
    if args.model is None and args.shape is None:
        p.error("give --model, --shape or --tiny")
    if args.text and args.model is None:
        p.error("--text needs --model (its tokenizer)")
    return args


def quant_config() -> kbit.QuantConfig:
    # QLoRA's recipe: NF4 with double quantization, matmuls in bf16.
    return kbit.QuantConfig(load_in_4bit=True, quant_type="nf4", double_quant=True,
                            compute_dtype=torch.bfloat16)


def llama_config(shape: str, layers=None) -> LlamaConfig:
    dims = dict(SHAPES[shape])
    if layers:
        dims["num_hidden_layers"] = layers
    cfg = LlamaConfig(max_position_embeddings=8192, tie_word_embeddings=False, **dims)
    cfg._attn_implementation = "sdpa"
    return cfg


def random_quantized_llama(cfg: LlamaConfig, device, dtype=torch.bfloat16, quantize=None,
                           seed=0) -> nn.Module:
    """A Llama with random weights built directly quantized: the skeleton on the meta device, then
    each Linear weight drawn on `device`, quantized by `quantize(linear) -> layer` (default: kbit
    with quant_config()) and dropped, so no more than one float Linear weight exists at a time;
    every other module is materialized on `device` and initialized as transformers would."""
    qconfig = quant_config()
    quantize = quantize or (lambda linear: quantize_linear(linear, qconfig))
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(copy.deepcopy(cfg), dtype=dtype)  # the model owns its config
    targets = {name for names in find_targets(model, qconfig) for name in names}
    for name, module in list(model.named_modules()):
        if name in targets:
            weight = torch.randn(module.out_features, module.in_features, device=device, dtype=dtype)
            module.weight = nn.Parameter(weight.mul_(cfg.initializer_range), requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, quantize(module))
            del module, weight
        elif list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
            module.to_empty(device=device, recurse=False)
            model._init_weights(module)
    return model.eval()


def load_model(args) -> nn.Module:
    if args.model:
        return kbit.from_pretrained(args.model, quantization_config=quant_config(), dtype=torch.bfloat16,
                                    device_map={"": args.device})
    model = random_quantized_llama(llama_config(args.shape, args.layers), args.device, seed=args.seed)
    attach_quantizer(model, quant_config())  # what from_pretrained would have set: Trainer and PEFT read it
    return model


class TokenBlocks(torch.utils.data.Dataset):
    """Fixed-length blocks of token ids; the labels are the inputs (the model shifts them)."""

    def __init__(self, ids: torch.Tensor, seq_len: int):
        n = ids.numel() // seq_len
        if n == 0:
            raise ValueError(f"need at least {seq_len} tokens, got {ids.numel()}")
        self.blocks = ids[: n * seq_len].view(n, seq_len)

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        ids = self.blocks[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def dataset(args, vocab_size: int) -> TokenBlocks:
    need = args.seq_len * args.batch_size * args.grad_accum * args.steps
    if args.text:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        with open(args.text, encoding="utf-8") as f:
            ids = torch.tensor(tok(f.read())["input_ids"])
    else:  # synthetic: a repeating random sequence, so the loss visibly falls
        gen = torch.Generator().manual_seed(args.seed)
        period = torch.randint(0, vocab_size, (max(args.seq_len // 2, 8),), generator=gen)
        ids = period.repeat(need // period.numel() + 1)
    return TokenBlocks(ids, args.seq_len)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = load_model(args)
    load_s = time.perf_counter() - t0

    from peft import LoraConfig, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs=gc_kwargs)
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=PROJECTIONS,
                      bias="none", task_type="CAUSAL_LM")
    model = kbit_peft.get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    on_gpu = str(args.device).startswith("cuda")
    training = TrainingArguments(
        output_dir=args.output, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], bf16=on_gpu, use_cpu=not on_gpu,
        gradient_checkpointing=True, gradient_checkpointing_kwargs=gc_kwargs,
        remove_unused_columns=False, dataloader_pin_memory=False, seed=args.seed, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training, train_dataset=dataset(args, model.config.vocab_size),
                      optimizer_cls_and_kwargs=(OPTIMIZERS[args.optim], {"lr": args.lr}))
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    model.save_pretrained(f"{args.output}/adapter")
    summary = {
        "load_s": round(load_s, 2),
        "train_s": round(result.metrics["train_runtime"], 2),
        "s_per_step": round(result.metrics["train_runtime"] / args.steps, 3),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "trainable_params": trainable,
        "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                          else trainer.optimizer).__name__,
        "footprint_bytes": kbit.get_memory_footprint(model),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
        "adapter": f"{args.output}/adapter",
    }
    if args.merge:
        merged = kbit_peft.merge_and_unload(model)
        merged.save_pretrained(f"{args.output}/merged")
        summary["merged"] = f"{args.output}/merged"
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
