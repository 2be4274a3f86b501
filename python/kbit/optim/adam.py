"""Adam and AdamW with 8-bit blockwise or paged states, drop-in torch.optim.Optimizers.

8-bit states (bitsandbytes' layout, csrc/core/optim_adam.h): exp_avg and exp_avg_sq as one byte per
element plus one float32 absmax per 256 elements each, 2.03 bytes/param instead of torch's 8. Tensors
under min_8bit_size elements, and parameters marked by kbit.nn.StableEmbedding, keep float32 states.
Each update is one fused op (torch.ops.kbit.optimizer_update_8bit_blockwise / _32bit) per tensor.

Per-parameter state (the keys bitsandbytes uses): step (int), state1 / state2 (exp_avg / exp_avg_sq:
uint8, or float32), absmax1 / absmax2 (float32, 8-bit only)."""

from __future__ import annotations

from itertools import chain

import torch

from . import _ops, paged as _paged
from .qmaps import state_codes

BLOCKSIZE = 256  # elements per absmax of the 8-bit states (fixed by the kernels)


def _blocks(n: int) -> int:
    return -(-n // BLOCKSIZE)


class _Adam(torch.optim.Optimizer):
    """Adam(W) with `optim_bits` (8 or 32) states, optionally paged. Use the public subclasses."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, decoupled: bool,
                 optim_bits: int = 8, paged: bool = False, min_8bit_size: int = 4096, prefetch: bool = True):
        if not lr >= 0.0:
            raise ValueError(f"kbit: invalid learning rate {lr}")
        if not eps >= 0.0:
            raise ValueError(f"kbit: invalid eps {eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"kbit: betas must be two values in [0, 1); got {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"kbit: invalid weight_decay {weight_decay}")
        if optim_bits not in (8, 32):
            raise ValueError(f"kbit: optim_bits must be 8 or 32; got {optim_bits}")
        if min_8bit_size < 0:
            raise ValueError(f"kbit: min_8bit_size must be >= 0; got {min_8bit_size}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.decoupled = decoupled
        self.optim_bits = optim_bits
        self.paged = paged
        self.min_8bit_size = min_8bit_size
        self.prefetch = prefetch

    # ---- state ---------------------------------------------------------------------------------
    def _uses_8bit(self, p: torch.Tensor) -> bool:
        return (self.optim_bits == 8 and p.numel() >= self.min_8bit_size
                and getattr(p, "_kbit_optim_bits", None) != 32)

    def _init_state(self, p: torch.Tensor) -> dict:
        n = p.numel()
        if self._uses_8bit(p):
            return {
                "step": 0,
                "state1": _paged.zeros(p, p.shape, torch.uint8, self.paged),
                "state2": _paged.zeros(p, p.shape, torch.uint8, self.paged),
                "absmax1": torch.zeros(_blocks(n), dtype=torch.float32, device=p.device),
                "absmax2": torch.zeros(_blocks(n), dtype=torch.float32, device=p.device),
            }
        return {
            "step": 0,
            "state1": _paged.zeros(p, p.shape, torch.float32, self.paged),
            "state2": _paged.zeros(p, p.shape, torch.float32, self.paged),
        }

    # ---- step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = "adamw" if self.decoupled else "adam"
        work = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("kbit: 8-bit / paged Adam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p))
                work.append((group, p, state))
        prefetcher = _paged.Prefetcher([[s["state1"], s["state2"]] if self.prefetch else []
                                        for _, _, s in work])
        for i, (group, p, state) in enumerate(work):
            prefetcher.wait(i)
            self._update(name, group, p, state)
        return loss

    def _update(self, name: str, group: dict, p: torch.Tensor, state: dict) -> None:
        state["step"] += 1
        beta1, beta2 = group["betas"]
        # The op updates p in place and needs it contiguous; other layouts go through a copy.
        target = p if p.is_contiguous() else p.contiguous()
        s1, s2 = state["state1"], state["state2"]
        args = (beta1, beta2, group["eps"], state["step"], group["lr"], group["weight_decay"], 1.0)
        if s1.dtype == torch.uint8:
            code1, code2 = state_codes(p.device)
            _ops.optimizer_update_8bit_blockwise(name, target, p.grad, s1, s2, state["absmax1"],
                                                 state["absmax2"], code1, code2, *args)
        else:
            _ops.optimizer_update_32bit(name, target, p.grad, s1, s2, *args)
        if target is not p:
            p.copy_(target)

    # ---- checkpoints ---------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        # torch's loader casts floating state to the parameter's dtype, which would turn uint8 codes
        # and float32 states of a bf16 parameter into bf16. It restores the groups (hyperparameters,
        # schedulers' lr) from a state-free copy; the states are put back here in their saved dtypes,
        # copied (the caller's dict may hold another optimizer's live tensors), paged where wanted.
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        ids = chain.from_iterable(g["params"] for g in saved_groups)
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for pid, p in zip(ids, params):
            if pid in saved_state:
                self.state[p] = self._restore(p, saved_state[pid], pid)

    def _restore(self, p: torch.Tensor, saved: dict, pid) -> dict:
        n = p.numel()
        s1 = saved.get("state1")
        if s1 is None or "state2" not in saved or "step" not in saved:
            raise ValueError(f"kbit: optimizer state of parameter {pid} lacks step/state1/state2 "
                             f"(keys: {sorted(saved)})")
        eight_bit = s1.dtype == torch.uint8
        want = {"state1": n, "state2": n}
        if eight_bit:
            want.update(absmax1=_blocks(n), absmax2=_blocks(n))
        out = {"step": int(saved["step"])}
        for key, numel in want.items():
            v = saved.get(key)
            if v is None or v.numel() != numel:
                got = "missing" if v is None else f"{v.numel()} elements"
                raise ValueError(f"kbit: optimizer state '{key}' of parameter {pid} is {got}; the parameter "
                                 f"of {n} elements needs {numel}")
            if key in ("state1", "state2"):
                t = _paged.zeros(p, p.shape, v.dtype, self.paged)
                t.copy_(v.reshape(p.shape))
            else:
                t = v.to(device=p.device, dtype=torch.float32, copy=True)
            out[key] = t
        return out


class Adam8bit(_Adam):
    """torch.optim.Adam with 8-bit blockwise states. weight_decay is L2 (added to the gradient), as in
    torch.optim.Adam; note that bitsandbytes' Adam8bit decays decoupled, like AdamW."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, min_8bit_size=4096):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=False, optim_bits=8,
                         min_8bit_size=min_8bit_size)


class AdamW8bit(_Adam):
    """torch.optim.AdamW with 8-bit blockwise states (bitsandbytes' AdamW8bit)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, min_8bit_size=4096):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=True, optim_bits=8,
                         min_8bit_size=min_8bit_size)


class PagedAdamW8bit(_Adam):
    """AdamW8bit whose states live in CUDA managed memory (see kbit.optim.paged); on CPU, AdamW8bit.

    prefetch=False skips the bulk prefetch before each update, leaving evicted pages to come back
    through page faults (slower when evicted; saves the prefetch's page walk when they never are)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, min_8bit_size=4096,
                 prefetch=True):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=True, optim_bits=8, paged=True,
                         min_8bit_size=min_8bit_size, prefetch=prefetch)


class PagedAdamW(_Adam):
    """torch.optim.AdamW with float32 states in CUDA managed memory; on CPU, a fused AdamW.
    prefetch: as for PagedAdamW8bit."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, prefetch=True):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=True, optim_bits=32, paged=True,
                         prefetch=prefetch)
