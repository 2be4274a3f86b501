"""GPU timing shared by the benchmarks: CUDA events around each call after warm-up, the L2 cache
flushed before every timed call (a 256 MB write), the median over repetitions.

The flush is a kernel of ~0.1 ms queued right before the timed call, so the host has that long to
enqueue the call; its Python and launch overhead stays out of the measurement as long as it is
shorter (true for every contender here), and every contender is measured the same way.
"""
import statistics

import torch


class Timer:
    """flush="write" (the default, as DESIGN.md's reference numbers were taken) leaves the L2 full of
    dirty lines, so a timed kernel also pays for writing them back as it evicts them: up to as many
    bytes as it reads, ~50 MB at most on an H100. flush="read" leaves clean lines instead; it shows
    what a kernel does against DRAM alone."""

    def __init__(self, flush_mb=256, warmup=5, reps=30, flush="write"):
        self.flush = torch.empty(flush_mb << 20, dtype=torch.uint8, device="cuda").fill_(1)
        self.mode = flush
        self.warmup = warmup
        self.reps = reps

    def __call__(self, fn):
        """Median milliseconds of fn() with a cold L2."""
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for s, e in zip(starts, ends):
            if self.mode == "write":
                self.flush.fill_(1)
            else:
                self.flush.max()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def event_ms(fn) -> float:
    """Milliseconds of one fn() call between two CUDA events (waits for it to finish)."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b)


def copy_bandwidth(timer, nbytes=1 << 30):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(3)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def try_import_bnb():
    """bitsandbytes, if importable with working CUDA kernels; else None (benchmarks go on without it)."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional  # noqa: F401

        x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
        bnb.functional.quantize_4bit(x, blocksize=64, quant_type="nf4")
        return bnb
    except Exception as e:  # noqa: BLE001  (any failure means "not available")
        print(f"# bitsandbytes not available: {type(e).__name__}: {e}")
        return None


def fmt_row(cells, widths):
    return " | ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def print_table(header, rows):
    widths = [max([len(str(h))] + [len(str(r[i])) for r in rows]) for i, h in enumerate(header)]
    print("| " + fmt_row(header, widths) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + fmt_row(r, widths) + " |")
