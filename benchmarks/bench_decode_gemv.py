"""Decode-shaped GEMV throughput: every linear layer of a few Llama-3.1-8B layers, one token,
run back to back inside one CUDA graph (as a compiled decode step runs them), weights never L2-hot
(the layers together are far larger than the 50 MB L2). Reports the time per layer set and the
bandwidth on the bytes each contender must read (packed weight + scales for NF4, bf16 weight).

    python benchmarks/bench_decode_gemv.py [--layers 4] [--no-dq] [--int8]
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_linear_4bit import KbitLayer  # noqa: E402
from timing import Timer, copy_bandwidth, event_ms  # noqa: E402

# (out, in) of one Llama-3.1-8B decoder layer: q, k, v, o, gate, up, down.
LAYER = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]


def graph_ms(fn, reps=20):
    """Median ms of one replay of fn captured as a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return statistics.median(event_ms(g.replay) for _ in range(reps))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--no-dq", action="store_true")
    p.add_argument("--int8", action="store_true", help="also kbit's LLM.int8() layers")
    args = p.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth(Timer())
    dtype = torch.bfloat16
    weights = [(torch.randn(n, k, device="cuda") * 0.02).to(dtype) for _ in range(args.layers) for n, k in LAYER]
    layers = [KbitLayer(w, dq=not args.no_dq) for w in weights]
    xs = {k: torch.randn(1, k, device="cuda", dtype=dtype) for k in {k for _, k in LAYER}}
    q_bytes = sum(l.weight_bytes() for l in layers)
    d_bytes = sum(w.numel() * 2 for w in weights)
    print(f"# {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s, {args.layers} layers, "
          f"NF4{'' if args.no_dq else '+DQ'} {q_bytes / 1e6:.0f} MB, bf16 {d_bytes / 1e6:.0f} MB")
    dense = graph_ms(lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in weights])
    print(f"| contender | ms per {args.layers} layers | ms per layer | GB/s | % copy BW | vs bf16 |")
    print("|---|---|---|---|---|---|")

    def row(name, ms, nbytes):
        print(f"| {name} | {ms:.4f} | {ms / args.layers:.4f} | {nbytes / ms / 1e6:.0f} | "
              f"{nbytes / (ms * 1e-3) / bw * 100:.0f}% | {dense / ms:.2f}x |", flush=True)

    row("torch bf16", dense, d_bytes)
    row("kbit NF4", graph_ms(lambda: [l(xs[l.K]) for l in layers]), q_bytes)
    del layers
    if args.int8:  # LLM.int8() at threshold 6 (randn activations: no outlier columns)
        ops = torch.ops.kbit
        int8 = [ops.int8_vectorwise_quant(w.half(), 0.0)[:2] for w in weights]
        i_bytes = sum(cb.numel() + scb.numel() * 4 for cb, scb in int8)
        row("kbit int8", graph_ms(lambda: [ops.linear_8bit(xs[cb.shape[1]], cb, scb, 6.0, None) for cb, scb in int8]),
            i_bytes)


if __name__ == "__main__":
    main()
