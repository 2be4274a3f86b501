"""CUDA kernels of the 4-bit and 8-bit blockwise ops and of linear_4bit, against the CPU ops, a
plain-PyTorch reference of FORMAT.md written here, and bitsandbytes' own output (test vectors).

Quantization must give the same bytes everywhere; matmuls are compared with a float64 product of
the float32-dequantized weight (the CUDA kernels round dequantized weights to the activation dtype,
as bitsandbytes does, so the tolerance is that of 16-bit operands). Every linear path (decode,
skinny, tiled, wgmma on Hopper, dequantize + cuBLAS) is forced through KBIT_LINEAR4_PATH so each kernel is covered whatever
the automatic choice is.
"""

import os
from fractions import Fraction
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

import kbit  # noqa: E402,F401  (registers torch.ops.kbit)
from blocks import padded_blocks  # noqa: E402

ops = torch.ops.kbit
DEV = "cuda"
REPO = Path(__file__).resolve().parents[1]
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]

# ---------------------------------------------------------------------------------------------
# Reference (FORMAT.md + bitsandbytes' rounding conventions), float32 on the CPU.

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
FP4_MAG = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0]
FP4 = [m / 12 for m in FP4_MAG] + [-m / 12 for m in FP4_MAG]


def f32_literal(text):
    """The float32 a C compiler makes of the literal `text`f: the float nearest the decimal value
    (rounding through float64 first differs for some of the constants below)."""
    x = Fraction(text)
    f = torch.tensor(float(x), dtype=torch.float32)
    cands = [torch.nextafter(f, torch.tensor(-2.0)), f, torch.nextafter(f, torch.tensor(2.0))]
    return min(cands, key=lambda c: abs(Fraction(c.item()) - x)).item()


# bitsandbytes' encoder constants, as its CUDA kernels write them. NF4: the midpoints of adjacent
# code values; FP4 (by magnitude rank; not all exact midpoints).
NF4_BOUNDS = [f32_literal(t) for t in [
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
    "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
    "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
    "0.5016634166240692", "0.6427869200706482", "0.8614784181118011"]]
FP4_BOUNDS = [f32_literal(t) for t in
              ["0.00260417", "0.0859375", "0.20833333", "0.29166667", "0.4166667", "0.583333", "0.8333333"]]
FP4_PATTERN_BY_RANK = [0, 1, 6, 7, 4, 5, 2, 3]


def code4(quant_type):
    return torch.tensor(NF4 if quant_type == "nf4" else FP4, dtype=torch.float32)


def encode4(x, quant_type):
    """x: float32 scaled by 1/absmax. Strict '>' against the boundaries; NaN -> 0."""
    if quant_type == "nf4":
        return (x.unsqueeze(-1) > torch.tensor(NF4_BOUNDS, dtype=torch.float32)).sum(-1)
    rank = (x.abs().unsqueeze(-1) > torch.tensor(FP4_BOUNDS, dtype=torch.float32)).sum(-1)
    return torch.tensor(FP4_PATTERN_BY_RANK)[rank] + 8 * (x < 0).long()


def ref_quantize_4bit(A, blocksize, quant_type):
    blocks, absmax, n = padded_blocks(A, blocksize)
    # Scaled by the float32 reciprocal, like bitsandbytes; the pad element of an odd count is 0.0.
    scaled = blocks * (1.0 / absmax)[:, None]
    idx = encode4(scaled, quant_type).reshape(-1)[: n + (n % 2)]
    packed = (idx[0::2] * 16 + idx[1::2]).to(torch.uint8).view(-1, 1)
    return packed, absmax


def ref_dequantize_4bit(packed, absmax, blocksize, quant_type, shape):
    n = 1
    for s in shape:
        n *= s
    b = packed.reshape(-1).view(torch.uint8).cpu().long()
    idx = torch.stack([b >> 4, b & 15], 1).reshape(-1)[:n]
    scale = absmax.float().cpu().repeat_interleave(blocksize)[:n]
    return (code4(quant_type)[idx] * scale).reshape(shape)


