"""QLoRA training step and quantized loading, kbit vs bitsandbytes, measured in one process.

Training: a Llama-3.1-8B-shaped model with random weights, built directly in 4-bit NF4 with double
quantization and bf16 compute (meta skeleton, each Linear drawn on the GPU and quantized at once),
then peft.prepare_model_for_kbit_training (gradient checkpointing on), LoRA r=16 / alpha 32 on all
seven projections, torch AdamW; one step = forward + backward + optimizer step on batch 1 x
seq 2048. Reported: median step time after warm-up and peak allocated GPU memory over the steps
(weights included). Both contenders get the same random weights and tokens.

Loading (--load): a random bf16 checkpoint of the same shape is written to --ckpt-dir once (16 GB
for 8B; reused if present) and read into the page cache; then
AutoModelForCausalLM.from_pretrained(dir, quantization_config=..., device_map={"": 0}) is timed
for each contender, alternating, with its peak allocated GPU memory.

    python benchmarks/bench_qlora.py                     # train, kbit and bnb, Llama-3.1-8B shape
    python benchmarks/bench_qlora.py --load              # also the loading comparison
    python benchmarks/bench_qlora.py --tiny --load       # CPU smoke test (timings meaningless)

Targets (DESIGN.md): kbit peak <= bitsandbytes'; kbit step time <= 0.8x bitsandbytes'.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from qlora_finetune import PROJECTIONS, llama_config, quant_config, random_quantized_llama  # noqa: E402

from kbit.integrations.transformers import attach_quantizer  # noqa: E402

GB = 1e9
CONTENDERS = ("kbit", "bnb")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke test of the script")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--layers", type=int, help="override the number of layers")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-train", action="store_true", help="skip the training comparison")
    p.add_argument("--load", action="store_true", help="also compare from_pretrained of a bf16 checkpoint")
    p.add_argument("--load-repeats", type=int, default=2)
    p.add_argument("--ckpt-dir", default="/tmp/kbit_bench_llama_bf16")
    p.add_argument("--json", help="append one JSON line per result to this file")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile one more step and print its N costliest ops by device time")
    args = p.parse_args(argv)
    args.contenders = [c for c in args.contenders.split(",") if c]
    for c in args.contenders:
        if c not in CONTENDERS:
            p.error(f"unknown contender {c!r}; choose from {CONTENDERS}")
    args.device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.tiny:
        args.seq_len, args.steps, args.warmup = min(args.seq_len, 64), min(args.steps, 2), 1
        if args.ckpt_dir == p.get_default("ckpt_dir"):
            args.ckpt_dir += "_tiny"
    return args


# ---- contenders --------------------------------------------------------------------------------
def bnb_linear4bit(linear: nn.Linear) -> nn.Module:
    """bitsandbytes' Linear4bit with the same settings as quant_config(), quantized on the weight's device."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                              quant_storage=torch.uint8, device="meta")
    weight = linear.weight.data
    params = bnb.nn.Params4bit(weight, requires_grad=False, blocksize=64, compress_statistics=True,
                               quant_type="nf4", quant_storage=torch.uint8, module=layer)
    layer.weight = params.to(weight.device)  # quantizes
    if linear.bias is not None:
        layer.bias = linear.bias
    return layer


def build(contender: str, cfg, device) -> nn.Module:
    if contender == "kbit":
        model = random_quantized_llama(cfg, device)
        attach_quantizer(model, quant_config())
    else:
        model = random_quantized_llama(cfg, device, quantize=bnb_linear4bit)
        model.is_loaded_in_4bit = True  # what transformers sets; PEFT reads it
    return model


def hf_quant_config(contender: str):
    if contender == "kbit":
        return quant_config()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def available(contender: str) -> bool:
    if contender == "bnb":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            print("bitsandbytes is not importable: skipping it", file=sys.stderr)
            return False
    return True


