"""LLM.int8() CUDA kernels against the CPU ops (the reference), bitsandbytes' vectors and, where it
imports, bitsandbytes itself: exact int8 values for the quantization, tolerances for the linears."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kbit  # noqa: F401  (registers torch.ops.kbit)
import kbit.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ops = torch.ops.kbit
DEV = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def activations(M, K, dtype, n_outlier_cols=3, scale=1.0):
    """randn activations with a few outlier columns (|x| around 8-12 in most rows)."""
    A = torch.randn(M, K) * scale
    if n_outlier_cols and K:
        cols = torch.randperm(K)[:n_outlier_cols]
        A[:, cols] = (torch.rand(M, len(cols)) * 4 + 8) * torch.randn(M, len(cols)).sign()
    return A.to(dtype)


def weight(N, K):
    CB, SCB = F.int8_quantize_weight(torch.randn(N, K) * 0.05)
    return CB, SCB


def assert_quant_equal(got, ref):
    q, stats, cols = got
    rq, rstats, rcols = ref
    assert q.dtype == torch.int8 and stats.dtype == torch.float32 and cols.dtype == torch.int64
    torch.testing.assert_close(stats.cpu(), rstats, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(cols.cpu(), rcols)
    assert torch.equal(q.cpu(), rq)


# ---- int8_vectorwise_quant --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("shape", [(1, 4096), (5, 33), (19, 45), (16, 2048), (17, 4096), (300, 1000),
                                   (3, 7, 40), (2, 1030), (64, 14336), (2, 20000), (1, 40000)])
def test_quant_matches_cpu(dtype, threshold, shape):
    A = activations(int(torch.tensor(shape[:-1]).prod()), shape[-1], dtype).reshape(shape)
    got = ops.int8_vectorwise_quant(A.to(DEV), threshold)
    ref = ops.int8_vectorwise_quant(A, threshold)
    assert got[0].shape == A.shape
    assert_quant_equal(got, ref)
    if threshold > 0:
        assert got[2].numel() > 0


@pytest.mark.parametrize("threshold", ["0.0", "6.0"])
def test_quant_bnb_vectors(bnb_vectors, threshold):
    X = bnb_vectors["in.X_f16"].to(DEV)
    q, stats, cols = ops.int8_vectorwise_quant(X, float(threshold))
    assert torch.equal(q.cpu(), bnb_vectors[f"i8.X.t{threshold}.q"])
    assert torch.equal(stats.cpu(), bnb_vectors[f"i8.X.t{threshold}.row_stats"])
    key = f"i8.X.t{threshold}.outlier_cols"
    expected = bnb_vectors[key] if key in bnb_vectors else torch.empty(0, dtype=torch.long)
    assert torch.equal(cols.cpu(), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_quant_special_values(dtype, threshold):
    A = torch.randn(6, 64)
    A[0] = 0  # all-zero row: stats 0, q 0
    A[1, 3] = float("nan")
    A[2, 5] = float("inf")
    A[3, :] = 5.0  # every entry an outlier when threshold 2
    A[4, 7] = 1e30 if dtype != torch.float16 else 6e4  # beyond fp16 range for bf16 / fp32
    A = A.to(dtype)
    got = ops.int8_vectorwise_quant(A.to(DEV), threshold)
    assert_quant_equal(got, ops.int8_vectorwise_quant(A, threshold))


def test_quant_threshold_rounds_like_cpu():
    # 6.01 is not a bf16 value: both devices compare against bf16(6.01).
    A = torch.full((2, 16), 6.0).to(torch.bfloat16)
    A[1, 1] = 6.03125
    assert_quant_equal(ops.int8_vectorwise_quant(A.to(DEV), 6.01), ops.int8_vectorwise_quant(A, 6.01))


def test_quant_unaligned_view_and_empty():
    base = torch.randn(9, 66, device=DEV)
    A = base[:, 1:65]  # non-contiguous, odd offset
    assert_quant_equal(ops.int8_vectorwise_quant(A, 0.0), ops.int8_vectorwise_quant(A.cpu(), 0.0))
    for shape in [(0, 8), (4, 0), (0, 0)]:
        q, stats, cols = ops.int8_vectorwise_quant(torch.empty(shape, device=DEV), 6.0)
        assert q.shape == shape and stats.shape == (shape[0],) and cols.numel() == 0
        assert (stats == 0).all()


# ---- int8_linear ------------------------------------------------------------------------------
@pytest.mark.parametrize("M", [1, 3, 8, 9, 16, 17, 32, 33, 64, 300])
@pytest.mark.parametrize("NK", [(256, 512), (72, 4096), (40, 72), (33, 40), (64, 100)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_linear_matches_cpu(M, NK, dtype):
    N, K = NK
    A_q = torch.randint(-127, 128, (M, K), dtype=torch.int8)
    a_stats = torch.rand(M) * 4 + 0.1
    W_q = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    w_stats = torch.rand(N) * 0.1 + 0.01
    bias = torch.randn(N).to(dtype) if M % 2 else None
    ref = ops.int8_linear(A_q, W_q, a_stats, w_stats, bias, dtype)
    cuda_args = [t.to(DEV) if t is not None else None for t in (A_q, W_q, a_stats, w_stats, bias)]
    got = ops.int8_linear(*cuda_args, dtype)
    assert got.dtype == dtype and got.shape == (M, N)
    # Exact int32 sums; the float epilogue is the same formula, so at most one rounding apart.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got.cpu(), ref, **tol)


def test_int8_linear_3d_and_empty():
    A_q = torch.randint(-127, 128, (2, 5, 64), dtype=torch.int8, device=DEV)
    W_q = torch.randint(-127, 128, (24, 64), dtype=torch.int8, device=DEV)
    a_stats, w_stats = torch.rand(10, device=DEV), torch.rand(24, device=DEV)
    out = ops.int8_linear(A_q, W_q, a_stats, w_stats, None, torch.float16)
    assert out.shape == (2, 5, 24)
    ref = ops.int8_linear(A_q.cpu(), W_q.cpu(), a_stats.cpu(), w_stats.cpu(), None, torch.float16)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-2, atol=1e-2)
    empty = ops.int8_linear(A_q[:0], W_q, a_stats[:0], w_stats, None, torch.float32)
    assert empty.shape == (0, 5, 24)


# ---- linear_8bit ------------------------------------------------------------------------------
def linear_8bit_f64(A, CB, SCB, threshold, bias):
    """LLM.int8() in float64 from the CPU quantization (the error of the format itself is in it)."""
    q, stats, cols = ops.int8_vectorwise_quant(A.cpu(), threshold)
    out = (q.double() @ CB.double().t()) * stats.double()[:, None] * SCB.double()[None, :] / 127**2
    if cols.numel():
        W_out = CB[:, cols].double() * SCB.double()[:, None] / 127
        out += A.cpu().double().reshape(-1, A.shape[-1])[:, cols] @ W_out.t()
    if bias is not None:
        out += bias.double()
    return out.reshape(*A.shape[:-1], -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("M", [1, 4, 16, 17, 33, 64, 257])
@pytest.mark.parametrize("NK", [(256, 512), (136, 4096), (40, 72), (30, 100)])
def test_linear_8bit_matches_cpu(dtype, threshold, M, NK):
    N, K = NK
    A = activations(M, K, dtype, n_outlier_cols=4)
    CB, SCB = weight(N, K)
    bias = torch.randn(N).to(dtype) if M % 2 else None
    ref = ops.linear_8bit(A, CB, SCB, threshold, bias)
    bias_d = bias.to(DEV) if bias is not None else None
    got = ops.linear_8bit(A.to(DEV), CB.to(DEV), SCB.to(DEV), threshold, bias_d)
    assert got.dtype == dtype and got.shape == (M, N)
    exact = linear_8bit_f64(A, CB, SCB, threshold, bias)
    scale = exact.abs().max().item()
    # Same int8 values and int32 sums as the CPU; only float32 summation order and the final
    # rounding to dtype differ.
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got.cpu().double(), ref.double(), rtol=tol, atol=tol * scale)
    torch.testing.assert_close(got.cpu().double(), exact, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_linear_8bit_bf16_range(threshold):
    # bf16 activations beyond fp16's range must not overflow (no silent cast to fp16).
    A = activations(8, 256, torch.bfloat16, n_outlier_cols=0) * 1e5
    CB, SCB = weight(64, 256)
    got = ops.linear_8bit(A.to(DEV), CB.to(DEV), SCB.to(DEV), threshold, None).cpu()
    assert torch.isfinite(got).all()
    exact = linear_8bit_f64(A, CB, SCB, threshold, None)
    torch.testing.assert_close(got.double(), exact, rtol=8e-3, atol=8e-3 * exact.abs().max().item())


def test_linear_8bit_many_outlier_columns():
    # More outlier columns than one round of the epilogue (64), small and large M.
    for M in (3, 100):
        A = activations(M, 512, torch.float16, n_outlier_cols=150)
        CB, SCB = weight(96, 512)
        got = ops.linear_8bit(A.to(DEV), CB.to(DEV), SCB.to(DEV), 6.0, None).cpu()
        exact = linear_8bit_f64(A, CB, SCB, 6.0, None)
        torch.testing.assert_close(got.double(), exact, rtol=8e-3, atol=8e-3 * exact.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 5, 13, 20])
@pytest.mark.parametrize("n_cols", [17, 60, 64, 128, 256])
def test_linear_8bit_few_tokens_many_outlier_columns(dtype, M, n_cols):
    # Few tokens (the skinny GEMM) with more outlier columns than its early path takes: up to one
    # round (256, 128 or 64 columns for 8, 16 or 32 tokens per block) is staged before the main
    # loop, more after it. Short and long K (the set-up before / after the first group), N past the
    # last 16-row tile, and A at an odd element offset (16-bit A only 2-byte aligned).
    for N, K in ((40, 512), (24, 4096)):
        A = activations(M, K, dtype, n_outlier_cols=n_cols)
        CB, SCB = weight(N, K)
        exact = linear_8bit_f64(A, CB, SCB, 6.0, None)
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        shifted = torch.empty(M * K + 1, dtype=dtype, device=DEV)[1:].view(M, K)
        shifted.copy_(A)
        for Ad in (A.to(DEV), shifted):
            got = ops.linear_8bit(Ad, CB.to(DEV), SCB.to(DEV), 6.0, None).cpu()
            torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol * exact.abs().max().item(),
                                       msg=lambda m: f"N={N} K={K} offset={Ad.storage_offset()}: {m}")


def test_linear_8bit_3d_empty_and_graph():
    CB, SCB = weight(64, 128)
    CB, SCB = CB.to(DEV), SCB.to(DEV)
    A = activations(6, 128, torch.bfloat16).reshape(2, 3, 128).to(DEV)
    out = ops.linear_8bit(A, CB, SCB, 6.0, None)
    assert out.shape == (2, 3, 64)
    assert ops.linear_8bit(A[:0], CB, SCB, 6.0, None).shape == (0, 3, 64)
    assert ops.linear_8bit(A[..., :0], CB[:, :0], SCB, 6.0, None).abs().sum() == 0
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING"):
        return  # graph capture needs the caching allocator (this env is set for compute-sanitizer)
    # No host syncs: the op captures into a CUDA graph and replays with new data, outliers included
    # (80 tokens: cuBLAS; 200 tokens x 8192 features: the wgmma kernel on Hopper, K split 2 ways).
    for M, N, K in ((4, 64, 128), (80, 64, 128), (200, 8192, 1024)):
        CB, SCB = weight(N, K)
        CB, SCB = CB.to(DEV), SCB.to(DEV)
        static_in = activations(M, K, torch.bfloat16).to(DEV)
        ops.linear_8bit(static_in, CB, SCB, 6.0, None)  # warm-up (cuBLAS handles, allocations)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = ops.linear_8bit(static_in, CB, SCB, 6.0, None)
        new = activations(M, K, torch.bfloat16)
        static_in.copy_(new)
        g.replay()
        torch.cuda.synchronize()
        ref = ops.linear_8bit(new.to(DEV), CB, SCB, 6.0, None)
        assert torch.equal(static_out, ref)


def test_linear_8bit_vs_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    try:
        from bitsandbytes.autograd._functions import MatmulLtState
    except ImportError:
        pytest.skip("bitsandbytes without MatmulLtState")
    for M in (1, 16, 200):
        A = activations(M, 1024, torch.float16, n_outlier_cols=5)
        CB, SCB = weight(512, 1024)
        for threshold in (0.0, 6.0):
            state = MatmulLtState()
            state.CB, state.SCB = CB.to(DEV), SCB.to(DEV)
            state.threshold, state.has_fp16_weights = threshold, False
            try:
                ref = bnb.matmul(A.to(DEV), CB.to(DEV), state=state, threshold=threshold).float()
            except Exception as e:  # noqa: BLE001
                pytest.skip(f"bitsandbytes' CUDA backend does not run here: {e}")
            got = ops.linear_8bit(A.to(DEV), CB.to(DEV), SCB.to(DEV), threshold, None).float()
            # Against the unquantized product with the same int8 weight: kbit is at least as close as
            # bitsandbytes (which rounds the int8 part and the outlier weights to fp16), and the two
            # agree to within LLM.int8()'s own activation-quantization error.
            dense = (A.double() @ (CB.double() * SCB.double()[:, None] / 127).t()).float().to(DEV)
            scale = dense.abs().max()
            err_kbit, err_bnb = (got - dense).abs().max(), (ref - dense).abs().max()
            assert err_kbit <= 1.25 * err_bnb + 2e-3 * scale, (M, threshold, err_kbit, err_bnb)
            assert (got - ref).norm() <= 3e-2 * ref.norm(), (M, threshold)


# Each kernel path once on small shapes (the set compute-sanitizer runs): scalar and vector quant,
# mask-owning blocks and atomic mask, generic and skinny (MG 1/2/4, tiled) GEMMs, _int_mm with
# the prep + epilogue, more outlier columns than one epilogue round and than the Wo gather.
SWEEP = [(1, 40, 72), (5, 33, 40), (3, 16, 33), (16, 48, 2048), (17, 64, 512), (33, 30, 128), (40, 64, 96),
         (70, 136, 4096)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_path_sweep(dtype):
    for M, N, K in SWEEP:
        for threshold in (0.0, 6.0):
            A = activations(M, K, dtype, n_outlier_cols=70 if K >= 4096 else 4)
            CB, SCB = weight(N, K)
            bias = torch.randn(N).to(dtype)
            assert_quant_equal(ops.int8_vectorwise_quant(A.to(DEV), threshold),
                               ops.int8_vectorwise_quant(A, threshold))
            got = ops.linear_8bit(A.to(DEV), CB.to(DEV), SCB.to(DEV), threshold, bias.to(DEV)).cpu()
            exact = linear_8bit_f64(A, CB, SCB, threshold, bias)
            tol = 1e-5 if dtype == torch.float32 else 8e-3
            torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol * exact.abs().max().item(),
                                       msg=lambda m: f"M={M} N={N} K={K} t={threshold}: {m}")


# Each GEMM path forced (KBIT_INT8_PATH; a path that cannot take a shape falls back): token
# counts past one 128-token tile, N not a multiple of the 256-feature tile, K not a multiple of
# the 128-byte stage, split-K (few tokens, long K), and more outlier columns than the Wo gather.
PATH_SHAPES = [(33, 264, 4112), (300, 520, 1040), (1000, 256, 4096), (129, 8, 16), (257, 4104, 272),
               (64, 136, 8192)]


@pytest.mark.parametrize("path", ["skinny", "wgmma", "intmm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_8bit_forced_paths(monkeypatch, path, dtype):
    monkeypatch.setenv("KBIT_INT8_PATH", path)
    for M, N, K in PATH_SHAPES:
        if path == "skinny" and M > 300:
            continue
        for threshold in (0.0, 6.0):
            A = activations(M, K, dtype, n_outlier_cols=70 if K == 4112 else 5)
            CB, SCB = weight(N, K)
            bias = torch.randn(N).to(dtype) if M % 2 else None
            got = ops.linear_8bit(A.to(DEV), CB.to(DEV), SCB.to(DEV), threshold,
                                  bias.to(DEV) if bias is not None else None).cpu()
            exact = linear_8bit_f64(A, CB, SCB, threshold, bias)
            tol = 1e-5 if dtype == torch.float32 else 8e-3
            torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol * exact.abs().max().item(),
                                       msg=lambda m: f"{path} M={M} N={N} K={K} t={threshold}: {m}")
        # int8_linear (already quantized activations, no outliers) takes the same GEMM.
        q, stats, _ = ops.int8_vectorwise_quant(A.to(DEV), 0.0)
        got = ops.int8_linear(q, CB.to(DEV), stats, SCB.to(DEV), None, dtype).cpu()
        ref = ops.int8_linear(q.cpu(), CB, stats.cpu(), SCB, None, dtype)
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(got.double(), ref.double(), rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("path", ["auto", "wgmma", "intmm"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_8bit_tensor_core_outlier_product(monkeypatch, path, dtype):
    # Past 64 outlier columns the fused epilogues leave the outlier product to a tensor-core kernel:
    # just past the limit, most columns, every column, with K not a multiple of 32, and A not
    # 16-byte aligned (its scalar loads).
    if path != "auto":
        monkeypatch.setenv("KBIT_INT8_PATH", path)
    cases = [(300, 520, 1040, 65, False), (300, 520, 1040, 1000, True), (1000, 256, 4096, 4096, False),
             (129, 8, 80, 80, False), (600, 264, 1000, 700, True), (40, 4104, 2048, 1500, False),
             (300, 264, 4096, 300, True)]
    for M, N, K, n_out, unaligned in cases:
        A = activations(M, K, dtype, n_outlier_cols=n_out)
        CB, SCB = weight(N, K)
        bias = torch.randn(N).to(dtype) if M % 2 else None
        a = A.to(DEV)
        if unaligned:
            buf = torch.empty(M * K + 1, dtype=dtype, device=DEV)
            a = buf[1:].view(M, K)
            a.copy_(A)
        got = ops.linear_8bit(a, CB.to(DEV), SCB.to(DEV), 6.0, bias.to(DEV) if bias is not None else None).cpu()
        exact = linear_8bit_f64(A, CB, SCB, 6.0, bias)
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol * exact.abs().max().item(),
                                   msg=lambda m: f"{path} M={M} N={N} K={K} outliers={n_out}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_8bit_wgmma_epilogue_rounds(monkeypatch, dtype):
    # The wgmma GEMM's epilogue stages outlier columns 32 at a time, to 64: one column, a full
    # round, one past it, two rounds; A only 2-byte aligned, and split-K (few tokens, long K), where
    # the last block of a tile runs the epilogue. Off Hopper the forced path falls back and this
    # still checks that path.
    monkeypatch.setenv("KBIT_INT8_PATH", "wgmma")
    cases = [(300, 520, 1040, 1, False), (300, 520, 1040, 32, False), (257, 264, 1040, 33, False),
             (130, 264, 4096, 64, False), (200, 264, 2048, 40, True), (40, 4104, 4096, 20, False)]
    for M, N, K, n_out, unaligned in cases:
        A = activations(M, K, dtype, n_outlier_cols=n_out)
        CB, SCB = weight(N, K)
        bias = torch.randn(N).to(dtype)
        a = A.to(DEV)
        if unaligned:
            a = torch.empty(M * K + 1, dtype=dtype, device=DEV)[1:].view(M, K)
            a.copy_(A)
        got = ops.linear_8bit(a, CB.to(DEV), SCB.to(DEV), 6.0, bias.to(DEV)).cpu()
        exact = linear_8bit_f64(A, CB, SCB, 6.0, bias)
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol * exact.abs().max().item(),
                                   msg=lambda m: f"M={M} N={N} K={K} outliers={n_out}: {m}")


def test_linear_8bit_outlier_count_switches_inside_a_graph():
    # The choice between the fused epilogue (<= 64 outlier columns) and the tensor-core outlier
    # product is made on the device: one captured graph serves both, in either order.
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING"):
        pytest.skip("graph capture needs the caching allocator")
    for M, N, K in ((80, 64, 1024), (600, 8192, 1024)):
        CB, SCB = weight(N, K)
        CB, SCB = CB.to(DEV), SCB.to(DEV)
        static_in = activations(M, K, torch.bfloat16, n_outlier_cols=3).to(DEV)
        ops.linear_8bit(static_in, CB, SCB, 6.0, None)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = ops.linear_8bit(static_in, CB, SCB, 6.0, None)
        for n_out in (900, 5, 300):
            new = activations(M, K, torch.bfloat16, n_outlier_cols=n_out)
            static_in.copy_(new)
            g.replay()
            torch.cuda.synchronize()
            exact = linear_8bit_f64(new, CB.cpu(), SCB.cpu(), 6.0, None)
            torch.testing.assert_close(static_out.cpu().double(), exact, rtol=8e-3,
                                       atol=8e-3 * exact.abs().max().item())


# ---- checks and registration ------------------------------------------------------------------
def _bad_calls():
    CB, SCB = weight(16, 32)
    A = torch.randn(4, 32)
    cb, scb = CB.to(DEV), SCB.to(DEV)
    a = A.to(DEV)
    ones, a8, f16 = torch.ones(4, device=DEV), a.to(torch.int8), torch.float16
    return [
        (TypeError, "A must be", lambda: ops.linear_8bit(a.int(), cb, scb, 6.0, None)),
        (ValueError, "features", lambda: ops.linear_8bit(a[:, :31].contiguous(), cb, scb, 6.0, None)),
        (RuntimeError, "device|cuda|CUDA", lambda: ops.linear_8bit(a, CB, SCB, 6.0, None)),
        (ValueError, "bias", lambda: ops.linear_8bit(a, cb, scb, 6.0, torch.zeros(15, device=DEV))),
        (TypeError, "W_q", lambda: ops.int8_linear(a8, cb.float(), ones, scb, None, f16)),
        (ValueError, "a_stats", lambda: ops.int8_linear(a8, cb, ones[:3], scb, None, f16)),
        (TypeError, "A must be", lambda: ops.int8_vectorwise_quant(a.int(), 0.0)),
    ]


_BAD_CHILD = """
import re, sys
sys.path.insert(0, {dir!r})
import {mod} as t
exc, match, call = t._bad_calls()[{case}]
try:
    call()
except exc as e:
    sys.exit(0 if re.search(match, str(e)) else 2)
sys.exit(1)
"""


@pytest.mark.parametrize("case", range(7))
def test_bad_input_raises(case):
    # In a child process: on the H100 (torch 2.11) the ValueError of case 1 once killed the whole
    # process with a segfault; run this way, such a crash fails this case instead.
    path = Path(__file__)
    code = _BAD_CHILD.format(dir=str(path.parent), mod=path.stem, case=case)
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])


def test_opcheck():
    CB, SCB = weight(24, 64)
    A = activations(5, 64, torch.float16).to(DEV)
    torch.library.opcheck(ops.linear_8bit, (A, CB.to(DEV), SCB.to(DEV), 6.0, torch.randn(24, device=DEV)),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.int8_linear, (CB.to(DEV)[:5], CB.to(DEV), SCB.to(DEV)[:5], SCB.to(DEV), None,
                                            torch.bfloat16))
