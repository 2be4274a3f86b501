"""LLM.int8() linear on the GPU: kbit's linear_8bit vs torch bf16 and bitsandbytes' Linear8bitLt
forward (bnb.matmul with a MatmulLtState), measured in one process with the L2 flushed before
every call (timing.py); plus int8_vectorwise_quant's bandwidth against a device copy.

Activations are bf16 randn with a handful of outlier columns (|x| ~ 8-12, as LLM.int8() sees in
large models); threshold 6.0 treats them in 16-bit, threshold 0.0 quantizes everything. From 33
tokens up, kbit's other GEMM paths are also timed, forced with KBIT_INT8_PATH (printed as "#" lines
and kept in the JSON), to check the default dispatch against them. --outlier-cols sets how many
columns hold outliers (default 6; random-weight Llama models mark most of a down projection's
14336 input columns at 1024 tokens, which takes kbit's tensor-core outlier path past 64).

    python benchmarks/bench_linear_int8.py [--shapes 4096x4096,...] [--tokens 1,4,...] [--json out.json]
                                           [--outlier-cols 6] [--flush write|read]
"""
import argparse
import json
import logging
import os

import torch

import kbit  # noqa: F401
from timing import Timer, copy_bandwidth, print_table, try_import_bnb

ops = torch.ops.kbit
SHAPES = "4096x4096,14336x4096,4096x14336,28672x8192"  # out_features x in_features
TOKENS = "1,4,16,64,256,1024,4096"


def make_inputs(M, K, gen, n_outlier_cols=6):
    A = torch.randn(M, K, device="cuda", generator=gen)
    cols = torch.randperm(K, device="cuda", generator=gen)[:n_outlier_cols]
    A[:, cols] = (torch.rand(M, len(cols), device="cuda", generator=gen) * 4 + 8) * torch.randn(
        M, len(cols), device="cuda", generator=gen).sign()
    return A.to(torch.bfloat16)


def make_weight(N, K, gen):
    W = (torch.randn(N, K, device="cuda", generator=gen) * 0.02).to(torch.bfloat16)
    CB, SCB, _ = ops.int8_vectorwise_quant(W.to(torch.float16), 0.0)
    return W, CB, SCB


def bnb_linear(bnb, CB, SCB, threshold):
    from bitsandbytes.autograd._functions import MatmulLtState

    state = MatmulLtState()
    state.CB, state.SCB, state.threshold, state.has_fp16_weights = CB, SCB, threshold, False
    return lambda A: bnb.matmul(A, CB, state=state, threshold=threshold)


def bench_linear(timer, bnb, shapes, tokens, n_outlier_cols):
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows, records = [], []
    for N, K in shapes:
        W, CB, SCB = make_weight(N, K, gen)
        fns = {
            "bf16": lambda A: torch.nn.functional.linear(A, W),
            "kbit t6": lambda A: ops.linear_8bit(A, CB, SCB, 6.0, None),
            "kbit t0": lambda A: ops.linear_8bit(A, CB, SCB, 0.0, None),
        }
        if bnb is not None:
            fns["bnb t6"] = bnb_linear(bnb, CB, SCB, 6.0)
            fns["bnb t0"] = bnb_linear(bnb, CB, SCB, 0.0)
        for M in tokens:
            A = make_inputs(M, K, gen, n_outlier_cols)
            ms = {name: timer(lambda f=f: f(A)) for name, f in fns.items()}
            if M > 32:  # the other kernels kbit has for this M, forced (KBIT_INT8_PATH), same run
                for path in ("intmm", "skinny"):
                    if path == "skinny" and M > 256:
                        continue
                    os.environ["KBIT_INT8_PATH"] = path
                    ms[f"kbit t6 {path}"] = timer(lambda: fns["kbit t6"](A))
                    ms[f"kbit t0 {path}"] = timer(lambda: fns["kbit t0"](A))
                    del os.environ["KBIT_INT8_PATH"]
                    print(f"# {N}x{K} M={M}: {path} t6 {ms[f'kbit t6 {path}']:.4f} ms, "
                          f"t0 {ms[f'kbit t0 {path}']:.4f} ms (default t6 {ms['kbit t6']:.4f}, "
                          f"t0 {ms['kbit t0']:.4f})")
            # Accuracy beside the timing: each int8 output against the bf16 layer's output.
            ref = fns["bf16"](A).float()
            err = {name: ((fns[name](A).float() - ref).norm() / ref.norm()).item()
                   for name in fns if name != "bf16"}
            rec = {"N": N, "K": K, "M": M, "ms": ms, "rel_err_vs_bf16": err}
            records.append(rec)
            b6 = ms.get("bnb t6")
            rows.append([f"{N}x{K}", M, f"{ms['bf16']:.4f}", f"{ms['kbit t6']:.4f}",
                         f"{ms['kbit t0']:.4f}",
                         f"{b6:.4f}" if b6 else "-", f"{ms['bnb t0']:.4f}" if b6 else "-",
                         f"{ms['bf16'] / ms['kbit t6']:.2f}x", f"{ms['bf16'] / ms['kbit t0']:.2f}x",
                         f"{b6 / ms['kbit t6']:.2f}x" if b6 else "-",
                         f"{err['kbit t6']:.4f}", f"{err['bnb t6']:.4f}" if b6 else "-"])
        fns = None
        torch.cuda.empty_cache()
    header = ["shape NxK", "M", "bf16 ms", "kbit t6", "kbit t0", "bnb t6", "bnb t0", "bf16/kbit6",
              "bf16/kbit0",
              "bnb6/kbit6", "err kbit6", "err bnb6"]
    return header, rows, records


