"""4-bit ops on the CPU: numerics against a plain PyTorch reference of FORMAT.md, shapes, errors."""

import pytest
import torch

import kbit.functional as F
from blocks import padded_blocks

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference_quantize_4bit(A, blocksize, quant_type):
    """FORMAT.md written out in PyTorch: nearest code value per element, high nibble first."""
    code = F.code_4bit(quant_type)
    blocks, absmax, n = padded_blocks(A, blocksize)
    scaled = (blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)).clamp(-1, 1)
    idx = (scaled.unsqueeze(-1) - code).abs().argmin(-1).flatten()[:n].to(torch.uint8)
    if n % 2:
        idx = torch.cat([idx, torch.zeros(1, dtype=torch.uint8)])
    packed = (idx[0::2] << 4) | idx[1::2]
    return packed.view(-1, 1), absmax


def unpack(packed, n):
    """4-bit indices in element order: high nibble first."""
    flat = packed.flatten()
    return torch.stack([(flat >> 4).long(), (flat & 15).long()], 1).flatten()[:n]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_round_trip_matches_reference(quant_type, dtype, blocksize):
    A = torch.randn(37, 53, dtype=dtype)  # odd, not divisible by any blocksize
    packed, state = F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type)
    ref_packed, ref_absmax = reference_quantize_4bit(A, blocksize, quant_type)
    assert packed.shape == ((A.numel() + 1) // 2, 1)
    torch.testing.assert_close(state.absmax, ref_absmax, rtol=0, atol=0)
    # Compare decoded code values (FP4 has both +0 and -0). The kernel scales by the reciprocal of
    # absmax and the reference divides, so an element within rounding of a decision boundary (the
    # midpoint of two adjacent codes) may land on either side; any other difference is an error.
    code = F.code_4bit(quant_type)
    got_v, ref_v = code[unpack(packed, A.numel())], code[unpack(ref_packed, A.numel())]
    differ = got_v != ref_v
    blocks, absmax, n = padded_blocks(A, blocksize)
    scaled = (blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)).flatten()[:n]
    off_boundary = (scaled - (got_v + ref_v) / 2).abs() > 1e-6
    assert not (differ & off_boundary).any(), scaled[differ & off_boundary]
    out = F.dequantize_4bit(packed, state)
    assert out.dtype == dtype and out.shape == A.shape
    idx = unpack(packed, A.numel())
    expected = (code[idx] * state.absmax.repeat_interleave(blocksize)[: A.numel()]).to(dtype).view(A.shape)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("quant_type,max_err", [("nf4", 0.080), ("fp4", 0.105)])
def test_round_trip_error_on_normal_data(quant_type, max_err):
    A = torch.randn(1024, 1024)
    packed, state = F.quantize_4bit(A, blocksize=64, quant_type=quant_type)
    err = (F.dequantize_4bit(packed, state) - A).abs().mean().item()
    assert max_err * 0.8 < err < max_err


def test_double_quant_round_trip_close_to_single():
    A = torch.randn(512, 768, dtype=torch.bfloat16)
    p1, s1 = F.quantize_4bit(A, double_quant=False)
    p2, s2 = F.quantize_4bit(A, double_quant=True)
    assert s2.absmax.dtype == torch.uint8 and s2.nested is not None
    assert torch.equal(p1, p2)  # the packed weights do not depend on how absmax is stored
    rel = (s2.dequantized_absmax() - s1.absmax).abs() / s1.absmax
    assert rel.max() < 0.02
    err1 = (F.dequantize_4bit(p1, s1).float() - A.float()).abs().mean()
    err2 = (F.dequantize_4bit(p2, s2).float() - A.float()).abs().mean()
    assert err2 < err1 * 1.02