def dynamic_map_signed():
    vals = []
    for i in range(7):
        lin = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        mids = ((lin[:-1] + lin[1:]) / 2) * torch.tensor(10.0 ** (i - 6), dtype=torch.float32)
        vals += mids.tolist() + (-mids).tolist()
    return torch.tensor(sorted(vals + [0.0, 1.0]), dtype=torch.float32)


def ref_search_8bit(code, x):
    """bitsandbytes' 8-bit encoder: 7 halving steps from pivot 127, then the nearer of the pivot
    and the neighbour that bracketed x by float32 midpoint."""
    pivot = torch.full(x.shape, 127, dtype=torch.long)
    upper_p, lower_p = torch.full_like(pivot, 255), torch.zeros_like(pivot)
    lower, upper = torch.full_like(x, -1.0), torch.full_like(x, 1.0)
    val = code[pivot]
    for step in [64, 32, 16, 8, 4, 2, 1]:
        gt = x > val
        lower_p, lower = torch.where(gt, pivot, lower_p), torch.where(gt, val, lower)
        upper_p, upper = torch.where(gt, upper_p, pivot), torch.where(gt, upper, val)
        pivot = torch.where(gt, pivot + step, pivot - step)
        val = code[pivot]
    upper = torch.where(upper_p == 255, code[255], upper)
    lower = torch.where(lower_p == 0, code[0], lower)
    gt = x > val
    return torch.where(gt, torch.where(x > (upper + val) * 0.5, upper_p, pivot),
                       torch.where(x < (lower + val) * 0.5, lower_p, pivot))


def ref_quantize_blockwise(A, code, blocksize):
    blocks, absmax, n = padded_blocks(A, blocksize)
    x = (blocks * (1.0 / absmax)[:, None]).reshape(-1)[:n]
    return ref_search_8bit(code.float().cpu(), x).to(torch.uint8).reshape(A.shape), absmax


def ref_decode_absmax(q, nested_absmax, code, offset, nested_blocksize=256):
    scale = nested_absmax.float().cpu().repeat_interleave(nested_blocksize)[: q.numel()]
    return code.float().cpu()[q.reshape(-1).cpu().long()] * scale + offset.float().cpu()


def double_quant(absmax):
    """FORMAT.md double quantization of a float32 absmax, on the device through the CUDA op."""
    offset = absmax.mean().reshape(1)
    code = dynamic_map_signed().to(absmax.device)
    q, nested = ops.quantize_blockwise(absmax - offset, code, 256)
    return q, nested, code, offset


# ---------------------------------------------------------------------------------------------
# Helpers


