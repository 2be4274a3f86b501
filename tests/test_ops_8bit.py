"""8-bit blockwise and LLM.int8() ops on the CPU against plain PyTorch references."""

import pytest
import torch

import kbit.functional as F

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize", [64, 256, 4096])
def test_blockwise_round_trip(dtype, blocksize):
    A = torch.randn(33, 77).to(dtype)
    q, state = F.quantize_blockwise(A, blocksize=blocksize)
    assert q.dtype == torch.uint8 and q.shape == A.shape
    code = state.code
    flat = A.flatten().float()
    absmax = torch.nn.functional.pad(flat, (0, (-flat.numel()) % blocksize)).view(-1, blocksize).abs().amax(1)
    torch.testing.assert_close(state.absmax, absmax, rtol=0, atol=0)
    scaled = flat / absmax.repeat_interleave(blocksize)[: flat.numel()]
    nearest = (scaled.unsqueeze(1) - code).abs().argmin(1)
    assert (q.flatten().long() != nearest).float().mean() < 0.002
    out = F.dequantize_blockwise(q, state)
    assert out.dtype == dtype
    expected = (code[q.flatten().long()] * absmax.repeat_interleave(blocksize)[: flat.numel()]).to(dtype)
    torch.testing.assert_close(out.flatten(), expected, rtol=0, atol=0)
    assert (out.float() - A.float()).abs().mean() < 0.02


def test_blockwise_empty_and_errors():
    q, state = F.quantize_blockwise(torch.empty(0))
    assert q.numel() == 0 and F.dequantize_blockwise(q, state).numel() == 0
    with pytest.raises(ValueError, match="256 values"):
        F.quantize_blockwise(torch.randn(10), code=torch.zeros(16))
    with pytest.raises(TypeError, match="q must be"):
        torch.ops.kbit.dequantize_blockwise(torch.zeros(4), torch.ones(1), F.create_dynamic_map(), 256, torch.float32)


def reference_int8_quant(A, threshold):
    """bitsandbytes' rule: entries with |x| >= threshold are left out of the row absmax, and whole
    outlier columns (any such entry) are written as zeros."""
    A = A.float()
    big = A.abs() >= threshold if threshold > 0 else torch.zeros_like(A, dtype=torch.bool)
    outliers = big.any(0)
    stats = A.abs().masked_fill(big, 0).amax(1)
    q = torch.round(A * (127.0 / stats.unsqueeze(1))).masked_fill(outliers, 0).nan_to_num(0).to(torch.int8)
    return q, stats, outliers.nonzero().flatten()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 3.0])
def test_int8_vectorwise_quant(dtype, threshold):
    A = torch.randn(19, 45).to(dtype)
    q, stats, cols = F.int8_vectorwise_quant(A, threshold)
    rq, rstats, rcols = reference_int8_quant(A, threshold)
    torch.testing.assert_close(stats, rstats, rtol=0, atol=0)
    assert torch.equal(cols, rcols)
    assert (q.int() - rq.int()).abs().max() <= 1  # x*127/s vs x*(127/s) may differ at .5
    if threshold > 0:
        assert cols.numel() > 0 and q[:, cols].eq(0).all()


def test_int8_zero_row_and_empty():
    A = torch.zeros(3, 8)
    A[1] = torch.randn(8)
    q, stats, _ = F.int8_vectorwise_quant(A)
    assert stats[0] == 0 and q[0].eq(0).all() and q[1].abs().max() == 127
    q, stats, cols = F.int8_vectorwise_quant(torch.empty(0, 8))
    assert q.shape == (0, 8) and stats.shape == (0,) and cols.numel() == 0


