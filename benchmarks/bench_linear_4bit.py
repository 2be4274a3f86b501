"""4-bit linear (NF4, blocksize 64): kbit vs torch bf16/fp16 (A @ W.T) vs bitsandbytes
(bnb.matmul_4bit), side by side in one process. Prints markdown tables.

    python benchmarks/bench_linear_4bit.py [--quick] [--variants]

Per row: median ms of each (L2 flushed by a 256 MB write before every call, timing.py), speedups,
and at 1 token kbit's bandwidth on the packed weight + scales as a fraction of the measured copy
bandwidth, also with a clean-L2 flush (a 256 MB read; no dirty lines to write back).
--variants adds a table of kbit's kernels forced one by one (KBIT_LINEAR4_PATH) to pick the
crossovers.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbit  # noqa: E402,F401
from timing import Timer, copy_bandwidth, print_table, try_import_bnb  # noqa: E402

ops = torch.ops.kbit
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]  # (out, in)
TOKENS = [1, 4, 16, 64, 256, 1024, 4096]


def dynamic_map_signed(device):
    vals = []
    for i in range(7):
        lin = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        mids = ((lin[:-1] + lin[1:]) / 2) * torch.tensor(10.0 ** (i - 6), dtype=torch.float32)
        vals += mids.tolist() + (-mids).tolist()
    return torch.tensor(sorted(vals + [0.0, 1.0]), dtype=torch.float32, device=device)


class KbitLayer:
    def __init__(self, W, dq, blocksize=64):
        self.N, self.K = W.shape
        self.bs = blocksize
        self.packed, absmax = ops.quantize_4bit(W, blocksize, "nf4", torch.uint8)
        self.state = (absmax, None, None, None)
        self.scale_bytes = absmax.numel() * 4
        if dq:
            offset = absmax.mean().reshape(1)
            code = dynamic_map_signed(W.device)
            q, nested = ops.quantize_blockwise(absmax - offset, code, 256)
            self.state = (q, nested, code, offset)
            self.scale_bytes = q.numel() + nested.numel() * 4

    def __call__(self, A):
        return ops.linear_4bit(A, self.packed, *self.state, self.bs, 256, "nf4", [self.N, self.K], None)

    def weight_bytes(self):
        return self.packed.numel() + self.scale_bytes


def rel_err(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="bf16 with double quant only")
    p.add_argument("--variants", action="store_true", help="also time each kbit kernel forced")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="comma-separated token counts")
    p.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="e.g. 4096x4096,...")
    args = p.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    torch.manual_seed(0)
    timer = Timer()
    clean = Timer(flush="read")
    bw = copy_bandwidth(timer)
    bnb = try_import_bnb()
    print(f"# device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"bitsandbytes {bnb.__version__ if bnb else 'n/a'}, copy bandwidth {bw / 1e12:.2f} TB/s")
    dtypes = [torch.bfloat16] if args.quick else [torch.bfloat16, torch.float16]
    dqs = [True] if args.quick else [True, False]
    header = ["shape (out x in)", "dtype", "dq", "tokens", "kbit ms", "dense ms", "bnb ms", "vs dense",
              "vs bnb",
              "kbit % copy BW", "clean L2: kbit ms / dense ms / % BW", "err"]
    rows, variants = [], []
    for N, K in shapes:
        for dtype in dtypes:
            W = (torch.randn(N, K, device="cuda") * 0.02).to(dtype)
            dense_ms = {}
            for dq in dqs:
                layer = KbitLayer(W, dq)
                W_deq = None
                if bnb is not None:
                    bp, bstate = bnb.functional.quantize_4bit(W, blocksize=64, quant_type="nf4",
                                                              compress_statistics=dq)
                for M in tokens:
                    A = torch.randn(M, K, device="cuda", dtype=dtype)
                    if M not in dense_ms:
                        dense_ms[M] = timer(lambda: torch.nn.functional.linear(A, W))
                    kb = timer(lambda: layer(A))
                    out = layer(A)
                    if W_deq is None:
                        W_deq = ops.dequantize_4bit(layer.packed, dequant_absmax(layer), 64, "nf4", [N, K],
                                                    dtype)
                    err = rel_err(out, torch.nn.functional.linear(A, W_deq))
                    bn = float("nan")
                    if bnb:
                        bn = timer(lambda: bnb.matmul_4bit(A, bp.t(), quant_state=bstate))
                    pct = layer.weight_bytes() / (kb * 1e-3) / bw * 100 if M == 1 else float("nan")
                    clean_cell = ""
                    if M == 1:
                        ck = clean(lambda: layer(A))
                        cd = clean(lambda: torch.nn.functional.linear(A, W))
                        cpct = layer.weight_bytes() / (ck * 1e-3) / bw * 100
                        clean_cell = f"{ck:.4f} / {cd:.4f} / {cpct:.0f}%"
                    rows.append([f"{N}x{K}", str(dtype).replace("torch.", ""), "yes" if dq else "no", M,
                                 f"{kb:.4f}", f"{dense_ms[M]:.4f}", f"{bn:.4f}", f"{dense_ms[M] / kb:.2f}x",
                                 f"{bn / kb:.2f}x", "" if M != 1 else f"{pct:.0f}%", clean_cell,
                                 f"{err:.1e}"])
                    print(" | ".join(map(str, rows[-1])), flush=True)
                    if args.variants and dq and dtype == torch.bfloat16:
                        add_variants(variants, timer, clean, layer, N, K, M, dtype, dense_ms[M])
                        if M == 64:  # 128 tokens: between the tiled and dequantize regimes
                            A128 = torch.randn(128, K, device="cuda", dtype=dtype)
                            d128 = timer(lambda: torch.nn.functional.linear(A128, W))
                            add_variants(variants, timer, clean, layer, N, K, 128, dtype, d128)
    print()
    print_table(header, rows)
    if variants:
        print()
        print_table(["shape", "tokens", "kbit path", "kbit ms", "dense ms", "clean L2 ms"], variants)


def add_variants(variants, timer, clean, layer, N, K, M, dtype, dense):
    A = torch.randn(M, K, device="cuda", dtype=dtype)
    forced = [("decode", {"KBIT_LINEAR4_PATH": "decode"}), ("skinny", {"KBIT_LINEAR4_PATH": "skinny"}),
              ("tiled", {"KBIT_LINEAR4_PATH": "tiled"}),
              ("wgmma 128", {"KBIT_LINEAR4_PATH": "wgmma", "KBIT_LINEAR4_WGMMA_TILE": "128"}),
              ("wgmma 256", {"KBIT_LINEAR4_PATH": "wgmma", "KBIT_LINEAR4_WGMMA_TILE": "256"}),
              ("dequant+cuBLAS", {"KBIT_LINEAR4_PATH": "dequant"})]
    for name, env in forced:
        if (name == "skinny" and M > 16) or (name == "decode" and M > 1):
            continue
        os.environ.update(env)
        clean_ms = f"{clean(lambda: layer(A)):.4f}" if M == 1 else ""
        variants.append([f"{N}x{K}", M, name, f"{timer(lambda: layer(A)):.4f}", f"{dense:.4f}", clean_ms])
        for k in env:
            del os.environ[k]


def dequant_absmax(layer):
    absmax, nested, code, offset = layer.state
    if nested is None:
        return absmax
    return ops.dequantize_blockwise(absmax, nested, code, 256, torch.float32) + offset


if __name__ == "__main__":
    main()
