"""The 256-value codes of 8-bit optimizer states, as bitsandbytes defines them.

exp_avg (signed) uses the signed dynamic map of FORMAT.md. exp_avg_sq is never negative, so it uses
the unsigned dynamic map, which spends the sign bit on precision: for i = 0..6 take 2^(i+1) + 1 float32
points evenly spaced from 0.1 to 1.0, keep the 2^(i+1) midpoints of adjacent points scaled by
10^(i-6), then add 0 and 1.0 and sort (254 + 2 = 256 values in [0, 1])."""

from __future__ import annotations

import torch

_cache: dict[tuple[bool, str], torch.Tensor] = {}


def dynamic_map(signed: bool = True) -> torch.Tensor:
    """The sorted 256-value dynamic map (float32, CPU)."""
    values = []
    for i in range(7):
        points = torch.linspace(0.1, 1.0, (2**i if signed else 2 ** (i + 1)) + 1, dtype=torch.float32)
        mids = (points[:-1] + points[1:]) / 2.0
        values.append(mids * (10.0 ** (i - 6)))
    pos = torch.cat(values)
    parts = [pos, -pos] if signed else [pos]
    return torch.cat(parts + [torch.tensor([0.0, 1.0])]).sort().values


def state_codes(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed map for exp_avg, unsigned map for exp_avg_sq) on device, cached."""
    key = str(device)
    if (True, key) not in _cache:
        _cache[(True, key)] = dynamic_map(True).to(device)
        _cache[(False, key)] = dynamic_map(False).to(device)
    return _cache[(True, key)], _cache[(False, key)]
