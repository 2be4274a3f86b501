"""CPU int8 GEMM by rows of A (decode-sized): kbit's int8_linear op against the torch int8 GEMM path
it used before for every row count (`torch._int_mm` + the same dequantization, written out here)
and torch's bf16 dense linear, in one process on the same data. Median of --repeat calls after a
warm-up call.

    python benchmarks/bench_cpu_int8_rows.py [--shapes 4096x4096,14336x4096] [--rows 1,2,4,8,16] [--repeat 9]
"""
import argparse
import os
import sys

import torch

import kbit  # noqa: F401

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu_ops import median_ms  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="4096x4096,14336x4096")
    p.add_argument("--rows", default="1,2,4,8,12,16")
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| shape (out x in) | rows | kbit int8_linear ms | torch int8 GEMM path ms | bf16 dense ms "
          "| vs torch int8 path | vs bf16 dense |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        W = torch.randint(-127, 128, (N, K), dtype=torch.int8)
        w_stats = torch.rand(N)
        W_dense = torch.randn(N, K, dtype=torch.bfloat16)
        for M in (int(r) for r in args.rows.split(",")):
            q = torch.randint(-127, 128, (M, K), dtype=torch.int8)
            a_stats = torch.rand(M)
            x = torch.randn(M, K, dtype=torch.bfloat16)
            kbit_ms = median_ms(lambda: torch.ops.kbit.int8_linear(q, W, a_stats, w_stats, None, torch.float32),
                                args.repeat)
            torch_ms = median_ms(lambda: torch._int_mm(q, W.t()).float().mul_(torch.outer(a_stats, w_stats))
                                 .mul_(1.0 / (127.0 * 127.0)), args.repeat)
            dense_ms = median_ms(lambda: torch.nn.functional.linear(x, W_dense), args.repeat)
            print(f"| {shape} | {M} | {kbit_ms:.3f} | {torch_ms:.3f} | {dense_ms:.3f} | {torch_ms / kbit_ms:.2f}x "
                  f"| {dense_ms / kbit_ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
