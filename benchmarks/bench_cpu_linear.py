"""CPU linear_4bit (NF4 + double quant, blocksize 64) and linear_8bit (LLM.int8(), threshold 6, no
outliers in the random activations) beside torch's dense linear in the same dtype, same process and
data, by rows of A (tokens).

    python benchmarks/bench_cpu_linear.py [--shapes 4096x4096,14336x4096] [--tokens 1,2,8,16,64,256]

Prints one markdown row per shape, dtype and token count: median ms of kbit NF4, kbit int8 and
torch, and the ratios (above 1: kbit faster)."""

import argparse
import os
import sys

import torch

import kbit.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu_ops import median_ms  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="4096x4096,14336x4096")
    p.add_argument("--tokens", default="1,2,8,16,64,256")
    p.add_argument("--dtypes", default="bfloat16,float16,float32")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--variants", action="store_true",
                   help="also time each NF4 path forced (KBIT_CPU_LINEAR4_PATH), printed as '#' lines")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| shape (out x in) | dtype | tokens | kbit NF4 ms | kbit int8 ms | torch dense ms | NF4 vs dense "
          "| int8 vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        W = torch.randn(N, K) * 0.02
        packed, state = F.quantize_4bit(W, blocksize=64, double_quant=True)
        W8, w_stats = F.int8_quantize_weight(W)
        for dname in args.dtypes.split(","):
            dtype = getattr(torch, dname)
            dense = W.to(dtype)
            for M in (int(t) for t in args.tokens.split(",")):
                A = torch.randn(M, K).to(dtype)
                kb = median_ms(lambda: F.linear_4bit(A, packed, state), args.repeat)
                k8 = median_ms(lambda: F.linear_8bit(A, W8, w_stats, threshold=6.0), args.repeat)
                dn = median_ms(lambda: torch.nn.functional.linear(A, dense), args.repeat)
                if args.variants:
                    forced = {}
                    for path in ("bfloat16", "float32", "slabs"):
                        os.environ["KBIT_CPU_LINEAR4_PATH"] = path
                        forced[path] = median_ms(lambda: F.linear_4bit(A, packed, state), args.repeat)
                        del os.environ["KBIT_CPU_LINEAR4_PATH"]
                    print(f"# {shape} {dname} {M}: NF4 forced " +
                          ", ".join(f"{k} {v:.2f} ms" for k, v in forced.items()) + f" (default {kb:.2f})", flush=True)
                print(f"| {shape} | {dname} | {M} | {kb:.2f} | {k8:.2f} | {dn:.2f} | {dn / kb:.2f}x | "
                      f"{dn / k8:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