def cpu_has(op_name):
    """Whether the CPU kernel of torch.ops.kbit.<op_name> is registered (the lead's CPU ops)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"kbit::{op_name}", "CPU")


def testdata():
    root = Path(os.environ.get("KBIT_TESTDATA", REPO.parent / "shared" / "testdata"))
    path = root / "bnb_vectors.safetensors"
    if not path.exists():
        pytest.skip(f"bitsandbytes test vectors not found at {path}")
    from safetensors.torch import load_file

    return load_file(str(path))


def rel_err(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def linear_err(out, A, W_ref, b, ref=None):
    """|out - ref| relative to the size of the summed terms, |A| @ |W|^T + |b| (not to |ref|,
    which cancellation can make arbitrarily small, e.g. a layer with one output). ref defaults to
    the float64 product with W_ref."""
    A2 = A.reshape(-1, A.shape[-1]).double().cpu()
    scale = A2.abs() @ W_ref.double().abs().T
    if b is not None:
        scale = scale + b.double().cpu().abs()
    if ref is None:
        ref = A2 @ W_ref.double().T
        if b is not None:
            ref = ref + b.double().cpu()
    ref = ref.reshape(scale.shape).double().cpu()
    diff = out.reshape(ref.shape).double().cpu() - ref
    return (diff.norm() / scale.norm().clamp_min(1e-30)).item()


def poison_allocator():
    """Leave NaN in the caching allocator's free blocks, so an output element that a kernel never
    writes shows up as NaN instead of a plausible leftover."""
    bufs = [torch.full((n,), 0xFF, dtype=torch.uint8, device=DEV) for n in [64 << 20] + [1 << 19] * 8]
    torch.cuda.synchronize()
    del bufs


@pytest.fixture
def path_env(monkeypatch):
    """Forces a linear_4bit kernel: auto, decode, skinny, tiled, wgmma (tile by token count),
    wgmma128 and wgmma256 (tokens per block forced), dequant."""

    def set_path(path):
        monkeypatch.delenv("KBIT_LINEAR4_WGMMA_TILE", raising=False)
        if path == "auto":
            monkeypatch.delenv("KBIT_LINEAR4_PATH", raising=False)
        elif path.startswith("wgmma") and path != "wgmma":
            monkeypatch.setenv("KBIT_LINEAR4_PATH", "wgmma")
            monkeypatch.setenv("KBIT_LINEAR4_WGMMA_TILE", path[len("wgmma"):])
        else:
            monkeypatch.setenv("KBIT_LINEAR4_PATH", path)

    return set_path


# ---------------------------------------------------------------------------------------------
# Exactness against bitsandbytes' bytes


def test_quantize_4bit_matches_bnb_vectors():
    d = testdata()
    for key in [k[: -len(".packed")] for k in d if k.startswith("q4.") and k.endswith(".packed")]:
        _, name, quant_type, _bs = key.split(".")
        A = d[f"in.{name}"].to(DEV)
        packed, absmax = ops.quantize_4bit(A, 64, quant_type, torch.uint8)
        assert torch.equal(packed.cpu(), d[key + ".packed"]), key
        assert torch.equal(absmax.cpu(), d[key + ".absmax"]), key
        deq = ops.dequantize_4bit(d[key + ".packed"].to(DEV), d[key + ".absmax"].to(DEV), 64, quant_type,
                                  list(A.shape), torch.float32)
        assert torch.equal(deq.cpu(), d[key + ".deq"]), key


def test_blockwise_8bit_matches_bnb_vectors():
    d = testdata()
    A, code = d["in.A_f32"].to(DEV), d["q8.code"].to(DEV)
    assert torch.equal(dynamic_map_signed(), d["q8.code"])
    q, absmax = ops.quantize_blockwise(A, code, 256)
    assert torch.equal(q.cpu(), d["q8.A_f32.bs256.q"])
    assert torch.equal(absmax.cpu(), d["q8.A_f32.bs256.absmax"])


def test_double_quant_matches_bnb_vectors():
    d = testdata()
    k = "q4dq.A_f32.nf4.bs64"
    A = d["in.A_f32"].to(DEV)
    packed, absmax = ops.quantize_4bit(A, 64, "nf4", torch.uint8)
    assert torch.equal(packed.cpu(), d[k + ".packed"])
    # The offset (a float32 mean) depends on summation order; use bitsandbytes' value.
    offset = d[k + ".offset"].to(DEV)
    q, nested = ops.quantize_blockwise(absmax - offset, d[k + ".nested_code"].to(DEV), 256)
    assert torch.equal(q.cpu(), d[k + ".qabsmax"])
    assert torch.equal(nested.cpu(), d[k + ".nested_absmax"])
    decoded = ops.dequantize_blockwise(q, nested, d[k + ".nested_code"].to(DEV), 256, torch.float32) + offset
    deq = ops.dequantize_4bit(packed, decoded, 64, "nf4", list(A.shape), torch.float32)
    assert torch.equal(deq.cpu(), d[k + ".deq"])
    # linear_4bit with the double-quantized state equals a matmul with bitsandbytes' dequantized W.
    X = torch.randn(5, A.shape[1], device=DEV, dtype=torch.float16)
    out = ops.linear_4bit(X, packed, q, nested, d[k + ".nested_code"].to(DEV), offset, 64, 256, "nf4",
                          list(A.shape), None)
    assert linear_err(out, X, d[k + ".deq"], None) < 3e-3


# ---------------------------------------------------------------------------------------------
# Quantize / dequantize against the CPU op and the reference

SIZES = [(1,), (2,), (7, 37), (31,), (33, 65), (256, 320), (1000, 1001), (3, 4096 + 8), (1 << 20) + 10]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_quantize_4bit_bytes(quant_type, dtype, blocksize):
    for size in SIZES:
        A = (torch.randn(size) * 3).to(dtype)
        A.view(-1)[blocksize:2 * blocksize] = 0  # an all-zero block where there is a second one
        packed, absmax = ops.quantize_4bit(A.to(DEV), blocksize, quant_type, torch.uint8)
        ref_p, ref_a = ref_quantize_4bit(A, blocksize, quant_type)
        assert packed.shape == ref_p.shape and packed.dtype == torch.uint8
        assert torch.equal(absmax.cpu(), ref_a), size
        assert torch.equal(packed.cpu(), ref_p), size
        if cpu_has("quantize_4bit"):
            cpu_p, cpu_a = ops.quantize_4bit(A, blocksize, quant_type, torch.uint8)
            assert torch.equal(packed.cpu(), cpu_p) and torch.equal(absmax.cpu(), cpu_a), size


def test_quantize_nf4_at_every_threshold():
    """Values exactly at, and one float step either side of, every NF4 threshold and every
    thirty-second of [-1, 1] (the kernel's bucket edges are at odd ones) encode as the reference
    does (each 64-value block holds a 1.0, so the scale is exactly 1 and x is the value itself); so
    does a block holding inf (x = NaN there)."""
    points = torch.tensor(NF4_BOUNDS + [-1 + k / 32 for k in range(65)], dtype=torch.float32)
    up, down = torch.nextafter(points, torch.tensor(2.0)), torch.nextafter(points, torch.tensor(-2.0))
    values = torch.cat([points, up, down, torch.tensor([0.0, -0.0, 1.0, -1.0])])
    blocks = [torch.cat([torch.ones(1), b, torch.zeros(63 - len(b))]) for b in values.split(63)]
    blocks.append(torch.tensor([1.0, float("inf"), float("-inf")] + [0.5] * 61))
    A = torch.cat(blocks)
    packed, absmax = ops.quantize_4bit(A.to(DEV), 64, "nf4", torch.uint8)
    ref_p, ref_a = ref_quantize_4bit(A, 64, "nf4")
    assert torch.equal(absmax.cpu(), ref_a)
    assert torch.equal(packed.cpu(), ref_p)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_dequantize_4bit_exact(quant_type, dtype, blocksize):
    for size in SIZES:
        A = torch.randn(size)
        packed, absmax = ref_quantize_4bit(A, blocksize, quant_type)
        out = ops.dequantize_4bit(packed.to(DEV), absmax.to(DEV), blocksize, quant_type, list(A.shape), dtype)
        assert out.dtype == dtype and out.shape == A.shape
        ref = ref_dequantize_4bit(packed, absmax, blocksize, quant_type, A.shape).to(dtype)
        assert torch.equal(out.cpu(), ref), size
        if cpu_has("dequantize_4bit"):
            cpu = ops.dequantize_4bit(packed, absmax, blocksize, quant_type, list(A.shape), dtype)
            assert torch.equal(out.cpu(), cpu), size


def test_4bit_misaligned_and_storage():
    base = torch.randn(4099, device=DEV, dtype=torch.bfloat16)
    A = base[1:4097]  # contiguous, but 2 bytes past a 16-byte boundary: the scalar path
    packed, absmax = ops.quantize_4bit(A, 64, "nf4", torch.uint8)
    ref_p, ref_a = ref_quantize_4bit(A.cpu(), 64, "nf4")
    assert torch.equal(packed.cpu(), ref_p) and torch.equal(absmax.cpu(), ref_a)
    # quant_storage reinterprets the same bytes.
    p16, _ = ops.quantize_4bit(A, 64, "nf4", torch.bfloat16)
    assert p16.dtype == torch.bfloat16 and p16.shape == (1024, 1)
    assert torch.equal(p16.view(torch.uint8).reshape(-1, 1).cpu(), ref_p)
    out = ops.dequantize_4bit(p16, absmax, 64, "nf4", [4096], torch.float16)
    assert torch.equal(out.cpu(), ref_dequantize_4bit(ref_p, ref_a, 64, "nf4", (4096,)).half())
    # Misaligned packed bytes on dequantize (scalar path).
    pb = torch.cat([torch.zeros(1, 1, dtype=torch.uint8), ref_p]).to(DEV)[1:]
    out = ops.dequantize_4bit(pb, absmax, 64, "nf4", [4096], torch.float32)
    assert torch.equal(out.cpu(), ref_dequantize_4bit(ref_p, ref_a, 64, "nf4", (4096,)))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_blockwise_8bit(dtype, blocksize):
    code = dynamic_map_signed()
    for size in SIZES:
        A = (torch.randn(size) * 2).to(dtype)
        A.view(-1)[:3] = 0
        q, absmax = ops.quantize_blockwise(A.to(DEV), code.to(DEV), blocksize)
        ref_q, ref_a = ref_quantize_blockwise(A, code, blocksize)
        assert q.shape == A.shape and q.dtype == torch.uint8
        assert torch.equal(absmax.cpu(), ref_a), size
        assert torch.equal(q.cpu(), ref_q), size
        if cpu_has("quantize_blockwise"):
            cq, ca = ops.quantize_blockwise(A, code, blocksize)
            assert torch.equal(q.cpu(), cq) and torch.equal(absmax.cpu(), ca), size
        out = ops.dequantize_blockwise(q, absmax, code.to(DEV), blocksize, dtype)
        scale = ref_a.repeat_interleave(blocksize)[: A.numel()].view(A.shape)
        assert torch.equal(out.cpu(), (code[ref_q.long()] * scale).to(dtype)), size


def _codes_for_search():
    g = torch.Generator().manual_seed(5)
    sorted_random = torch.cat([torch.rand(254, generator=g) * 2 - 1, torch.tensor([-1.0, 1.0])]).sort().values
    repeated = sorted_random.clone()
    repeated[100] = repeated[101]  # equal neighbours: not a strictly rising code
    unsorted = sorted_random[torch.randperm(256, generator=g)]
    return {"dynamic": dynamic_map_signed(), "sorted": sorted_random, "repeated": repeated, "unsorted": unsorted}


@pytest.mark.parametrize("name", ["dynamic", "sorted", "repeated", "unsorted"])
def test_blockwise_8bit_every_midpoint(name):
    # The kernel counts passed midpoints for strictly rising codes and runs bitsandbytes' search
    # otherwise; both must give the search's bytes at every midpoint, one ulp either side, every
    # code value and both zeros (each block holds a 1.0, so x is the value itself).
    code = _codes_for_search()[name]
    mids = (code[:-1] + code[1:]) * 0.5
    vals = torch.cat([mids, mids.nextafter(torch.tensor(2.0)), mids.nextafter(torch.tensor(-2.0)), code,
                      code.nextafter(torch.tensor(2.0)), torch.tensor([0.0, -0.0, 1e-30, -1e-30])]).clamp(-1, 1)
    blocks = vals.split(255)
    A = torch.cat([torch.cat([torch.ones(1), b, torch.zeros(255 - b.numel())]) for b in blocks])
    q, absmax = ops.quantize_blockwise(A.to(DEV), code.to(DEV), 256)
    ref_q, ref_a = ref_quantize_blockwise(A, code, 256)
    assert torch.equal(absmax.cpu(), ref_a)
    assert torch.equal(q.cpu(), ref_q)


def test_empty_tensors():
    e = torch.empty(0, device=DEV)
    p, a = ops.quantize_4bit(e, 64, "nf4", torch.uint8)
    assert p.shape == (0, 1) and a.shape == (0,)
    assert ops.dequantize_4bit(p, a, 64, "nf4", [0, 5], torch.float16).shape == (0, 5)
    q, a = ops.quantize_blockwise(e, dynamic_map_signed().to(DEV), 256)
    assert q.shape == (0,) and a.shape == (0,)
    assert ops.dequantize_blockwise(q, a, dynamic_map_signed().to(DEV), 256, torch.float32).shape == (0,)


# ---------------------------------------------------------------------------------------------
# linear_4bit


def make_layer(N, K, blocksize=64, quant_type="nf4", dq=False, bias=True, dtype=torch.bfloat16):
    W = torch.randn(N, K, device=DEV) * 0.05
    packed, absmax = ops.quantize_4bit(W, blocksize, quant_type, torch.uint8)
    W_ref = ref_dequantize_4bit(packed.cpu(), absmax.cpu(), blocksize, quant_type, (N, K))
    state = dict(absmax=absmax, nested_absmax=None, nested_code=None, nested_offset=None)
    if dq:
        q, nested, code, offset = double_quant(absmax)
        state = dict(absmax=q, nested_absmax=nested, nested_code=code, nested_offset=offset)
        decoded = ref_decode_absmax(q, nested, code, offset)
        W_ref = ref_dequantize_4bit(packed.cpu(), decoded, blocksize, quant_type, (N, K))
    b = torch.randn(N, device=DEV, dtype=dtype) if bias else None
    return packed, state, b, W_ref


def run_linear(A, packed, state, b, N, K, blocksize=64, quant_type="nf4"):
    return ops.linear_4bit(A, packed, state["absmax"], state["nested_absmax"], state["nested_code"],
                           state["nested_offset"], blocksize, 256, quant_type, [N, K], b)


TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3, torch.float32: 1e-5}


@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", ["auto", "decode", "skinny", "tiled", "wgmma", "wgmma128", "wgmma256", "dequant"])
def test_linear_paths(path, dtype, dq, path_env):
    N, K = 272, 640  # N not a multiple of 128, K not of 128
    packed, state, b, W_ref = make_layer(N, K, dq=dq, dtype=dtype)
    path_env(path)
    for M in [1, 2, 3, 8, 9, 13, 16, 17, 40, 64, 65, 130, 256, 1024]:
        if path == "skinny" and M > 16:
            continue
        A = torch.randn(M, K, device=DEV, dtype=dtype)
        poison_allocator()
        out = run_linear(A, packed, state, b, N, K)
        assert out.shape == (M, N) and out.dtype == dtype
        assert linear_err(out, A, W_ref, b) < TOL[dtype], (path, M)


SHAPES = [  # (N, K, blocksize, quant_type)
    (1, 32, 32, "nf4"),
    (16, 32, 64, "fp4"),  # blocksize larger than a row: blocks span rows
    (129, 96, 32, "nf4"),
    (300, 4128, 128, "fp4"),  # K % 128 == 32: a partial last chunk
    (64, 100, 64, "nf4"),  # K % 32 != 0: dequantize path only
    (33, 2048, 4096, "nf4"),
    (512, 8192, 256, "nf4"),  # few tiles: split-K across blocks
    (1000, 1088, 64, "fp4"),  # one token: K % 256 == 64 (a last chunk of one lane's columns), N % 16 == 8
    (8200, 512, 64, "nf4"),  # one token: more 16-row tiles than blocks, so blocks take several
]


@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_shapes(shape, dtype, dq, path_env):
    N, K, bs, qt = shape
    packed, state, b, W_ref = make_layer(N, K, bs, qt, dq=dq, dtype=dtype)
    for path in ["auto", "tiled", "wgmma128", "wgmma256"]:
        path_env(path)
        for M in [1, 5, 16, 17, 77, 300]:
            A = torch.randn(M, K, device=DEV, dtype=dtype)
            poison_allocator()
            out = run_linear(A, packed, state, b, N, K, bs, qt)
            assert linear_err(out, A, W_ref, b) < TOL[dtype], (path, M)
            if cpu_has("linear_4bit") and M <= 17:
                cpu_state = {k: (v.cpu() if v is not None else None) for k, v in state.items()}
                cpu = run_linear(A.cpu(), packed.cpu(), cpu_state, b.cpu(), N, K, bs, qt)
                assert linear_err(out, A, W_ref, b, ref=cpu) < TOL[dtype], (path, M)


def test_linear_large_m_and_batched(path_env):
    N, K = 256, 512
    packed, state, b, W_ref = make_layer(N, K, dq=True)
    for path in ["auto", "tiled", "wgmma128", "wgmma256", "dequant"]:
        path_env(path)
        A = torch.randn(4096, K, device=DEV, dtype=torch.bfloat16)
        assert linear_err(run_linear(A, packed, state, b, N, K), A, W_ref, b) < 1e-2
    path_env("auto")
    A3 = torch.randn(2, 3, K, device=DEV, dtype=torch.float16)
    out = run_linear(A3, packed, state, b.half(), N, K)
    assert out.shape == (2, 3, N) and out.dtype == torch.float16
    assert linear_err(out, A3, W_ref, b.half()) < 3e-3
    # float32 activations take the dequantize path and stay float32.
    A32 = torch.randn(7, K, device=DEV)
    out = run_linear(A32, packed, state, None, N, K)
    assert out.dtype == torch.float32
    assert linear_err(out, A32, W_ref, None) < 1e-5


def test_linear_bias_dtype_and_no_bias():
    N, K = 64, 256
    packed, state, b, W_ref = make_layer(N, K, bias=False)
    A = torch.randn(3, K, device=DEV, dtype=torch.bfloat16)
    assert linear_err(run_linear(A, packed, state, None, N, K), A, W_ref, None) < 1e-2
    b32 = torch.randn(N, device=DEV)  # a float32 bias is cast to A's dtype
    assert linear_err(run_linear(A, packed, state, b32, N, K), A, W_ref, b32.bfloat16()) < 1e-2


def test_one_token_takes_the_decode_kernel(path_env):
    """One token goes to the one-token kernel where it applies (blocksize >= 64, K % 64 == 0) and to
    the skinny kernel elsewhere; the kernels run are read from the profiler."""
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING"):
        pytest.skip("the profiler does not run under compute-sanitizer (this env is set for it)")
    path_env("auto")

    def kernels(N, K, blocksize):
        packed, state, b, W_ref = make_layer(N, K, blocksize)
        A = torch.randn(1, K, device=DEV, dtype=torch.bfloat16)
        run_linear(A, packed, state, b, N, K, blocksize)  # first call: one-time setup outside the trace
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out = run_linear(A, packed, state, b, N, K, blocksize)
            torch.cuda.synchronize()
        assert linear_err(out, A, W_ref, b) < 1e-2
        return " ".join(e.name for e in prof.events())

    assert "decode_kernel" in kernels(256, 1024, 64)
    for N, K, blocksize in [(256, 1056, 64), (256, 1024, 32)]:  # K % 64 != 0; blocksize 32
        names = kernels(N, K, blocksize)
        assert "skinny_kernel" in names and "decode_kernel" not in names


@pytest.mark.parametrize("M", [1, 5, 16])
def test_linear_chain_eager_and_graph(M):
    """Back-to-back skinny calls, each reading the previous one's output (on sm_90 they are
    launched as programmatic dependents, so each must wait for its input), eager and replayed
    from a CUDA graph with new input, against float64 references."""
    D = 2048
    layers = [make_layer(D, D, dq=dq) for dq in (True, False, True)]

    def chain(x):  # no op between the layers: each kernel's input is the previous kernel's output
        for packed, state, b, _ in layers:
            x = run_linear(x, packed, state, b, D, D)
        return x

    def reference(x):
        x = x.double().cpu()
        for _, _, b, W_ref in layers:
            x = x @ W_ref.double().T + b.double().cpu()
        return x

    def err(out, x):
        ref = reference(x)
        return ((out.double().cpu() - ref).norm() / ref.norm()).item()

    x0 = torch.randn(M, D, device=DEV, dtype=torch.bfloat16)
    assert err(chain(x0), x0) < 2e-2
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING"):
        return  # graph capture needs the caching allocator (this env is set for compute-sanitizer)
    static_in = x0.clone()
    chain(static_in)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = chain(static_in)
    x1 = torch.randn(M, D, device=DEV, dtype=torch.bfloat16)
    static_in.copy_(x1)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, chain(x1))
    assert err(static_out, x1) < 2e-2


def test_linear_empty():
    N, K = 64, 256
    packed, state, b, _ = make_layer(N, K)
    A0 = torch.empty(0, K, device=DEV, dtype=torch.bfloat16)
    assert run_linear(A0, packed, state, b, N, K).shape == (0, N)
    assert run_linear(A0.view(2, 0, K), packed, state, b, N, K).shape == (2, 0, N)
    e = torch.empty(0, device=DEV)
    p0, a0 = ops.quantize_4bit(e, 64, "nf4", torch.uint8)
    bias = torch.randn(5, device=DEV, dtype=torch.float16)
    A = torch.randn(3, 0, device=DEV, dtype=torch.float16)
    out = ops.linear_4bit(A, p0, a0, None, None, None, 64, 256,
                          "nf4", [5, 0], bias)
    assert torch.equal(out.cpu(), bias.cpu().expand(3, 5))


# ---------------------------------------------------------------------------------------------
# Bad input


def bad_input_case():
    N, K = 64, 256
    packed, state, b, _ = make_layer(N, K)
    A = torch.randn(2, K, device=DEV, dtype=torch.bfloat16)
    return N, K, packed, state, b, A


def test_bad_input_device_mix():
    N, K, packed, state, b, A = bad_input_case()
    with pytest.raises(RuntimeError, match="device|cuda|cpu"):
        run_linear(A.cpu(), packed, state, b, N, K)  # CPU activations, CUDA weight
    with pytest.raises(RuntimeError, match="device|cuda|cpu"):
        run_linear(A, packed.cpu(), state, b, N, K)
    with pytest.raises(RuntimeError, match="device|cuda|cpu"):
        ops.dequantize_4bit(packed, state["absmax"].cpu(), 64, "nf4", [N, K], torch.float16)
    with pytest.raises(RuntimeError, match="device|cuda|cpu"):
        ops.quantize_blockwise(A, dynamic_map_signed(), 256)  # code on the CPU


def test_bad_input_dtypes():
    N, K, packed, state, b, A = bad_input_case()
    with pytest.raises(TypeError):
        run_linear(A.to(torch.int32), packed, state, b, N, K)
    with pytest.raises(TypeError):
        run_linear(A, packed, dict(state, absmax=state["absmax"].half()), b, N, K)
    with pytest.raises(TypeError):
        ops.quantize_4bit(A.to(torch.int8), 64, "nf4", torch.uint8)
    with pytest.raises(TypeError):
        code = dynamic_map_signed().to(DEV)
        ops.dequantize_blockwise(packed.float(), state["absmax"], code, 64, torch.float16)


def test_bad_input_values():
    N, K, packed, state, b, A = bad_input_case()
    with pytest.raises(ValueError):
        run_linear(A[:, :128], packed, state, b, N, K)  # wrong in_features
    with pytest.raises(ValueError):
        run_linear(A, packed[:-1], state, b, N, K)  # too few packed bytes
    with pytest.raises(ValueError):
        run_linear(A, packed, dict(state, absmax=state["absmax"].to(torch.uint8)), b, N, K)  # no nested state
    with pytest.raises(ValueError):
        ops.quantize_4bit(A, 48, "nf4", torch.uint8)
    with pytest.raises(ValueError):
        ops.quantize_4bit(A, 64, "int4", torch.uint8)


# ---------------------------------------------------------------------------------------------
# A quick sweep of every kernel over odd sizes, for compute-sanitizer (memcheck) runs:
#   PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck pytest -k sanitize ...


def test_sanitize_sweep(path_env):
    code = dynamic_map_signed().to(DEV)
    for n in [1, 31, 257, 4099]:
        A = torch.randn(n, device=DEV, dtype=torch.float16)
        for bs in [32, 512]:
            p, a = ops.quantize_4bit(A, bs, "nf4", torch.uint8)
            ops.dequantize_4bit(p, a, bs, "nf4", [n], torch.bfloat16)
            q, a8 = ops.quantize_blockwise(A, code, bs)
            ops.dequantize_blockwise(q, a8, code, bs, torch.float32)
    for N, K in [(17, 96), (130, 4128), (40, 100), (1000, 1088)]:
        for dq in [False, True]:
            packed, state, b, W_ref = make_layer(N, K, dq=dq)
            for path in ["auto", "decode", "skinny", "tiled", "wgmma128", "wgmma256", "dequant"]:
                path_env(path)
                for M in [1, 9, 70, 200]:
                    if path == "skinny" and M > 16:
                        continue
                    A = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
                    out = run_linear(A, packed, state, b, N, K)
                    assert linear_err(out, A, W_ref, b) < 1e-2
    torch.cuda.synchronize()
