"""Host time of one eager forward call of kbit's Linear4bit / Linear8bitLt on a 1-token input, beside
nn.Linear, under torch.no_grad (as generate runs). In eager decode every linear layer is one such call
and the GPU finishes its kernel long before the host has launched the next, so this, not the kernel,
sets the tokens/s of HF eager generate.

    python benchmarks/bench_call_overhead.py                 # 64x64 layer on the CPU
    python benchmarks/bench_call_overhead.py --device cuda --features 4096

On CUDA the loop does not synchronize: it measures launch (host) time per call, as decode sees it.
On the CPU it includes the (tiny) matmul itself. --profile adds cProfile's count of Python calls."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from kbit.nn import Linear4bit, Linear8bitLt


def make(kind: str, features: int, dtype, device):
    lin = torch.nn.Linear(features, features).to(device=device, dtype=dtype).requires_grad_(False)
    if kind == "nn.Linear":
        return lin
    if kind == "kbit-nf4":
        return Linear4bit.from_linear(lin, compute_dtype=dtype, quant_type="nf4", double_quant=True)
    if kind == "kbit-nf4-no-dq":
        return Linear4bit.from_linear(lin, compute_dtype=dtype, quant_type="nf4")
    return Linear8bitLt.from_linear(lin, threshold=6.0)


def per_call_us(layer, x, calls: int, device) -> float:
    for _ in range(200):
        layer(x)
    best = float("inf")
    for _ in range(5):  # best of 5: the least disturbed run
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            layer(x)
        best = min(best, time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e6 * best / calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--features", type=int, default=64, help="in = out features")
    p.add_argument("--calls", type=int, default=10000)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16
    x = torch.randn(1, 1, args.features, dtype=dtype, device=device)
    print(f"torch {torch.__version__}, {device}, {args.features}x{args.features}, bf16, 1 token, no_grad")
    print("| layer | us per call | Python calls per call |\n|---|---|---|")
    for kind in ("nn.Linear", "kbit-nf4", "kbit-nf4-no-dq", "kbit-int8"):
        layer = make(kind, args.features, dtype, device)
        with torch.no_grad():
            us = per_call_us(layer, x, args.calls, device)
            calls = "-"
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(1000):
                    layer(x)
                prof.disable()
                calls = f"{pstats.Stats(prof).total_calls / 1000:.0f}"
        print(f"| {kind} | {us:.2f} | {calls} |")


if __name__ == "__main__":
    main()
