"""torch.compile on a kbit-quantized Llama, on the CPU: no graph breaks (the whole forward, the
static-cache decode step of `generate`, the QLoRA training step with its backward), and compiled
results equal eager ones. Most tests use the aot_eager backend (Dynamo + AOTAutograd, the parts a
graph break or a bad fake kernel would trip) because inductor's C++ build is slow on a small CPU;
one test runs inductor on the 4-bit forward."""

import time

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch._dynamo.utils import counters
from transformers import CompileConfig

from tiny_llama import LAYERS, LINEARS_PER_LAYER, OP, count_op, prompt, tiny_llama

BITS = ("4bit", "8bit")
ALL_LINEARS = LAYERS * LINEARS_PER_LAYER
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _explain(fn, *args, **kwargs):
    exp = torch._dynamo.explain(fn)(*args, **kwargs)
    reasons = [str(r.reason).splitlines()[0] for r in exp.break_reasons]
    assert exp.graph_break_count == 0, reasons
    assert exp.graph_count == 1, reasons
    return exp


# ---- inference ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_forward_has_no_graph_breaks(bits):
    model = tiny_llama(bits)
    exp = _explain(model, prompt())
    # Every quantized layer is one kbit op inside the single graph.
    assert count_op(exp.graphs, OP[bits]) == ALL_LINEARS


@pytest.mark.parametrize("bits", BITS)
def test_fullgraph_forward_matches_eager(bits):
    model = tiny_llama(bits)
    ids = prompt()
    with torch.no_grad():
        want = model(ids).logits
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.slow
def test_inductor_cpu_forward_4bit():
    model = tiny_llama("4bit")
    ids = prompt()
    compiled = torch.compile(model, fullgraph=True)  # default backend: inductor
    before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        want = model(ids).logits
        t0 = time.perf_counter()
        got = compiled(ids).logits
        seconds = time.perf_counter() - t0
        again = compiled(prompt(seed=2)).logits  # same shapes: no recompile
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert again.shape == want.shape
    assert counters["stats"]["unique_graphs"] - before == 1
    assert seconds < 300, f"inductor took {seconds:.0f} s to compile a 2-layer model"


def _compile_config(**kw):
    cc = CompileConfig(fullgraph=True, backend="aot_eager", mode="default", **kw)
    cc._compile_all_devices = True  # generate only auto-compiles on accelerators otherwise
    return cc


@pytest.mark.parametrize("bits", BITS)
def test_static_cache_decode_compiles_once_and_matches_eager(bits):
    model = tiny_llama(bits)
    ids = prompt()
    want = model.generate(ids, max_new_tokens=12, do_sample=False)  # eager, dynamic cache
    before = counters["stats"]["unique_graphs"]
    got = model.generate(ids, max_new_tokens=12, do_sample=False, cache_implementation="static",
                         compile_config=_compile_config())
    assert hasattr(model, "_compiled_call"), "generate did not compile the decode step"
    # One graph serves every decode step (the prefill runs eagerly); a graph break or a
    # per-step recompile would add graphs.
    assert counters["stats"]["unique_graphs"] - before == 1
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    again = model.generate(ids, max_new_tokens=12, do_sample=False, cache_implementation="static",
                           compile_config=_compile_config())
    assert counters["stats"]["unique_graphs"] - before == 1
    torch.testing.assert_close(again, want, rtol=0, atol=0)


# ---- QLoRA training ----------------------------------------------------------------------------
def _lora_model(bits, checkpointing=False):
    model = tiny_llama(bits)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # torch 2.13 cannot recompute SDPA (it counts as an RNG op) inside a compiled
        # forward-loss-backward graph, with or without kbit; eager attention has no such op.
        model.set_attn_implementation("eager")
    # init_lora_weights=False: B is random too, so every LoRA weight gets a non-zero gradient.
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS,
                                            init_lora_weights=False))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _check_grads(got, want, tol):
    assert got.keys() == want.keys() and len(want) == 2 * ALL_LINEARS
    for name in want:
        assert want[name].abs().sum() > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad_ckpt"])
@pytest.mark.parametrize("bits", BITS)
def test_qlora_step_with_backward_in_one_graph(bits, checkpointing):
    model = _lora_model(bits, checkpointing)
    ids = prompt()

    def step(ids):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach()

    want_loss = step(ids)
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    # Dynamo traces Tensor.backward() (and so kbit's registered backward) only with this flag.
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        exp = _explain(step, ids)
        # Every quantized layer's forward is in the graph (checkpointing may add recomputations).
        assert count_op(exp.graphs, OP[bits]) >= ALL_LINEARS
        model.zero_grad(set_to_none=True)
        got_loss = torch.compile(step, fullgraph=True, backend="aot_eager")(ids)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    _check_grads(_grads(model), want, 1e-5)


@pytest.mark.parametrize("bits", BITS)
def test_qlora_compiled_forward_backward_matches_eager(bits):
    model = _lora_model(bits)
    ids = prompt()
    model(input_ids=ids, labels=ids).loss.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(input_ids=ids, labels=ids).loss.backward()  # AOTAutograd compiles the backward too
    _check_grads(_grads(model), want, 1e-5)
