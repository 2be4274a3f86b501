"""A plain NumPy float32 model of kbit's fused Adam steps (csrc/core/optim_adam.h), operation by
operation and without fused multiply-adds, so the ops can be checked bit for bit on any device."""

import numpy as np
import torch

f32 = np.float32


def config(beta1, beta2, eps, step, lr, wd, decoupled):
    return dict(omb1=f32(1.0 - beta1), beta2=f32(beta2), omb2=f32(1.0 - beta2), eps=f32(eps),
                step_size=f32(lr / (1.0 - beta1**step)), bc2=f32((1.0 - beta2**step) ** 0.5), wd=f32(wd),
                decay=f32(1.0 - lr * wd), decoupled=decoupled)


def adam(p, g, m, v, c):
    """Float32 arrays in, updated (p, m, v) out."""
    if c["decoupled"]:
        p = p * c["decay"]
    else:
        g = g + c["wd"] * p
    m = m + c["omb1"] * (g - m)
    v = c["beta2"] * v + (c["omb2"] * g) * g
    denom = np.sqrt(v) / c["bc2"] + c["eps"]
    p = p + (-c["step_size"] * m) / denom
    return p, m, v


def _nearest(code, x):
    mid = f32(0.5) * (code[:-1] + code[1:])
    return np.searchsorted(mid, x, side="left").astype(np.uint8)  # count of midpoints < x


def adam_8bit(p, g, q1, q2, a1, a2, code1, code2, c, blocksize=256):
    """One 8-bit blockwise step on NumPy float32 / uint8 arrays; returns (p, q1, q2, a1, a2)."""
    n = p.size
    nb = -(-n // blocksize)
    pad = nb * blocksize - n
    blk = np.repeat(np.arange(nb), blocksize)[:n]
    m = code1[q1] * a1[blk]
    v = code2[q2] * a2[blk]
    p, m, v = adam(p, g, m, v, c)
    new_a1 = np.abs(np.pad(m, (0, pad))).reshape(nb, blocksize).max(1).astype(f32)
    new_a2 = np.abs(np.pad(v, (0, pad))).reshape(nb, blocksize).max(1).astype(f32)
    inv1 = np.where(new_a1 > 0, f32(1) / np.where(new_a1 > 0, new_a1, f32(1)), f32(0)).astype(f32)
    inv2 = np.where(new_a2 > 0, f32(1) / np.where(new_a2 > 0, new_a2, f32(1)), f32(0)).astype(f32)
    return p, _nearest(code1, m * inv1[blk]), _nearest(code2, v * inv2[blk]), new_a1, new_a2


def to_np(t: torch.Tensor) -> np.ndarray:
    """A flat copy (never a view: the ops update their tensors in place)."""
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).numpy().reshape(-1).copy()
