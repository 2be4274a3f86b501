"""Wrappers over the optimizer ops (torch.ops.kbit.*) and their fake implementations.

Schemas: csrc/ops/schemas.cpp. Kernels: csrc/ops/optim_cpu.cpp, optim_cuda.cpp, paged_cuda.cpp.
The update ops mutate their arguments in place and return nothing, so their fakes return None."""

from __future__ import annotations

from typing import Sequence

import torch

from .. import _C  # noqa: F401  (loads the library, which registers the ops)

ops = torch.ops.kbit


def optimizer_update_8bit_blockwise(optimizer_name: str, p, g, state1, state2, absmax1, absmax2, code1, code2,
                                    beta1: float, beta2: float, eps: float, step: int, lr: float,
                                    weight_decay: float, gnorm_scale: float = 1.0) -> None:
    """One fused Adam ("adam") / AdamW ("adamw") step on p with 8-bit blockwise states, in place."""
    ops.optimizer_update_8bit_blockwise.default(optimizer_name, p, g, state1, state2, absmax1, absmax2, code1,
                                                code2, beta1, beta2, eps, step, lr, weight_decay, gnorm_scale)


@torch.library.register_fake("kbit::optimizer_update_8bit_blockwise")
def _(optimizer_name, p, g, state1, state2, absmax1, absmax2, code1, code2, beta1, beta2, eps, step, lr,
      weight_decay, gnorm_scale):
    return None


def optimizer_update_32bit(optimizer_name: str, p, g, state1, state2, beta1: float, beta2: float, eps: float,
                           step: int, lr: float, weight_decay: float, gnorm_scale: float = 1.0) -> None:
    """One fused Adam ("adam") / AdamW ("adamw") step on p with float32 states, in place."""
    ops.optimizer_update_32bit.default(optimizer_name, p, g, state1, state2, beta1, beta2, eps, step, lr,
                                       weight_decay, gnorm_scale)


@torch.library.register_fake("kbit::optimizer_update_32bit")
def _(optimizer_name, p, g, state1, state2, beta1, beta2, eps, step, lr, weight_decay, gnorm_scale):
    return None


def paged_zeros(like: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Zeros in CUDA managed memory on like's device (CUDA only; raises when the GPU lacks free memory)."""
    return ops.paged_zeros.default(like, list(shape), dtype)


@torch.library.register_fake("kbit::paged_zeros")
def _(like, shape, dtype):
    return like.new_empty(tuple(shape), dtype=dtype)


def paged_prefetch(t: torch.Tensor, to_cpu: bool = False) -> None:
    """Starts moving a managed-memory tensor to its GPU (or to host memory), ordered on the current stream."""
    ops.paged_prefetch.default(t, to_cpu)


@torch.library.register_fake("kbit::paged_prefetch")
def _(t, to_cpu=False):
    return None
