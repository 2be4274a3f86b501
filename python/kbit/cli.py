"""The `kbit` command.

`kbit footprint` (also plain `kbit`): builds the bundled tiny Llama with seeded random weights,
quantizes it to INT8, NF4 and NF4 with double quantization, and prints bytes, bits per parameter
and the output error against BF16; then the same byte table for Llama-3.1-8B computed on the meta
device (nothing allocated). `--config NAME|PATH` prints the byte table for another config.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Optional

import torch

from . import configs
from .memory import (SCHEMES, build_meta_model, get_memory_footprint, linear_bits_per_param, parameter_count,
                     scheme)
from .quantize import find_targets, quantize_model

_LABELS = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8", "nf4": "NF4", "nf4+dq": "NF4+DQ"}


def _human(nbytes: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{nbytes} B"


def _target_names(model) -> list[str]:
    # Which Linear layers get quantized does not depend on the scheme, only on the skip rules.
    return [names[0] for names in find_targets(model, scheme("nf4")[2])]


def _row(name: str, model, names: list[str], n_params: int, fp32_bytes: Optional[int]) -> dict:
    total = get_memory_footprint(model)
    return {
        "scheme": _LABELS.get(name, name.upper()),
        "bytes": total,
        "pct": 100.0 * total / (fp32_bytes or total),
        "linear_bits": linear_bits_per_param(model, names),
        "all_bits": 8.0 * total / n_params,
    }


def _variant(base_fp32, base_bf16, name: str):
    _, dtype, qc = scheme(name)
    if qc is None:
        return base_fp32 if dtype == torch.float32 else base_bf16
    return quantize_model(copy.deepcopy(base_bf16), qc, progress=False)


def estimate_rows(model_config) -> list[dict]:
    """Byte rows for every scheme of `model_config`, built on the meta device."""
    rows, fp32 = [], None
    n_params = names = None
    for name in SCHEMES:
        _, dtype, qc = scheme(name)
        model = build_meta_model(model_config, dtype)
        if n_params is None:
            n_params, names = parameter_count(model)["total"], _target_names(model)
        if qc is not None:
            quantize_model(model, qc, progress=False)
        rows.append(_row(name, model, names, n_params, fp32))
        fp32 = fp32 or rows[0]["bytes"]
    return rows


def measure_rows(model_config, seed: int = 0, batch: int = 4, seq_len: int = 64) -> list[dict]:
    """Byte rows plus the logits error against BF16 on random tokens, with seeded random weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fp32 = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32).eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    n_params, names = parameter_count(fp32)["total"], _target_names(fp32)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model_config.vocab_size, (batch, seq_len), generator=gen)
    with torch.no_grad():
        ref = bf16(tokens).logits.float()
    rows, fp32_bytes = [], None
    for name in SCHEMES:
        model = _variant(fp32, bf16, name)
        row = _row(name, model, names, n_params, fp32_bytes)
        fp32_bytes = fp32_bytes or row["bytes"]
        with torch.no_grad():
            logits = ref if model is bf16 else model(tokens).logits.float()
        row["rel_err"] = ((logits - ref).norm() / ref.norm()).item()
        row["top1"] = 100.0 * (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    errors = "rel_err" in rows[0]
    head = ["scheme", "bytes", "size", "% of FP32", "bits/param Linear", "bits/param all"]
    if errors:
        head += ["logits rel. err vs BF16", "top-1 agree vs BF16"]
    lines = []
    for r in rows:
        cells = [r["scheme"], f"{r['bytes']:,}", _human(r["bytes"]), f"{r['pct']:.1f}%",
                 f"{r['linear_bits']:.3f}", f"{r['all_bits']:.3f}"]
        if errors:
            ref = r["scheme"] == "BF16"
            cells += ["(reference)", "(reference)"] if ref else [f"{r['rel_err']:.4f}", f"{r['top1']:.1f}%"]
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*cells) for cells in lines]
    return "\n".join(out)


def _describe(model_config, name: str) -> str:
    model = build_meta_model(model_config, torch.bfloat16)
    n = parameter_count(model)["total"]
    linear = sum(model.get_submodule(t).weight.numel() for t in _target_names(model))
    return (f"{name}: {n / 1e6:,.1f}M parameters, {linear / 1e6:,.1f}M of them in the Linear layers that get "
            "quantized")


def footprint(args) -> int:
    if args.config is None:
        tiny = configs.load("tiny_llama")
        print(_describe(tiny, "tiny_llama") + f" (random weights, seed {args.seed}, "
              f"logits on {args.batch}x{args.seq_len} random tokens)")
        print(format_table(measure_rows(tiny, args.seed, args.batch, args.seq_len)))
        print()
        big = configs.load("llama-3.1-8b")
        print(_describe(big, "llama-3.1-8b") + " (meta device, nothing allocated)")
        print(format_table(estimate_rows(big)))
        return 0
    cfg = configs.load(args.config)
    if args.measure:
        print(_describe(cfg, args.config) + f" (random weights, seed {args.seed})")
        print(format_table(measure_rows(cfg, args.seed, args.batch, args.seq_len)))
    else:
        print(_describe(cfg, args.config) + " (meta device, nothing allocated)")
        print(format_table(estimate_rows(cfg)))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kbit", description="kbit: 8-bit and 4-bit quantization of LLMs")
    sub = parser.add_subparsers(dest="command")
    fp = sub.add_parser("footprint",
                        help="memory footprint and error of FP32/BF16/INT8/NF4/NF4+DQ (the default command)")
    fp.add_argument("--config", metavar="NAME|PATH", default=None,
                    help=f"bundled config ({', '.join(configs.available())}), a config.json or a model "
                         "directory; default: tiny_llama measured and llama-3.1-8b estimated")
    fp.add_argument("--measure", action="store_true",
                    help="with --config: build it with random weights and measure the logits error too")
    fp.add_argument("--seed", type=int, default=0)
    fp.add_argument("--batch", type=int, default=4)
    fp.add_argument("--seq-len", type=int, default=64)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("footprint", "-h", "--help"):
        argv = ["footprint", *argv]  # footprint is the default command
    args = _parser().parse_args(argv)
    try:
        return footprint(args)
    except (ValueError, OSError) as err:
        print(f"kbit: error: {err}", file=sys.stderr)
        return 2