@pytest.mark.parametrize("blocks", [1, 65536, 65537, 3 * 65536 + 5])
def test_double_quant_offset_is_the_float64_mean(blocks):
    """The offset is summed in chunks (no float64 copy of absmax); it must equal the float32 mean
    summed in float64 in one pass, chunk boundaries included."""
    A = torch.randn(blocks * 64) * torch.rand(blocks).repeat_interleave(64) * 3
    _, single = F.quantize_4bit(A, double_quant=False)
    _, state = F.quantize_4bit(A, double_quant=True)
    absmax = single.absmax
    expected = (absmax.sum(dtype=torch.float64).float() * (1.0 / absmax.numel())).to(torch.float32)
    assert state.offset.dtype == torch.float32 and torch.equal(state.offset.reshape(()), expected.reshape(()))


@pytest.mark.parametrize("shape", [(0,), (0, 7), (1,), (3,), (65,), (2, 3, 5)])
def test_any_shape(shape):
    A = torch.randn(shape)
    packed, state = F.quantize_4bit(A)
    assert packed.numel() == (A.numel() + 1) // 2
    assert F.dequantize_4bit(packed, state).shape == A.shape


def test_all_zero_block_dequantizes_to_zero():
    A = torch.zeros(128)
    A[64:] = torch.randn(64)
    packed, state = F.quantize_4bit(A)
    assert state.absmax[0] == 0
    out = F.dequantize_4bit(packed, state)
    assert torch.isfinite(out).all() and out[:64].eq(0).all()


