"""Host time to quantize one small nn.Linear into a kbit layer (NF4 + double quant), the fixed
per-layer cost that loading a model pays 224 times for the 8B shape (kernels are negligible at
this size).

    python benchmarks/bench_quantize_host.py            # 256x256 bf16 layer on the CPU
"""

from __future__ import annotations

import argparse
import time

import torch

import kbit
from kbit.quantize import quantize_linear


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--calls", type=int, default=300)
    args = p.parse_args()
    lin = torch.nn.Linear(args.features, args.features, bias=False).to(torch.bfloat16)
    config = kbit.QuantConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)
    for _ in range(50):
        quantize_linear(lin, config)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(args.calls):
            quantize_linear(lin, config)
        best = min(best, (time.perf_counter() - t) / args.calls)
    print(f"{args.features}x{args.features}: {best * 1e3:.3f} ms per layer (best of 5 x {args.calls})")


if __name__ == "__main__":
    main()
