"""kbit.nn.Linear4bit / Linear8bitLt: numerics, bitsandbytes state-dict format, device moves,
copies and bad input."""

import copy
import io
import json

import pytest
import torch
from torch import nn

from kbit import functional as F
from kbit.nn import Linear4bit, Linear8bitLt, Params4bit

FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _linear(out_f=96, in_f=256, dtype=torch.float32, bias=True):
    return nn.Linear(in_f, out_f, bias=bias).to(dtype)


def _json(t):
    return json.loads(bytes(t.tolist()).decode())


# ---- numerics ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("quant_type,bound", [("nf4", 0.12), ("fp4", 0.14)])
def test_linear4bit_close_to_float(dtype, quant_type, bound):
    lin = _linear(dtype=dtype)
    x = torch.randn(8, 256, dtype=dtype)
    q = Linear4bit.from_linear(lin, quant_type=quant_type)
    y = q(x)
    assert y.dtype == dtype and y.shape == (8, 96)
    # 4-bit error of Gaussian weights: ~0.09 (NF4) / ~0.11 (FP4) relative; not zero.
    assert 0.03 < _rel(y, lin(x)) < bound
    # And exactly the matmul with the weight its codes decode to.
    W = q.dequantize(torch.float32)
    expected = x.float() @ W.t() + lin.bias.float()
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", FLOATS)
def test_linear8bit_close_to_float(dtype):
    lin = _linear(dtype=dtype)
    x = torch.randn(8, 256, dtype=dtype)
    y = Linear8bitLt.from_linear(lin)(x)
    assert y.dtype == dtype
    assert 1e-4 < _rel(y, lin(x)) < 0.015


def test_linear8bit_outliers_use_16bit():
    lin = _linear()
    x = torch.randn(4, 256)
    x[:, 7] = 40.0  # one outlier column: int8 alone would crush the rest of each row
    ref = lin(x)
    err_mixed = _rel(Linear8bitLt.from_linear(lin, threshold=6.0)(x), ref)
    err_int8 = _rel(Linear8bitLt.from_linear(lin, threshold=0.0)(x), ref)
    assert err_mixed < 0.015 and err_mixed < err_int8


def test_double_quant_same_output_scale():
    lin = _linear()
    x = torch.randn(4, 256)
    plain = Linear4bit.from_linear(lin)
    dq = Linear4bit.from_linear(lin, double_quant=True)
    assert dq.double_quant and not plain.double_quant
    assert dq.weight_absmax.dtype == torch.uint8
    assert torch.equal(plain.weight, dq.weight)  # same codes, only the scales are compressed
    assert _rel(dq(x), plain(x)) < 0.02


def test_compute_dtype_casts_and_returns_input_dtype():
    lin = _linear()
    x = torch.randn(4, 256)
    q = Linear4bit.from_linear(lin, compute_dtype=torch.bfloat16)
    y = q(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, Linear4bit.from_linear(lin)(x.bfloat16()).float(), rtol=0, atol=0)


def test_odd_shape_and_no_bias():
    lin = _linear(out_f=7, in_f=37, bias=False)  # 259 weights: a partial block and an odd count
    x = torch.randn(3, 37)
    q = Linear4bit.from_linear(lin)
    assert q.weight.shape == (130, 1) and q.bias is None
    assert _rel(q(x), lin(x)) < 0.15
    q8 = Linear8bitLt.from_linear(lin)
    assert q8.bias is None and _rel(q8(x), lin(x)) < 0.02


def test_3d_input():
    lin = _linear()
    x = torch.randn(2, 5, 256)
    assert Linear4bit.from_linear(lin)(x).shape == (2, 5, 96)
    assert Linear8bitLt.from_linear(lin)(x).shape == (2, 5, 96)


@pytest.mark.parametrize("cls", [Linear4bit, Linear8bitLt])
def test_gradients_reach_input_only(cls):
    lin = _linear()
    q = cls.from_linear(lin)
    assert not q.weight.requires_grad and isinstance(q, nn.Linear)
    x = torch.randn(4, 256, requires_grad=True)
    q(x).pow(2).sum().backward()
    W = q.dequantize(torch.float32)
    xd = x.detach().clone().requires_grad_()
    (xd @ W.t() + lin.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-2, atol=1e-2)
    assert q.weight.grad is None
    assert q.bias.grad is not None  # the reused float bias stays trainable


