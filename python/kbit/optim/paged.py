"""Paged optimizer states: CUDA unified (managed) memory the driver may evict to host memory when the
GPU runs short (a memory spike during the forward/backward pass), prefetched back before each update.

On CPU there is nothing to page: paged optimizers use ordinary tensors and behave like non-paged ones.
States under PAGED_MIN_NUMEL elements stay in ordinary device memory (as in bitsandbytes): paging
them saves nothing worth a managed allocation."""

from __future__ import annotations

from typing import Sequence

import torch

from . import _ops

PAGED_MIN_NUMEL = 100_000
RESERVE_BYTES = 64 << 20  # head-room left free beside paged states (the op keeps the same reserve)


def zeros(like: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, paged: bool) -> torch.Tensor:
    """A zero state tensor on like's device; in managed memory when paged, on CUDA, and large enough.

    Raises RuntimeError when the managed allocation would exceed the GPU's free memory."""
    numel = 1
    for s in shape:
        numel *= s
    if paged and like.device.type == "cuda" and numel >= PAGED_MIN_NUMEL:
        # Managed memory beyond what the GPU has free can hang it: refuse here first (the op checks too).
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        free, _ = torch.cuda.mem_get_info(like.device)
        if nbytes + RESERVE_BYTES > free:
            raise RuntimeError(
                f"kbit: a paged state of {nbytes} bytes does not fit in the {free} bytes free on "
                f"{like.device} ({RESERVE_BYTES >> 20} MiB kept in reserve); kbit never allocates more "
                "managed memory than the GPU has free. Free GPU memory first or use a non-paged optimizer.")
        t = _ops.paged_zeros(like, shape, dtype)
        t._kbit_paged = True
        return t
    return torch.zeros(tuple(shape), dtype=dtype, device=like.device)


def is_paged(t: torch.Tensor) -> bool:
    """True for a state tensor that lives in managed memory."""
    return bool(getattr(t, "_kbit_paged", False))


def prefetch(t: torch.Tensor, to_cpu: bool = False) -> None:
    """Queues the move of a paged tensor to its GPU (or to host memory); ordinary tensors are left alone."""
    if is_paged(t):
        _ops.paged_prefetch(t, to_cpu)


_side_streams: dict[torch.device, torch.cuda.Stream] = {}


class Prefetcher:
    """Prefetches the paged states of update i + 1 on a side stream while update i runs.

    A prefetch walks every page of its range even when the pages are already on the GPU (about
    2.5 ms per GB on an H100), so it runs beside the update kernels instead of before them; the
    update of item i waits (on the GPU) only for its own states' prefetch."""

    def __init__(self, tensors_per_item: list[list[torch.Tensor]]):
        self.items = [[t for t in ts if is_paged(t)] for ts in tensors_per_item]
        self.events: dict[int, torch.cuda.Event] = {}
        self.active = any(self.items)

    def _issue(self, i: int) -> None:
        if i >= len(self.items) or not self.items[i]:
            return
        dev = self.items[i][0].device
        if dev not in _side_streams:
            _side_streams[dev] = torch.cuda.Stream(dev)
        stream = _side_streams[dev]
        with torch.cuda.stream(stream):
            for t in self.items[i]:
                _ops.paged_prefetch(t, False)
        ev = torch.cuda.Event()
        ev.record(stream)
        self.events[i] = ev

    def wait(self, i: int) -> None:
        """Call right before update i: queues the next prefetch and orders update i after its own."""
        if not self.active:
            return
        if i == 0:
            self._issue(0)
        self._issue(i + 1)
        ev = self.events.pop(i, None)
        if ev is not None:
            torch.cuda.current_stream(self.items[i][0].device).wait_event(ev)
