"""Blockwise quantize / dequantize kernels: kbit vs bitsandbytes, side by side in one process.

    python benchmarks/bench_quantize_4bit.py

4-bit NF4 (blocksize 64) on the weight shapes of bench_linear_4bit.py, and 8-bit blockwise
(dynamic map, blocksize 256) on float32 tensors. Bandwidth counts the bytes each kernel must move
(inputs read once, outputs written once) over the median time (timing.py), as a fraction of the
measured device-to-device copy bandwidth.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kbit  # noqa: E402,F401
from bench_linear_4bit import SHAPES, dynamic_map_signed  # noqa: E402
from timing import Timer, copy_bandwidth, print_table, try_import_bnb  # noqa: E402

ops = torch.ops.kbit


def main():
    torch.manual_seed(0)
    timer = Timer()
    bw = copy_bandwidth(timer)
    bnb = try_import_bnb()
    F = bnb.functional if bnb else None
    print(f"# device: {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s")
    rows = []

    def add(op, what, dtype, n, nbytes, kb, bn):
        rows.append([op, what, str(dtype).replace("torch.", ""), f"{kb:.4f}", f"{bn:.4f}",
                     f"{nbytes / (kb * 1e-3) / 1e9:.0f}", f"{nbytes / (kb * 1e-3) / bw * 100:.0f}%",
                     f"{bn / kb:.2f}x"])
        print(" | ".join(rows[-1]), flush=True)

    nan = float("nan")
    for N, K in SHAPES:
        for dtype in [torch.bfloat16, torch.float16, torch.float32]:
            W = (torch.randn(N, K, device="cuda") * 0.02).to(dtype)
            n, es = W.numel(), W.element_size()
            scale_bytes = n // 64 * 4
            kb = timer(lambda: ops.quantize_4bit(W, 64, "nf4", torch.uint8))
            bn = timer(lambda: F.quantize_4bit(W, blocksize=64, quant_type="nf4")) if F else nan
            add("quantize_4bit nf4", f"{N}x{K}", dtype, n, n * es + n // 2 + scale_bytes, kb, bn)
            packed, absmax = ops.quantize_4bit(W, 64, "nf4", torch.uint8)
            kb = timer(lambda: ops.dequantize_4bit(packed, absmax, 64, "nf4", [N, K], dtype))
            if F:
                bp, bs = F.quantize_4bit(W, blocksize=64, quant_type="nf4")
                bn = timer(lambda: F.dequantize_4bit(bp, bs))
            add("dequantize_4bit nf4", f"{N}x{K}", dtype, n, n * es + n // 2 + scale_bytes, kb, bn)
    code = dynamic_map_signed("cuda")
    for n in [1 << 20, 16 << 20, 256 << 20]:
        A = torch.randn(n, device="cuda")
        kb = timer(lambda: ops.quantize_blockwise(A, code, 256))
        bn = timer(lambda: F.quantize_blockwise(A, code=code, blocksize=256)) if F else nan
        add("quantize_blockwise", f"n={n}", A.dtype, n, n * 4 + n + n // 256 * 4, kb, bn)
        q, absmax = ops.quantize_blockwise(A, code, 256)
        kb = timer(lambda: ops.dequantize_blockwise(q, absmax, code, 256, torch.float32))
        if F:
            bq, bs = F.quantize_blockwise(A, code=code, blocksize=256)
            bn = timer(lambda: F.dequantize_blockwise(bq, bs))
        add("dequantize_blockwise", f"n={n}", A.dtype, n, n * 4 + n + n // 256 * 4, kb, bn)
    print()
    print_table(["op", "size", "dtype", "kbit ms", "bnb ms", "kbit GB/s", "kbit % copy BW", "vs bnb"], rows)


if __name__ == "__main__":
    main()