@pytest.mark.parametrize("cls", [Linear4bit, Linear8bitLt])
def test_no_grad_fast_path_matches_autograd_path(cls):
    # Without grad mode (or with no input needing grad) the forward skips the Python autograd
    # kernel; the numbers and the grad flags must be those of the autograd path.
    q = cls.from_linear(_linear())
    q.bias.requires_grad_(False)
    x = torch.randn(3, 256)
    with torch.no_grad():
        fast = q(x)
    assert not fast.requires_grad
    with torch.enable_grad():
        plain = q(x)  # nothing requires grad: also the fast path
        assert not plain.requires_grad
        tracked = q(x.clone().requires_grad_())
        assert tracked.requires_grad and tracked.grad_fn is not None
    torch.testing.assert_close(fast, plain, rtol=0, atol=0)
    torch.testing.assert_close(fast, tracked.detach(), rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(q(x), fast, rtol=0, atol=0)


def test_from_linear_reuses_bias_and_meta():
    lin = _linear()
    q = Linear4bit.from_linear(lin)
    assert q.bias is lin.bias
    with torch.device("meta"):
        big = nn.Linear(4096, 1024)
    m = Linear4bit.from_linear(big, double_quant=True)
    assert m.weight.device.type == "meta" and m.weight.shape == (4096 * 1024 // 2, 1)
    assert m.weight_absmax.shape == (4096 * 1024 // 64,) and m.weight_absmax.dtype == torch.uint8
    assert m.weight_nested_absmax.shape == (256,)
    m8 = Linear8bitLt.from_linear(big)
    assert m8.weight.device.type == "meta" and m8.weight.dtype == torch.int8 and m8.SCB.shape == (1024,)


# ---- state dicts: bitsandbytes' keys ---------------------------------------------------------
def test_state_dict_keys_exact():
    lin = _linear()
    assert list(Linear4bit.from_linear(lin).state_dict()) == [
        "weight", "bias", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4"]
    assert list(Linear4bit.from_linear(lin, quant_type="fp4", double_quant=True).state_dict()) == [
        "weight", "bias", "weight.absmax", "weight.quant_map", "weight.nested_absmax",
        "weight.nested_quant_map", "weight.quant_state.bitsandbytes__fp4"]
    sd8 = Linear8bitLt.from_linear(lin).state_dict()
    assert list(sd8) == ["weight", "bias", "SCB", "weight_format"]
    assert sd8["weight"].dtype == torch.int8 and sd8["SCB"].dtype == torch.float32
    assert sd8["weight_format"].dtype == torch.uint8 and sd8["weight_format"].item() == 0


def test_state_dict_4bit_content():
    lin = _linear(dtype=torch.bfloat16)
    sd = Linear4bit.from_linear(lin, double_quant=True).state_dict()
    assert sd["weight"].shape == (96 * 256 // 2, 1) and sd["weight"].dtype == torch.uint8
    assert sd["weight.absmax"].shape == (96 * 256 // 64,) and sd["weight.absmax"].dtype == torch.uint8
    assert sd["weight.nested_quant_map"].shape == (256,)
    meta = _json(sd["weight.quant_state.bitsandbytes__nf4"])
    assert meta["quant_type"] == "nf4" and meta["blocksize"] == 64 and meta["dtype"] == "bfloat16"
    assert meta["shape"] == [96, 256]
    assert meta["nested_blocksize"] == 256 and meta["nested_dtype"] == "float32"
    assert isinstance(meta["nested_offset"], float)


@pytest.mark.parametrize("opts", [{}, {"double_quant": True}, {"quant_type": "fp4", "blocksize": 128}])
def test_round_trip_into_differently_built_layer(opts):
    lin = _linear()
    x = torch.randn(4, 256)
    q = Linear4bit.from_linear(lin, **opts)
    fresh = Linear4bit(256, 96, double_quant=not opts.get("double_quant", False), blocksize=256)
    assert str(fresh.load_state_dict(q.state_dict())) == "<All keys matched successfully>"
    assert torch.equal(fresh(x), q(x))
    for attr in ("quant_type", "blocksize", "double_quant"):
        assert getattr(fresh, attr) == getattr(q, attr)
    a, b = q.state_dict(), fresh.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_8bit():
    lin = _linear()
    x = torch.randn(4, 256)
    q = Linear8bitLt.from_linear(lin)
    fresh = Linear8bitLt(256, 96)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x))


@pytest.mark.parametrize("cls", [Linear4bit, Linear8bitLt])
def test_float_state_dict_is_quantized_on_load(cls):
    lin = _linear()
    q = cls(256, 96)
    q.load_state_dict(lin.state_dict())
    ref = cls.from_linear(lin)
    x = torch.randn(4, 256)
    assert torch.equal(q(x), ref(x))


def _hand_built_4bit(packed, absmax, shape, dtype="float32", nested=None, quant_type="nf4", prefix="layer."):
    """A bitsandbytes-format state dict written out by hand (keys and JSON as FORMAT.md states)."""
    meta = {"quant_type": quant_type, "blocksize": 64, "dtype": dtype, "shape": list(shape)}
    sd = {prefix + "weight": packed, prefix + "weight.absmax": absmax,
          prefix + "weight.quant_map": F.code_4bit(quant_type)}
    if nested is not None:
        nested_absmax, nested_code, offset = nested
        sd[prefix + "weight.nested_absmax"] = nested_absmax
        sd[prefix + "weight.nested_quant_map"] = nested_code
        meta.update(nested_blocksize=256, nested_dtype="float32", nested_offset=float(offset))
    blob = json.dumps(meta).encode()
    key = prefix + f"weight.quant_state.bitsandbytes__{quant_type}"
    sd[key] = torch.tensor(list(blob), dtype=torch.uint8)
    return sd


def test_load_hand_built_bnb_dict():
    W = torch.randn(96, 256)
    packed, state = F.quantize_4bit(W, double_quant=True)
    nested = (state.nested.absmax, state.nested.code, state.offset.item())
    sd = _hand_built_4bit(packed, state.absmax, W.shape, nested=nested)
    model = nn.Sequential()
    model.add_module("layer", Linear4bit(256, 96, bias=False))
    assert str(model.load_state_dict(sd)) == "<All keys matched successfully>"
    torch.testing.assert_close(model.layer.dequantize(), F.dequantize_4bit(packed, state), rtol=0, atol=0)
    # bitsandbytes sometimes stores the 16-value 4-bit map in 256 slots.
    sd["layer.weight.quant_map"] = torch.cat([F.code_4bit("nf4"), torch.zeros(240)])
    fresh = nn.Sequential()
    fresh.add_module("layer", Linear4bit(256, 96, bias=False))
    fresh.load_state_dict(sd)
    assert fresh.layer.weight_quant_map.numel() == 16


def test_load_bnb_test_vectors(bnb_vectors):
    v = bnb_vectors
    A = v["in.A_f32"]
    x = torch.randn(3, A.shape[1])
    for quant_type in ("nf4", "fp4"):
        pre = f"q4.A_f32.{quant_type}.bs64."
        sd = _hand_built_4bit(v[pre + "packed"], v[pre + "absmax"], A.shape, quant_type=quant_type, prefix="")
        layer = Linear4bit(A.shape[1], A.shape[0], bias=False)
        layer.load_state_dict(sd)
        torch.testing.assert_close(layer.dequantize(), v[pre + "deq"], rtol=0, atol=0)
        torch.testing.assert_close(layer(x), x @ v[pre + "deq"].t(), rtol=1e-4, atol=1e-4)
    pre = "q4dq.A_f32.nf4.bs64."
    nested = (v[pre + "nested_absmax"], v[pre + "nested_code"], v[pre + "offset"].item())
    sd = _hand_built_4bit(v[pre + "packed"], v[pre + "qabsmax"], A.shape, nested=nested, prefix="")
    layer = Linear4bit(A.shape[1], A.shape[0], bias=False)
    layer.load_state_dict(sd)
    assert layer.double_quant
    torch.testing.assert_close(layer.dequantize(), v[pre + "deq"], rtol=1e-6, atol=1e-6)
    # kbit's own quantization of the same weight writes the same bytes.
    again = Linear4bit.from_linear(_from_weight(A), double_quant=True).state_dict()
    assert torch.equal(again["weight"], v[pre + "packed"])
    assert torch.equal(again["weight.absmax"], v[pre + "qabsmax"])


def _from_weight(W):
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data = W.clone()
    return lin


def test_bitsandbytes_state_dicts_load():
    bnb = pytest.importorskip("bitsandbytes")
    lin = _linear(dtype=torch.bfloat16)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    for dq in (False, True):
        b = bnb.nn.Linear4bit(256, 96, compute_dtype=torch.bfloat16, compress_statistics=dq, quant_type="nf4")
        b.load_state_dict(lin.state_dict())
        b = b.to("cpu")  # bitsandbytes quantizes on the move
        sd = b.state_dict()
        k = Linear4bit(256, 96, compute_dtype=torch.bfloat16)
        assert str(k.load_state_dict(sd)) == "<All keys matched successfully>"
        assert k.double_quant == dq
        mine = Linear4bit.from_linear(_from_weight(lin.weight.float()), double_quant=dq).state_dict()
        assert torch.equal(mine["weight"], sd["weight"])  # NF4 codes byte for byte
        assert _rel(k(x), b(x)) < 0.02
        # And ours loads into bitsandbytes.
        ours = Linear4bit.from_linear(lin, double_quant=dq).state_dict()
        stats = {key[len("weight."):]: t for key, t in ours.items() if key.startswith("weight.")}
        p = bnb.nn.Params4bit.from_prequantized(data=ours["weight"], quantized_stats=stats, device="cpu")
        deq = bnb.functional.dequantize_4bit(p.data, p.quant_state)
        expected = Linear4bit.from_linear(lin, double_quant=dq).dequantize().float()
        torch.testing.assert_close(deq.float(), expected)
    b8 = bnb.nn.Linear8bitLt(256, 96, has_fp16_weights=False, threshold=6.0)
    b8.load_state_dict(lin.state_dict())
    sd8 = b8.to("cpu").state_dict()
    k8 = Linear8bitLt(256, 96)
    k8.load_state_dict(sd8)
    ours8 = Linear8bitLt.from_linear(lin).state_dict()
    assert list(ours8) == list(sd8) and all(torch.equal(ours8[key], sd8[key]) for key in sd8)
    assert torch.equal(k8.weight, sd8["weight"]) and torch.equal(k8.SCB, sd8["SCB"])


# ---- errors ----------------------------------------------------------------------------------
def _load_error(layer, sd):
    with pytest.raises(RuntimeError) as info:
        layer.load_state_dict(sd)
    return str(info.value)


def test_bad_4bit_state_dicts_name_the_key():
    lin = _linear()
    good = {"lyr." + k: v for k, v in Linear4bit.from_linear(lin).state_dict().items()}

    def model():
        m = nn.Module()
        m.lyr = Linear4bit(256, 96)
        return m

    bad = dict(good)
    del bad["lyr.weight.absmax"]
    assert "lyr.weight.absmax" in _load_error(model(), bad)
    bad = dict(good, **{"lyr.weight.absmax": good["lyr.weight.absmax"][:-1]})
    assert "lyr.weight.absmax" in _load_error(model(), bad)
    bad = dict(good, **{"lyr.weight": good["lyr.weight"][:-2]})
    assert "lyr.weight" in _load_error(model(), bad)
    other_sd = Linear4bit.from_linear(_linear(out_f=48, in_f=512)).state_dict()
    other = {"lyr." + k: v for k, v in other_sd.items()}
    msg = _load_error(model(), other)
    assert "lyr.weight" in msg and "(48, 512)" in msg
    bad = dict(good)
    bad["lyr.weight.quant_state.bitsandbytes__nf4"] = torch.tensor(list(b"{not json"), dtype=torch.uint8)
    assert "bitsandbytes__nf4" in _load_error(model(), bad)
    bad = dict(good, **{"lyr.weight": torch.randn(96, 100)})  # a float weight of the wrong shape
    assert "lyr.weight" in _load_error(model(), bad)
    missing = model().load_state_dict({k: v for k, v in good.items() if k != "lyr.weight"}, strict=False)
    assert "lyr.weight" in missing.missing_keys


def test_bad_8bit_state_dicts_name_the_key():
    good = Linear8bitLt.from_linear(_linear()).state_dict()
    assert "weight_format" in _load_error(Linear8bitLt(256, 96), dict(good, weight_format=torch.tensor(1)))
    assert "SCB" in _load_error(Linear8bitLt(256, 96), {k: v for k, v in good.items() if k != "SCB"})
    assert "SCB" in _load_error(Linear8bitLt(256, 96), dict(good, SCB=torch.ones(3)))
    assert "weight" in _load_error(Linear8bitLt(256, 96), dict(good, weight=good["weight"][:, :10]))
    assert "weight" in _load_error(Linear8bitLt(256, 96), dict(good, weight=good["weight"].to(torch.int32)))


def test_bad_construction():
    with pytest.raises(ValueError, match="quant_type"):
        Linear4bit(16, 16, quant_type="int4")
    with pytest.raises(ValueError, match="blocksize"):
        Linear4bit(16, 16, blocksize=48)
    with pytest.raises(ValueError, match="in_features"):
        Linear4bit(0, 16)
    with pytest.raises(ValueError, match="threshold"):
        Linear8bitLt(16, 16, threshold=-1.0)
    with pytest.raises(ValueError, match="quant_storage"):
        Linear4bit(3, 3, quant_storage=torch.bfloat16)  # 9 weights -> 5 bytes: not whole bf16 elements
    with pytest.raises(TypeError):
        Linear4bit.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="NaN"):
        lin = _linear()
        lin.weight.data[0, 0] = float("nan")
        Linear4bit.from_linear(lin)


# ---- devices, dtypes, copies -------------------------------------------------------------------
def test_dtype_casts_leave_quantized_tensors_alone():
    lin = _linear()
    x = torch.randn(4, 256)
    q = Linear4bit.from_linear(lin, double_quant=True, quant_storage=torch.bfloat16)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    y = q(x)
    q.half()
    q.to(torch.float32)
    assert q.weight.dtype == torch.bfloat16 and isinstance(q.weight, Params4bit)
    assert q.weight_nested_absmax.dtype == torch.float32 and q.weight_offset.dtype == torch.float32
    after = q.state_dict()
    # Compare bytes: packed codes viewed as bf16 include NaN bit patterns.
    assert all(torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8))
               for k in before if k != "bias")
    assert torch.allclose(q(x), y, atol=1e-2)
    q8 = Linear8bitLt.from_linear(lin).to(torch.bfloat16)
    assert q8.weight.dtype == torch.int8 and q8.SCB.dtype == torch.float32 and q8.bias.dtype == torch.bfloat16


def test_cast_weight_is_detected():
    q = Linear4bit.from_linear(_linear(), quant_storage=torch.bfloat16)
    q.weight.data = q.weight.data.float()  # what a careless cast of the parameter would do
    with pytest.raises(RuntimeError, match="cast"):
        q(torch.randn(2, 256))


def test_quant_storage_bf16_round_trip():
    lin = _linear()
    x = torch.randn(4, 256)
    q = Linear4bit.from_linear(lin, quant_storage=torch.bfloat16)
    ref = Linear4bit.from_linear(lin)
    assert q.weight.dtype == torch.bfloat16 and q.weight.shape == (96 * 256 // 4, 1)
    assert torch.equal(q.weight.view(torch.uint8), ref.weight.view(torch.uint8).view(-1, 2))
    assert torch.equal(q(x), ref(x))
    fresh = Linear4bit(256, 96)
    fresh.load_state_dict(q.state_dict())
    assert fresh.quant_storage == torch.bfloat16 and torch.equal(fresh(x), ref(x))


@pytest.mark.parametrize("cls", [Linear4bit, Linear8bitLt])
def test_deepcopy_pickle_and_moves(cls):
    lin = _linear()
    x = torch.randn(4, 256)
    q = cls.from_linear(lin)
    y = q(x)
    c = copy.deepcopy(q)
    assert torch.equal(c(x), y) and c.weight.data_ptr() != q.weight.data_ptr()
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    p = torch.load(buf, weights_only=False)
    assert type(p.weight) is type(q.weight) and torch.equal(p(x), y)
    m = copy.deepcopy(q).to("meta")
    assert all(t.device.type == "meta" for t in list(m.parameters()) + list(m.buffers()))
    assert m.weight.dtype == q.weight.dtype
    back = m.to_empty(device="cpu")
    back.load_state_dict(q.state_dict())
    assert torch.equal(back(x), y)


def test_load_into_meta_layer_materializes():
    q = Linear4bit.from_linear(_linear(), double_quant=True)
    with torch.device("meta"):
        m = Linear4bit(256, 96)
    m.load_state_dict(q.state_dict(), assign=True)
    assert m.weight.device.type == "cpu" and m.weight_absmax.device.type == "cpu" and m.double_quant
    x = torch.randn(2, 256)
    assert torch.equal(m(x), q(x))


def test_buffers_visible_but_not_persistent():
    q = Linear4bit.from_linear(_linear(), double_quant=True)
    names = {n for n, _ in q.named_buffers()}
    assert names == {"weight_absmax", "weight_quant_map", "weight_nested_absmax", "weight_nested_quant_map",
                     "weight_offset"}
    assert not any(k.startswith("weight_") for k in q.state_dict())
