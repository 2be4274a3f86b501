"""Optimizer step time and state memory: kbit vs torch AdamW(fused=True) vs bitsandbytes.

A 1B-parameter set (by default 16 tensors of 8192x8192) with fixed random gradients. Each contender
gets the same parameters; its step is timed with CUDA events after warm-up (median of --steps).
State memory counts every distinct tensor the optimizer holds per parameter (managed memory too).
For paged kbit optimizers the script also times one step right after evicting all states to host
memory (the prefetch brings them back), to show what paging costs when it happens.

    python benchmarks/bench_optim.py [--tensors 16 --rows 8192 --cols 8192 --dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys

import torch

import kbit.optim as KO
from kbit.optim import paged

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import event_ms  # noqa: E402


def state_bytes(opt) -> int:
    seen, total = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                total += v.numel() * v.element_size()
    return total


def time_steps(opt, steps: int, warmup: int, sync) -> list[float]:
    for _ in range(warmup):
        opt.step()
    sync()
    times = []
    for _ in range(steps):
        if torch.cuda.is_available():
            times.append(event_ms(opt.step))
        else:
            import time

            t = time.perf_counter()
            opt.step()
            times.append((time.perf_counter() - t) * 1e3)
    return times


def contenders(lr=1e-4):
    out = [("torch AdamW(fused=True)", lambda ps: torch.optim.AdamW(ps, lr=lr, fused=True)),
           ("kbit AdamW8bit", lambda ps: KO.AdamW8bit(ps, lr=lr)),
           ("kbit PagedAdamW8bit", lambda ps: KO.PagedAdamW8bit(ps, lr=lr)),
           ("kbit PagedAdamW8bit(prefetch=False)", lambda ps: KO.PagedAdamW8bit(ps, lr=lr, prefetch=False)),
           ("kbit PagedAdamW (32-bit)", lambda ps: KO.PagedAdamW(ps, lr=lr)),
           ("kbit PagedAdamW (32-bit, prefetch=False)", lambda ps: KO.PagedAdamW(ps, lr=lr, prefetch=False))]
    try:
        import bitsandbytes as bnb

        out += [("bnb AdamW8bit", lambda ps: bnb.optim.AdamW8bit(ps, lr=lr)),
                ("bnb PagedAdamW8bit", lambda ps: bnb.optim.PagedAdamW8bit(ps, lr=lr))]
    except Exception as e:  # noqa: BLE001  (any import failure just drops the contender)
        print(f"bitsandbytes unavailable: {e}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=8192)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip", default="", help="comma-separated substrings of contender names to leave out")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if dev == "cuda":
        print(torch.cuda.get_device_name(), "torch", torch.__version__)
    rows = []
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(args.rows, args.cols, device=dev, dtype=dtype) * 0.02)
                  for _ in range(args.tensors)]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        n = sum(p.numel() for p in params)
        print(f"\n{dname} params: {args.tensors} x {args.rows}x{args.cols} = {n / 1e9:.3f}B")
        print("| optimizer | param dtype | step ms (median) | state GB | state bytes/param "
              "| evicted-step ms |")
        print("| --- | --- | --- | --- | --- | --- |")
        skip = [k for k in args.skip.split(",") if k]
        for name, make in contenders():
            if any(k in name for k in skip):
                continue
            opt = make(params)
            try:
                t = time_steps(opt, args.steps, args.warmup, sync)
            except Exception as e:  # noqa: BLE001
                print(f"| {name} | {dname} | failed: {type(e).__name__}: {str(e)[:120]} | | | |")
                opt = None
                gc.collect()
                continue
            sb = state_bytes(opt)
            evicted = ""
            if isinstance(opt, KO.adam._Adam) and opt.paged and dev == "cuda":
                for st in opt.state.values():
                    for key in ("state1", "state2"):
                        paged.prefetch(st[key], to_cpu=True)
                sync()
                evicted = f"{statistics.median(time_steps(opt, 1, 0, sync)):.2f}"
                # and the step after that, with the states back on the GPU
                evicted += f" (next: {statistics.median(time_steps(opt, 1, 0, sync)):.2f})"
            med = statistics.median(t)
            row = dict(optimizer=name, dtype=dname, numel=n, step_ms=med, step_ms_all=t,
                       state_bytes=sb, bytes_per_param=sb / n, evicted=evicted)
            rows.append(row)
            print(f"| {name} | {dname} | {med:.2f} | {sb / 1e9:.3f} | {sb / n:.3f} | {evicted} |", flush=True)
            del opt
            gc.collect()
            if dev == "cuda":
                torch.cuda.empty_cache()
        del params
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
