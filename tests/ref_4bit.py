"""Pure-torch reference of FORMAT.md's 4-bit and 8-bit blockwise formats (CPU, float32).

Used by the CUDA tests as an independent oracle next to the CPU ops. Quantization follows
bitsandbytes' conventions that decide exact bytes: each element is scaled by the float32
reciprocal of its block's absmax, and the 4-bit index is chosen by strict '>' against the
float32 midpoints of adjacent sorted code values (ties go to the lower value).
"""
import torch

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
_FP4_MAG = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0]
FP4 = [m / 12 for m in _FP4_MAG] + [-m / 12 for m in _FP4_MAG]


def code4(quant_type):
    return torch.tensor(NF4 if quant_type == "nf4" else FP4, dtype=torch.float32)


def _midpoints(sorted_vals):
    v = torch.tensor(sorted_vals, dtype=torch.float64)
    return ((v[1:] + v[:-1]) / 2).float()


def encode4(x, quant_type):
    """x: float32 already scaled into [-1, 1]; returns int64 indices (NaN -> 0, like bnb)."""
    if quant_type == "nf4":
        mids = _midpoints(NF4)
        idx = (x.unsqueeze(-1) > mids).sum(-1)
        return torch.where(torch.isnan(x), torch.zeros_like(idx), idx)
    # FP4: sign bit 8, magnitude by nearest of the 8 sorted magnitudes, mapped back to its pattern.
    mags = sorted(range(8), key=lambda i: _FP4_MAG[i])
    mids = _midpoints([_FP4_MAG[i] / 12 for i in mags])
    rank = (x.abs().unsqueeze(-1) > mids).sum(-1)
    pattern = torch.tensor(mags)[rank]
    idx = pattern + 8 * (x < 0).long()
    return torch.where(torch.isnan(x), torch.zeros_like(idx), idx)


def quantize_4bit(A, blocksize, quant_type):
    flat = A.detach().reshape(-1).float().cpu()
    n = flat.numel()
    nb = (n + blocksize - 1) // blocksize
    padded = torch.zeros(nb * blocksize)
    padded[:n] = flat
    blocks = padded.view(nb, blocksize)
    absmax = blocks.abs().amax(1) if n else torch.zeros(0)
    inv = 1.0 / absmax
    idx = encode4(blocks * inv[:, None], quant_type).reshape(-1)[:n]
    if n % 2:
        idx = torch.cat([idx, torch.zeros(1, dtype=idx.dtype)])
    packed = (idx[0::2] * 16 + idx[1::2]).to(torch.uint8).view(-1, 1)
    return packed, absmax


def unpack_4bit(packed, n):
    b = packed.reshape(-1).view(torch.uint8).cpu().long()
    idx = torch.stack([b >> 4, b & 15], 1).reshape(-1)
    return idx[:n]


def dequantize_4bit(packed, absmax, blocksize, quant_type, shape, dtype):
    n = 1
    for s in shape:
        n *= s
    idx = unpack_4bit(packed, n)
    scale = absmax.float().cpu().repeat_interleave(blocksize)[:n]
    return (code4(quant_type)[idx] * scale).to(dtype).reshape(shape)


def dynamic_map_signed():
    vals = []
    for i in range(7):
        lin = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        mids = ((lin[:-1] + lin[1:]) / 2) * (10.0 ** (i - 6))
        vals += mids.tolist() + (-mids).tolist()
    vals += [0.0, 1.0]
    return torch.tensor(sorted(vals), dtype=torch.float32)


def _bnb_search(code, x):
    """bitsandbytes' 8-bit index search: a 7-step binary search from pivot 127, then the nearer
    of the last pivot and its bracketing neighbour by float32 midpoint (vectorized)."""
    pivot = torch.full_like(x, 127, dtype=torch.long)
    upper_p = torch.full_like(pivot, 255)
    lower_p = torch.zeros_like(pivot)
    lower = torch.full_like(x, -1.0)
    upper = torch.full_like(x, 1.0)
    val = code[pivot]
    step = 64
    while step > 0:
        gt = x > val
        lower_p = torch.where(gt, pivot, lower_p)
        lower = torch.where(gt, val, lower)
        upper_p = torch.where(gt, upper_p, pivot)
        upper = torch.where(gt, upper, val)
        pivot = torch.where(gt, pivot + step, pivot - step)
        val = code[pivot]
        step //= 2
    upper = torch.where(upper_p == 255, code[255], upper)
    lower = torch.where(lower_p == 0, code[0], lower)
    gt = x > val
    up_mid = (upper + val) * 0.5
    lo_mid = (lower + val) * 0.5
    return torch.where(gt, torch.where(x > up_mid, upper_p, pivot),
                       torch.where(x < lo_mid, lower_p, pivot))


def quantize_blockwise(A, code, blocksize):
    flat = A.detach().reshape(-1).float().cpu()
    n = flat.numel()
    nb = (n + blocksize - 1) // blocksize
    padded = torch.zeros(nb * blocksize)
    padded[:n] = flat
    blocks = padded.view(nb, blocksize)
    absmax = blocks.abs().amax(1) if n else torch.zeros(0)
    x = (blocks * (1.0 / absmax)[:, None]).reshape(-1)[:n]
    q = _bnb_search(code.float().cpu(), x).to(torch.uint8)
    return q.reshape(A.shape), absmax


def dequantize_blockwise(q, absmax, code, blocksize, dtype):
    n = q.numel()
    scale = absmax.float().cpu().repeat_interleave(blocksize)[:n]
    return (code.float().cpu()[q.reshape(-1).cpu().long()] * scale).to(dtype).reshape(q.shape)


def double_quant(absmax, nested_blocksize=256):
    """FORMAT.md double quantization of a float32 absmax: (qabsmax, nested_absmax, code, offset)."""
    offset = absmax.mean()
    code = dynamic_map_signed()
    q, nabs = quantize_blockwise(absmax - offset, code, nested_blocksize)
    return q, nabs, code, offset.reshape(1)


def decode_absmax(qabsmax, nested_absmax, code, offset, nested_blocksize=256):
    return dequantize_blockwise(qabsmax, nested_absmax, code, nested_blocksize, torch.float32) + offset.float().cpu()