def bench_quant(timer, bw, bnb):
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows, records = [], []
    for M, K in [(4096, 4096), (4096, 14336), (16384, 8192)]:
        A = make_inputs(M, K, gen)
        nbytes = A.numel() * 2 + A.numel() + M * 4  # read bf16, write int8 and row stats
        for t in (0.0, 6.0):
            ms = timer(lambda: ops.int8_vectorwise_quant(A, t))
            bnb_ms = None
            if bnb is not None:
                Ah = A.half()
                bnb_ms = timer(lambda: bnb.functional.int8_vectorwise_quant(Ah, threshold=t))
            frac = nbytes / (ms * 1e-3) / bw
            records.append({"M": M, "K": K, "threshold": t, "ms": ms, "bnb_ms": bnb_ms, "frac_copy_bw": frac})
            tbs = nbytes / (ms * 1e-3) / 1e12
            rows.append([f"{M}x{K}", t, f"{ms:.4f}", f"{tbs:.2f}", f"{100 * frac:.0f}%",
                         f"{bnb_ms:.4f}" if bnb_ms else "-"])
    header = ["A MxK (bf16)", "threshold", "kbit ms", "TB/s", "of copy", "bnb ms (fp16 A)"]
    return header, rows, records


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--tokens", default=TOKENS)
    p.add_argument("--json", default=None)
    p.add_argument("--skip-quant", action="store_true")
    p.add_argument("--outlier-cols", type=int, default=6, help="activation columns holding outliers")
    p.add_argument("--flush", choices=("write", "read"), default="write",
                   help="how the L2 is flushed before each call (timing.Timer): write, as DESIGN.md's "
                        "reference numbers were taken, or read (no dirty lines to write back: DRAM alone)")
    args = p.parse_args()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its per-call bf16 -> fp16 warning
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    tokens = [int(t) for t in args.tokens.split(",")]
    timer = Timer(flush=args.flush)
    bnb = try_import_bnb()
    bw = copy_bandwidth(timer)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"bitsandbytes {getattr(bnb, '__version__', 'n/a')}, copy bandwidth {bw / 1e12:.2f} TB/s")
    out = {"copy_bw": bw, "outlier_cols": args.outlier_cols}
    if not args.skip_quant:
        qh, qrows, qrec = bench_quant(timer, bw, bnb)
        out["quant"] = qrec
    lh, lrows, lrec = bench_linear(timer, bnb, shapes, tokens, args.outlier_cols)
    out["linear"] = lrec
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if not args.skip_quant:
        print("\n## int8_vectorwise_quant")
        print_table(qh, qrows)
    print(f"\n## linear_8bit (ms per call, median, L2 flushed by a {args.flush}; {args.outlier_cols} outlier columns)")
    print_table(lh, lrows)


if __name__ == "__main__":
    main()