def test_int8_weight_quant_round_trip():
    W = torch.randn(64, 96)
    CB, SCB = F.int8_quantize_weight(W)
    assert CB.dtype == torch.int8 and SCB.shape == (64,)
    torch.testing.assert_close(SCB, W.half().float().abs().amax(1))
    err = (F.int8_dequantize_weight(CB, SCB) - W).abs().max(1).values
    assert (err <= SCB / 127 / 2 + 1e-3).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_linear_exact_integer_product(dtype):
    M, N, K = 7, 11, 301
    Aq = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    Wq = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    a_stats, w_stats = torch.rand(M) * 3, torch.rand(N) * 2
    bias = torch.randn(N)
    out = torch.ops.kbit.int8_linear(Aq, Wq, a_stats, w_stats, bias, dtype)
    acc = (Aq.long() @ Wq.long().t()).double()
    ref = acc * a_stats.double().unsqueeze(1) * w_stats.double() / (127 * 127) + bias.double()
    assert out.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(out.double(), ref.to(dtype).double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_linear_torch_gemm_path_matches_core_kernel_bitwise(dtype):
    # Rows shorter than 2^17 go through torch's int8 GEMM (above 16 rows), longer ones through
    # kbit's own kernel; padding K with zero columns leaves every sum unchanged, so both must give
    # the same bits.
    M, N, K = 17, 5, (1 << 17) - 64
    Aq = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    Wq = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    a_stats, w_stats, bias = torch.rand(M) * 3, torch.rand(N) * 2, torch.randn(N)
    pad = torch.zeros(M, 64, dtype=torch.int8), torch.zeros(N, 64, dtype=torch.int8)
    fast = torch.ops.kbit.int8_linear(Aq, Wq, a_stats, w_stats, bias, dtype)
    core = torch.ops.kbit.int8_linear(torch.cat([Aq, pad[0]], 1), torch.cat([Wq, pad[1]], 1), a_stats, w_stats,
                                      bias, dtype)
    assert torch.equal(fast, core)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_linear_few_rows_match_core_kernel_bitwise(dtype):
    # 2..24 rows take the VNNI kernel where the CPU has it (rows shorter than 2^20; 8 rows of A per
    # pass), others torch's int8 GEMM; rows of 2^20 and more the core kernel. Zero padding keeps the
    # sums: same bits.
    N, K = 5, (1 << 20) - 64
    for M in (1, 2, 9, 24, 25):
        Aq = torch.randint(-128, 128, (M, K), dtype=torch.int8)
        Wq = torch.randint(-128, 128, (N, K), dtype=torch.int8)
        a_stats, w_stats, bias = torch.rand(M) * 3, torch.rand(N) * 2, torch.randn(N)
        fast = torch.ops.kbit.int8_linear(Aq, Wq, a_stats, w_stats, bias, dtype)
        core = torch.ops.kbit.int8_linear(torch.nn.functional.pad(Aq, (0, 64)), torch.nn.functional.pad(Wq, (0, 64)),
                                          a_stats, w_stats, bias, dtype)
        assert torch.equal(fast, core), M


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_linear_8bit_close_to_float(dtype, threshold):
    M, N, K = 12, 40, 96
    W = torch.randn(N, K) * 0.05
    CB, SCB = F.int8_quantize_weight(W)
    A = torch.randn(M, K)
    A[:, [3, 50]] *= 20  # outlier columns
    A = A.to(dtype)
    bias = torch.randn(N).to(dtype)
    out = F.linear_8bit(A, CB, SCB, threshold, bias)
    ref = A.float() @ W.t() + bias.float()
    rel = (out.float() - ref).norm() / ref.norm()
    assert out.dtype == dtype and out.shape == (M, N)
    assert rel < (0.02 if threshold else 0.06)
    if threshold:  # the outlier columns are handled exactly in 16-bit, so error must drop
        no_outlier = F.linear_8bit(A, CB, SCB, 0.0, bias)
        assert rel < (no_outlier.float() - ref).norm() / ref.norm()


def test_linear_8bit_gradient_and_errors():
    W = torch.randn(16, 32)
    CB, SCB = F.int8_quantize_weight(W)
    A = torch.randn(4, 32, requires_grad=True)
    out = F.linear_8bit(A, CB, SCB, 6.0)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(A.grad, grad @ F.int8_dequantize_weight(CB, SCB))
    with pytest.raises(ValueError, match="features"):
        F.linear_8bit(torch.randn(4, 31), CB, SCB)
    with pytest.raises(TypeError, match="W_q"):
        F.linear_8bit(torch.randn(4, 32), CB.float(), SCB)
