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


def zeros(like: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, paged: bool) -> torch.Tensor:
    """A zero state tensor on like's device; in managed memory when paged, on CUDA, and large enough.

    Raises RuntimeError when the managed allocation would exceed the GPU's free memory."""
    numel = 1
    for s in shape:
        numel *= s
    if paged and like.device.type == "cuda" and numel >= PAGED_MIN_NUMEL:
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