# ---- measurements ------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device):
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def step_once(model, opt, ids):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def print_profile(contender: str, fn, top: int, device) -> None:
    """One step under torch.profiler: where the device time goes, costliest ops first."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    print(f"--- {contender}: one step, top {top} ops by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60))


def train(contender: str, cfg, args) -> dict:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    device = args.device
    reset_memory(device)
    t0 = time.perf_counter()
    model = build(contender, cfg, device)
    sync(device)
    build_s, build_peak = time.perf_counter() - t0, peak(device)
    model = prepare_model_for_kbit_training(model)  # fp32 norms/embeddings, gradient checkpointing
    lora = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules=PROJECTIONS,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), generator=gen).to(device)
    reset_memory(device)
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        sync(device)
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
        losses.append(round(loss.item(), 4))
    if args.profile:
        print_profile(contender, lambda: step_once(model, opt, ids), args.profile, device)
    out = {
        "bench": "qlora_step", "contender": contender, "seq_len": args.seq_len, "batch": args.batch,
        "r": args.r, "layers": cfg.num_hidden_layers, "s_per_step": statistics.median(times),
        "train_peak_bytes": peak(device),
        "build_s": build_s, "build_peak_bytes": build_peak, "losses": losses,
    }
    del model, opt, loss
    reset_memory(device)
    return out


def write_checkpoint(cfg, path: Path, device, shard_bytes: int = 4 * 2**30) -> None:
    """A bf16 checkpoint with random weights, written shard by shard (never a whole model in memory)."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    if (path / "config.json").exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM._from_config(copy.deepcopy(cfg), dtype=torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(0)
    shards, shard, size, index = [], {}, 0, {}

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            shards.append(name)
            index.update({k: name for k in shard})
            shard, size = {}, 0

    for key, meta in skeleton.state_dict().items():
        if key.endswith("norm.weight"):
            t = torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(meta.shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(
                torch.bfloat16).cpu()
        shard[key] = t
        size += t.numel() * t.element_size()
        if size >= shard_bytes:
            flush()
    flush()
    total = sum((path / s).stat().st_size for s in shards)
    with open(path / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": index}, f)
    skeleton.config.save_pretrained(str(path))


def load(contender: str, path: Path, args) -> dict:
    from transformers import AutoModelForCausalLM

    device = args.device
    reset_memory(device)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(path), quantization_config=hf_quant_config(contender),
                                                 dtype=torch.bfloat16, device_map={"": str(device)})
    sync(device)
    out = {"bench": "load", "contender": contender, "load_s": time.perf_counter() - t0,
           "load_peak_bytes": peak(device), "hf_footprint_bytes": model.get_memory_footprint()}
    del model
    reset_memory(device)
    return out


def read_into_page_cache(path: Path) -> None:
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 26):
                pass


# ---- report ------------------------------------------------------------------------------------
def fmt_gb(b):
    return "-" if b is None else f"{b / GB:.2f}"


def report(rows: list[dict]) -> None:
    train_rows = {r["contender"]: r for r in rows if r["bench"] == "qlora_step"}
    if train_rows:
        print("\n| contender | s/step | train peak GB | build s | losses |")
        print("| --- | --- | --- | --- | --- |")
        for c, r in train_rows.items():
            print(f"| {c} | {r['s_per_step']:.3f} | {fmt_gb(r['train_peak_bytes'])} | {r['build_s']:.1f} "
                  f"| {r['losses']} |")
        if {"kbit", "bnb"} <= set(train_rows):
            k, b = train_rows["kbit"], train_rows["bnb"]
            ratio = k["s_per_step"] / b["s_per_step"]
            print(f"\nstep time kbit/bnb = {ratio:.3f} (target <= 0.8): {'PASS' if ratio <= 0.8 else 'FAIL'}")
            if k["train_peak_bytes"] is not None:
                ok = k["train_peak_bytes"] <= b["train_peak_bytes"]
                print(f"train peak kbit {fmt_gb(k['train_peak_bytes'])} GB vs bnb "
                      f"{fmt_gb(b['train_peak_bytes'])} GB (target <=): {'PASS' if ok else 'FAIL'}")
    load_rows = [r for r in rows if r["bench"] == "load"]
    if load_rows:
        print("\n| contender | load s (each run) | load peak GB | HF footprint GB |")
        print("| --- | --- | --- | --- |")
        for c in dict.fromkeys(r["contender"] for r in load_rows):
            mine = [r for r in load_rows if r["contender"] == c]
            times = ", ".join(f"{r['load_s']:.2f}" for r in mine)
            print(f"| {c} | {times} | {fmt_gb(max((r['load_peak_bytes'] or 0) for r in mine) or None)} | "
                  f"{fmt_gb(mine[-1]['hf_footprint_bytes'])} |")


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    cfg = llama_config("tiny" if args.tiny else "llama-3.1-8b", args.layers)
    contenders = [c for c in args.contenders if available(c)]
    print(f"device {args.device}, {torch.cuda.get_device_name() if args.device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, layers {cfg.num_hidden_layers}, seq {args.seq_len}, "
          f"batch {args.batch}",
          flush=True)
    rows = []
    if not args.no_train:
        for c in contenders:
            rows.append(train(c, cfg, args))
            print(json.dumps(rows[-1]), flush=True)
    if args.load:
        path = Path(args.ckpt_dir)
        t0 = time.perf_counter()
        write_checkpoint(cfg, path, args.device)
        read_into_page_cache(path)
        print(f"checkpoint ready in {time.perf_counter() - t0:.1f} s at {path}", flush=True)
        for _ in range(args.load_repeats):
            for c in contenders:
                rows.append(load(c, path, args))
                print(json.dumps(rows[-1]), flush=True)
    report(rows)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
