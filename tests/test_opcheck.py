"""torch.library.opcheck on every kbit op: schema, fake (meta) kernel, autograd registration."""

import pytest
import torch

import kbit.functional as F

ops = torch.ops.kbit


def _samples():
    W = torch.randn(24, 40)
    packed, st = F.quantize_4bit(W)
    packed_dq, st_dq = F.quantize_4bit(W, double_quant=True)
    code = F.create_dynamic_map()
    q8, absmax8 = ops.quantize_blockwise(W, code, 256)
    CB, SCB = F.int8_quantize_weight(W)
    A = torch.randn(3, 40)
    Aq, a_stats, _ = F.int8_vectorwise_quant(A)
    A_grad = torch.randn(3, 40, requires_grad=True)
    bias = torch.randn(24)
    n = st_dq.nested
    return [
        (ops.quantize_4bit, (W, 64, "nf4", torch.uint8)),
        # int32 storage: reinterpreted codes as a float dtype may hold NaN patterns, which never compare equal.
        (ops.quantize_4bit, (W.bfloat16(), 128, "fp4", torch.int32)),
        (ops.dequantize_4bit, (packed, st.absmax, 64, "nf4", [24, 40], torch.bfloat16)),
        (ops.quantize_blockwise, (W, code, 256)),
        (ops.dequantize_blockwise, (q8, absmax8, code, 256, torch.float16)),
        (ops.int8_linear, (Aq, CB, a_stats, SCB, bias, torch.float32)),
        (ops.linear_8bit, (A_grad, CB, SCB, 6.0, bias)),
        (ops.linear_4bit, (A_grad, packed, st.absmax, None, None, None, 64, 256, "nf4", [24, 40], bias)),
        (ops.linear_4bit, (A_grad, packed_dq, st_dq.absmax, n.absmax, n.code, st_dq.offset, 64, 256, "nf4",
                           [24, 40], None)),
    ]


@pytest.mark.parametrize("op,args", _samples(), ids=lambda x: getattr(x, "__name__", None) or "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_opcheck_int8_vectorwise_quant_dynamic_shape():
    # Its outlier count depends on data; opcheck's fake-tensor pass must accept the dynamic size.
    torch.library.opcheck(ops.int8_vectorwise_quant, (torch.randn(5, 9) * 4, 6.0),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