@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float16, torch.float32, torch.int8])
def test_quant_storage_reinterprets_bytes(storage):
    A = torch.randn(64, 64)
    p8, s8 = F.quantize_4bit(A)
    ps, ss = F.quantize_4bit(A, quant_storage=storage)
    assert ps.dtype == storage and ps.shape == (p8.numel() // ps.element_size(), 1)
    assert torch.equal(ps.view(torch.uint8).view(-1, 1), p8)
    torch.testing.assert_close(F.dequantize_4bit(ps, ss), F.dequantize_4bit(p8, s8), rtol=0, atol=0)


def test_bad_input_raises_clear_errors():
    A = torch.randn(64)
    with pytest.raises(TypeError, match="float32.*int32"):
        F.quantize_4bit(A.to(torch.int32))
    with pytest.raises(ValueError, match="blocksize"):
        F.quantize_4bit(A, blocksize=48)
    with pytest.raises(ValueError, match="quant_type"):
        F.quantize_4bit(A, quant_type="nf5")
    with pytest.raises(ValueError, match="NaN"):
        F.quantize_4bit(torch.tensor([1.0, float("nan")]))
    packed, state = F.quantize_4bit(A)
    with pytest.raises(ValueError, match="packed holds"):
        torch.ops.kbit.dequantize_4bit(packed, state.absmax, 64, "nf4", [128], torch.float32)
    with pytest.raises(ValueError, match="absmax has"):
        torch.ops.kbit.dequantize_4bit(packed, state.absmax[:0], 64, "nf4", [64], torch.float32)
    with pytest.raises(TypeError, match="absmax"):
        torch.ops.kbit.dequantize_4bit(packed, state.absmax.double(), 64, "nf4", [64], torch.float32)
    with pytest.raises(ValueError, match="quant_storage"):
        F.quantize_4bit(torch.randn(6), quant_storage=torch.float32)  # 3 bytes do not fill a float32


def dequantized_weight(packed, state, dtype=torch.float32):
    return F.dequantize_4bit(packed, state, dtype)


@pytest.mark.parametrize("M", [1, 3, 16, 17, 64])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("double_quant", [False, True])
def test_linear_4bit_matches_dequantized_matmul(M, dtype, double_quant):
    N, K = 48, 160
    W = torch.randn(N, K)
    packed, state = F.quantize_4bit(W, blocksize=64, double_quant=double_quant)
    A = torch.randn(2, M, K).to(dtype)
    bias = torch.randn(N).to(dtype)
    out = F.linear_4bit(A, packed, state, bias)
    ref = A.float() @ dequantized_weight(packed, state).t() + bias.float()
    assert out.dtype == dtype and out.shape == (2, M, N)
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_linear_4bit_bfloat16_few_rows_are_batch_invariant():
    # Up to 8 rows of bfloat16 take one streaming kernel (the bfloat16 one on AVX512-BF16 CPUs, in
    # passes of 8 rows): a row's output does not depend on the rows beside it. Quantization blocks
    # straddle weight rows (K % 64 != 0).
    N, K = 70, 2080
    W = torch.randn(N, K)
    packed, state = F.quantize_4bit(W, blocksize=64, double_quant=True)
    A = torch.randn(8, K).bfloat16()
    full = F.linear_4bit(A, packed, state)
    for m in range(1, 8):
        assert torch.equal(F.linear_4bit(A[:m], packed, state), full[:m]), m
    ref = A.float() @ dequantized_weight(packed, state, torch.bfloat16).float().t()
    err = ((full.float() - ref).norm() / ref.norm()).item()
    assert err < 5e-3, err


@pytest.mark.parametrize("path", ["bfloat16", "float32", "slabs"])
def test_linear_4bit_cpu_forced_paths(monkeypatch, path):
    # Every CPU path (KBIT_CPU_LINEAR4_PATH forces one; bfloat16 only where the CPU has AVX512-BF16,
    # else the default) against the dequantized matmul, for bfloat16 and float32 activations.
    monkeypatch.setenv("KBIT_CPU_LINEAR4_PATH", path)
    N, K = 40, 320
    W = torch.randn(N, K)
    packed, state = F.quantize_4bit(W, blocksize=64, double_quant=True)
    bias = torch.randn(N)
    for dtype, tol in ((torch.bfloat16, 1e-2), (torch.float32, 1e-6)):
        for M in (1, 5, 20):
            A = torch.randn(M, K).to(dtype)
            out = F.linear_4bit(A, packed, state, bias.to(dtype))
            ref = A.float() @ dequantized_weight(packed, state).t() + bias.to(dtype).float()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            assert out.dtype == dtype and err < tol, (dtype, M, err)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_4bit_many_rows_spans_several_slabs(dtype):
    # Enough rows of A for the slab path, and K odd with ~4 MB slabs of 255 or 511 rows: later slabs
    # start mid-byte and mid-block.
    N, K, M = 600, 4097, 40
    W = torch.randn(N, K)
    packed, state = F.quantize_4bit(W, blocksize=64, double_quant=True)
    A = torch.randn(M, K).to(dtype)
    bias = torch.randn(N).to(dtype)
    out = F.linear_4bit(A, packed, state, bias)
    ref = A.float() @ dequantized_weight(packed, state).t() + bias.float()
    assert out.dtype == dtype and out.shape == (M, N)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    assert err < {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype], err


def test_linear_4bit_odd_shapes_and_empty():
    for N, K in [(1, 1), (7, 33), (5, 3)]:
        W = torch.randn(N, K)
        packed, state = F.quantize_4bit(W, blocksize=32)
        A = torch.randn(3, K)
        torch.testing.assert_close(F.linear_4bit(A, packed, state), A @ dequantized_weight(packed, state).t())
    packed, state = F.quantize_4bit(torch.randn(8, 16))
    assert F.linear_4bit(torch.randn(0, 16), packed, state).shape == (0, 8)


def test_linear_4bit_rejects_wrong_in_features():
    packed, state = F.quantize_4bit(torch.randn(8, 16))
    with pytest.raises(ValueError, match="in_features=16"):
        F.linear_4bit(torch.randn(2, 15), packed, state)


def test_linear_4bit_gradient_flows_to_input_only():
    W = torch.randn(24, 40, dtype=torch.float64).float()
    packed, state = F.quantize_4bit(W)
    Wd = dequantized_weight(packed, state)
    A = torch.randn(5, 40, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)
    out = F.linear_4bit(A, packed, state, bias)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(A.grad, grad @ Wd, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bias.grad, grad.sum(0))
