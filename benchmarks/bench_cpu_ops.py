"""CPU timings of kbit's quantization ops beside bitsandbytes' CPU backend, same process and data.

    python benchmarks/bench_cpu_ops.py [--rows 4096 --cols 4096 --repeat 20]

Prints one markdown row per op and dtype: median ms, GB/s of input+output bytes, and kbit's speedup
over bitsandbytes (a dash where bitsandbytes is not installed or lacks the op on the CPU)."""

import argparse
import statistics
import time

import torch

import kbit.functional as F


def median_ms(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    try:
        import bitsandbytes.functional as bnbF
    except ImportError:
        bnbF = None
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, shape {args.rows}x{args.cols}")
    print("| op | dtype | kbit ms | kbit GB/s | bnb ms | speedup vs bnb |")
    print("|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        A = torch.randn(args.rows, args.cols).to(dtype)
        n = A.numel()
        packed, state = F.quantize_4bit(A)
        cases = {
            "quantize_4bit nf4": (lambda: F.quantize_4bit(A), n * A.element_size() + n // 2,
                                  (lambda: bnbF.quantize_4bit(A, blocksize=64, quant_type="nf4")) if bnbF else None),
            "dequantize_4bit nf4": (lambda: F.dequantize_4bit(packed, state), n * A.element_size() + n // 2, None),
            "quantize_blockwise": (lambda: F.quantize_blockwise(A), n * A.element_size() + n,
                                   (lambda: bnbF.quantize_blockwise(A)) if bnbF else None),
            "int8_vectorwise_quant t=6": (lambda: F.int8_vectorwise_quant(A, 6.0), n * A.element_size() + n,
                                          (lambda: bnbF.int8_vectorwise_quant(A, 6.0)) if bnbF else None),
        }
        if bnbF:
            bp, bs = bnbF.quantize_4bit(A, blocksize=64, quant_type="nf4")
            cases["dequantize_4bit nf4"] = (cases["dequantize_4bit nf4"][0], cases["dequantize_4bit nf4"][1],
                                            lambda: bnbF.dequantize_4bit(bp, bs))
        for name, (fn, nbytes, bnb_fn) in cases.items():
            ms = median_ms(fn, args.repeat)
            bnb_ms = None
            if bnb_fn is not None:
                try:
                    bnb_ms = median_ms(bnb_fn, args.repeat)
                except Exception as err:  # an op bitsandbytes lacks on the CPU
                    print(f"<!-- bitsandbytes {name} failed: {type(err).__name__}: {err} -->")
            gbs = nbytes / ms / 1e6
            bnb_col = f"{bnb_ms:.2f}" if bnb_ms else "-"
            speed = f"{bnb_ms / ms:.1f}x" if bnb_ms else "-"
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {ms:.2f} | {gbs:.1f} | {bnb_col} | {speed} |")


if __name__ == "__main__":
    main()
