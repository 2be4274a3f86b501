"""Byte-compatibility with bitsandbytes: its own outputs (shared/testdata) must be reproduced exactly."""

import pytest
import torch

import kbit.functional as F


@pytest.mark.parametrize("name,quant_type", [("A_f32", "nf4"), ("A_f32", "fp4"), ("odd_f32", "nf4")])
def test_quantize_4bit_matches_bnb(bnb_vectors, name, quant_type):
    A = bnb_vectors[f"in.{name}"]
    prefix = f"q4.{name}.{quant_type}.bs64"
    packed, state = F.quantize_4bit(A, blocksize=64, quant_type=quant_type)
    assert torch.equal(packed, bnb_vectors[f"{prefix}.packed"])
    assert torch.equal(state.absmax, bnb_vectors[f"{prefix}.absmax"])
    deq = F.dequantize_4bit(packed, state)
    assert deq.shape == A.shape
    torch.testing.assert_close(deq, bnb_vectors[f"{prefix}.deq"], rtol=0, atol=0)


def test_double_quant_matches_bnb(bnb_vectors):
    A = bnb_vectors["in.A_f32"]
    prefix = "q4dq.A_f32.nf4.bs64"
    packed, state = F.quantize_4bit(A, blocksize=64, quant_type="nf4", double_quant=True)
    assert torch.equal(packed, bnb_vectors[f"{prefix}.packed"])
    assert torch.equal(state.absmax, bnb_vectors[f"{prefix}.qabsmax"])
    assert torch.equal(state.offset.reshape(()), bnb_vectors[f"{prefix}.offset"].reshape(()))
    assert torch.equal(state.nested.absmax, bnb_vectors[f"{prefix}.nested_absmax"])
    assert torch.equal(state.nested.code, bnb_vectors[f"{prefix}.nested_code"])
    torch.testing.assert_close(F.dequantize_4bit(packed, state), bnb_vectors[f"{prefix}.deq"], rtol=1e-6, atol=1e-7)


def test_dynamic_map_matches_bnb(bnb_vectors):
    assert torch.equal(F.create_dynamic_map(), bnb_vectors["q8.code"])


def test_quantize_blockwise_matches_bnb(bnb_vectors):
    A = bnb_vectors["in.A_f32"]
    q, state = F.quantize_blockwise(A, blocksize=256)
    assert torch.equal(q, bnb_vectors["q8.A_f32.bs256.q"].reshape(q.shape))
    assert torch.equal(state.absmax, bnb_vectors["q8.A_f32.bs256.absmax"])


@pytest.mark.parametrize("threshold", ["0.0", "6.0"])
def test_int8_vectorwise_quant_matches_bnb(bnb_vectors, threshold):
    X = bnb_vectors["in.X_f16"]
    q, row_stats, outlier_cols = F.int8_vectorwise_quant(X, threshold=float(threshold))
    prefix = f"i8.X.t{threshold}"
    assert torch.equal(q, bnb_vectors[f"{prefix}.q"])
    assert torch.equal(row_stats, bnb_vectors[f"{prefix}.row_stats"])
    if threshold == "6.0":
        assert torch.equal(outlier_cols, bnb_vectors[f"{prefix}.outlier_cols"])
        assert {5, 77} <= set(outlier_cols.tolist())  # the planted outliers
        assert q[:, outlier_cols].eq(0).all()
    else:
        assert outlier_cols.numel() == 0
