"""On CUDA: opcheck of every kbit op (the samples of test_opcheck.py, moved to the GPU), and a
kbit-quantized bf16 Llama under torch.compile with inductor: no graph breaks, the static-cache
decode step of `generate` replayed as CUDA graphs, and the QLoRA step compiled with its backward."""

import pytest
import torch
import torch._inductor.config
from peft import LoraConfig, get_peft_model
from torch._dynamo.utils import counters
from transformers import CompileConfig

from test_opcheck import _samples
from tiny_llama import LAYERS, LINEARS_PER_LAYER, OP, count_op, prompt, tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DEVICE = "cuda"
BITS = ("4bit", "8bit")
ops = torch.ops.kbit


def _to_device(x):
    if isinstance(x, torch.Tensor):
        # A leaf again, so opcheck's autograd checks see an input that requires grad.
        return x.detach().to(DEVICE).requires_grad_(x.requires_grad)
    return x


def _cuda_samples():
    # Built (quantized) on the CPU at collection time, so collection needs no GPU.
    if not torch.cuda.is_available():
        return []
    return [(op, tuple(_to_device(a) for a in args)) for op, args in _samples()]


@pytest.mark.parametrize("op,args", _cuda_samples(), ids=lambda x: getattr(x, "__name__", None) or "")
def test_opcheck_cuda(op, args):
    torch.library.opcheck(op, args)


def test_opcheck_cuda_int8_vectorwise_quant_dynamic_shape():
    torch.library.opcheck(ops.int8_vectorwise_quant, (torch.randn(5, 9, device=DEVICE) * 4, 6.0),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---- the quantized model -------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(bits):
    return tiny_llama(bits, dtype=torch.bfloat16, device=DEVICE)


@pytest.mark.parametrize("bits", BITS)
def test_cuda_forward_one_graph_and_inductor_matches_eager(bits):
    model = _model(bits)
    ids = prompt(device=DEVICE)
    exp = torch._dynamo.explain(model)(ids)
    assert exp.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in exp.break_reasons]
    assert count_op(exp.graphs, OP[bits]) == LAYERS * LINEARS_PER_LAYER
    torch._dynamo.reset()
    with torch.no_grad():
        want = model(ids).logits.float()
        got = torch.compile(model, fullgraph=True)(ids).logits.float()
    # bf16: inductor fuses the float ops around the kbit calls differently from eager.
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2 * want.abs().max().item())


def _assert_greedy(model, seq, prompt_len, tol):
    """Each generated token is (up to `tol` of logit) the eager model's argmax given the tokens
    before it: a check that accepts bf16 rounding but not a wrong decode step."""
    with torch.no_grad():
        logits = model(seq).logits.float()[:, prompt_len - 1:-1]
    chosen = logits.gather(-1, seq[:, prompt_len:, None]).squeeze(-1)
    gap = logits.max(-1).values - chosen
    assert gap.max().item() <= tol, f"generated tokens trail the argmax by up to {gap.max().item():.4f}"


@pytest.mark.parametrize("bits", BITS)
def test_cuda_static_cache_decode_runs_as_cuda_graphs(bits, monkeypatch):
    model = _model(bits)
    ids = prompt(device=DEVICE)
    # A skipped CUDA graph (CPU op, dynamic shape, sync inside an op) becomes an error.
    monkeypatch.setattr(torch._inductor.config.triton, "cudagraph_or_error", True)
    skips = counters["inductor"]["cudagraph_skips"]
    graphs = counters["stats"]["unique_graphs"]
    cc = CompileConfig(fullgraph=True)  # inductor, mode="reduce-overhead": CUDA graphs
    for _ in range(2):  # the second call replays the recorded graphs
        seq = model.generate(ids, max_new_tokens=16, do_sample=False, cache_implementation="static",
                             compile_config=cc)
    assert hasattr(model, "_compiled_call"), "generate did not compile the decode step"
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert counters["inductor"]["cudagraph_skips"] == skips
    assert seq.shape == (ids.shape[0], ids.shape[1] + 16)
    with torch.no_grad():
        scale = model(ids).logits.float().abs().max().item()
    _assert_greedy(model, seq, ids.shape[1], tol=5e-2 * scale)


@pytest.mark.parametrize("bits", BITS)
def test_cuda_qlora_step_compiled_with_backward(bits):
    model = _model(bits)
    model.train()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                             target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]))
    ids = prompt(device=DEVICE)

    def step(ids):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach()

    want_loss = step(ids)
    want = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        got_loss = torch.compile(step, fullgraph=True)(ids)
    got = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(got_loss.float(), want_loss.float(), rtol=2e-2, atol=2e-2)
    assert got.keys() == want.keys() and len(want) == 2 * 4 * LAYERS
    for name, g in want.items():
        assert g.norm() > 0, name
        assert (got[name] - g).norm() <= 0.05 * g.norm(), name
