"""End-to-end decode speed of a Llama model (random weights) under Hugging Face `generate`, for bf16,
kbit NF4 (+double quant), kbit int8, bitsandbytes NF4 (+double quant) and bitsandbytes int8, in HF
eager mode (dynamic cache) and compiled (static cache; transformers compiles the decode step with
torch.compile mode="reduce-overhead", i.e. CUDA graphs), and without `generate` in a minimal greedy loop
over a static cache (modes graph and cudagraph, see StaticDecoder): the floor that per-step host work
of `generate` (logits processors, stopping criteria, a host sync per token) hides.

    python benchmarks/bench_generate.py                       # everything, Llama-3.1-8B shape, GPU
    python benchmarks/bench_generate.py --contenders bf16,kbit-nf4 --modes compiled --batch 1
    python benchmarks/bench_generate.py --contenders bf16,kbit-nf4 --modes graph,cudagraph --batch 1
    python benchmarks/bench_generate.py --tiny                # CPU smoke test, seconds

One bf16 model is built on the device; each quantized contender is a copy of it that shares every
tensor it does not quantize (embeddings, norms, lm_head), so at most one bf16 model plus one
quantized one are resident. Every call is warmed up with the same prompt and new-token lengths as
the timed one. cuDNN attention is off for all contenders (it costs ~2 ms of CPU per layer call in
eager decode). Prints a markdown table; --json appends one JSON line per row for merging runs."""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import time

import torch
from torch import nn
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM, StaticCache

CONTENDERS = ("bf16", "kbit-nf4", "kbit-int8", "bnb-nf4", "bnb-int8")
# graph: the step below under torch.compile (mode="reduce-overhead": CUDA graphs via inductor);
# cudagraph: the same step in eager, captured once with torch.cuda.CUDAGraph (no compiler at all).
MODES = ("eager", "compiled", "graph", "cudagraph")
DEFAULT_MODES = ("eager", "compiled", "graph")
GIB = 2**30


# ---- models ------------------------------------------------------------------------------------
def llama_config(args) -> LlamaConfig:
    if args.tiny:
        shape = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1024)
    else:  # Llama-3.1-8B
        shape = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    cfg = LlamaConfig(max_position_embeddings=8192, tie_word_embeddings=False, **shape)
    cfg._attn_implementation = "sdpa"
    return cfg


def build_bf16(cfg: LlamaConfig, device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model.eval().requires_grad_(False)
    # Random weights: never stop early, so every call makes exactly --new-tokens tokens.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


_RUN_STATE = ("_compiled_call", "_last_compile_config", "_cache")  # what generate leaves on a model


def drop_run_state(model: nn.Module) -> None:
    for name in _RUN_STATE:
        model.__dict__.pop(name, None)


def sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are new objects over the same storage: the
    copy can have its Linear layers replaced (and their weights dropped) without touching `model`."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = b
    saved = {name: model.__dict__.pop(name) for name in _RUN_STATE if name in model.__dict__}
    try:
        return copy.deepcopy(model, memo)
    finally:
        model.__dict__.update(saved)


def _swap_linears(model: nn.Module, make) -> None:
    """Replaces every nn.Linear except lm_head by make(linear), layer by layer."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and full != "lm_head":
                setattr(module, child_name, make(child))


def bnb_nf4(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                              device="meta")
    packed, state = bnb.functional.quantize_4bit(linear.weight.data, blocksize=64, compress_statistics=True,
                                                 quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state, blocksize=64,
                                     compress_statistics=True, quant_type="nf4", module=layer,
                                     bnb_quantized=True)
    layer.quant_state = state
    if linear.bias is not None:
        layer.bias = linear.bias
    return layer


def bnb_int8(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=6.0, device="meta")
    CB, SCB, _ = bnb.functional.int8_vectorwise_quant(linear.weight.data.to(torch.float16))
    layer.weight = bnb.nn.Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB, SCB=SCB)
    if linear.bias is not None:
        layer.bias = linear.bias
    return layer


def make_contender(name: str, base: nn.Module) -> nn.Module:
    if name == "bf16":
        return base
    model = sharing_copy(base)
    if name.startswith("kbit-"):
        import kbit

        if name == "kbit-nf4":
            cfg = kbit.QuantConfig(load_in_4bit=True, quant_type="nf4", double_quant=True,
                                   compute_dtype=torch.bfloat16)
        else:
            cfg = kbit.QuantConfig(load_in_8bit=True, llm_int8_threshold=6.0)
        out = kbit.quantize_model(model, cfg)
        model = out if out is not None else model
    else:
        _swap_linears(model, bnb_nf4 if name == "bnb-nf4" else bnb_int8)
    return model


def _storages(model: nn.Module) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in (*model.parameters(), *model.buffers())}


def resident_bytes(model: nn.Module, base: nn.Module, allocated: int | None) -> int:
    """Bytes the model holds: what building it allocated (`allocated`, from the CUDA allocator; on
    the CPU the registered tensors it does not share with base), plus what it shares with the bf16
    source model, which a standalone copy would hold too."""
    own = _storages(model)
    if model is base:
        return sum(own.values())
    theirs = _storages(base)
    shared = sum(n for ptr, n in own.items() if ptr in theirs)
    if allocated is None:
        allocated = sum(n for ptr, n in own.items() if ptr not in theirs)
    return allocated + shared


# ---- timing ------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def generate(model, ids, new_tokens, mode, args):
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, attention_mask=torch.ones_like(ids))
    if mode == "eager":
        kwargs.update(disable_compile=True)  # dynamic cache, plain eager forward
    else:
        cc = CompileConfig(fullgraph=args.fullgraph_for, backend=args.backend,
                           mode="reduce-overhead" if args.backend == "inductor" else "default")
        cc._compile_all_devices = True  # lets --tiny compile on the CPU too
        kwargs.update(cache_implementation="static", compile_config=cc)
    return model.generate(ids, **kwargs)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


class StaticDecoder:
    """Greedy decoding without `generate`: a StaticCache sized prompt + new tokens, the prefill run
    once in eager, then one call per new token of `step` (forward on one token + argmax, all on the
    device). Nothing in the loop waits for the GPU, so the host runs ahead and the GPU never idles
    as long as launching a step costs less than running it.

    impl "graph": `step` under torch.compile (reduce-overhead with inductor: CUDA graph trees; on the
    CPU just the compiled loop). impl "cudagraph": `step` in eager, captured once into a
    torch.cuda.CUDAGraph over static token buffers and replayed. The cache needs no position
    argument: transformers' static layers keep their length in a device tensor that the step
    advances in place (and positions/masks are derived from it), so every step is the same graph."""

    def __init__(self, model, batch: int, prompt: int, new_tokens: int, impl: str, args, device):
        self.model, self.impl, self.args = model, impl, args
        self.cache = StaticCache(config=model.config, max_cache_len=prompt + new_tokens)
        # tokens[j] is the (batch, 1) j-th new token: each step reads one slot, the next is written.
        self.tokens = torch.zeros(new_tokens, batch, 1, dtype=torch.long, device=device)
        self.step = None

    def _forward_argmax(self, tok: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=tok, past_key_values=self.cache, use_cache=True).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    def prefill(self, ids: torch.Tensor) -> None:
        # logits_to_keep=1: only the last position's logits, as generate does.
        logits = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True,
                            logits_to_keep=1).logits
        self.tokens[0].copy_(logits[:, -1].argmax(-1, keepdim=True))

    def _build(self, ids: torch.Tensor) -> None:
        if self.impl == "graph":
            backend = self.args.backend
            mode = "reduce-overhead" if backend == "inductor" else None
            self.step = torch.compile(self._forward_argmax, backend=backend, mode=mode,
                                      fullgraph=self.args.fullgraph_for)
            return
        if ids.device.type != "cuda":
            raise RuntimeError("mode cudagraph needs a CUDA device")
        self.prefill(ids)  # allocates the cache (lazily, on the first update) outside the capture
        self.static_tok = self.tokens[0].clone()
        # Eager warm-up on a side stream before capturing (lazy inits, cuBLAS workspaces), as
        # torch.cuda.graphs requires; it moves the cache on, which the next reset() undoes.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.static_tok.copy_(self._forward_argmax(self.static_tok))
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            # The argmax goes back into the input buffer, so a replay needs no copy in.
            self.static_tok.copy_(self._forward_argmax(self.static_tok))
        self.step = self.graph

    def run(self, ids: torch.Tensor, device) -> tuple[float, float]:
        """Generates len(tokens) tokens after `ids`; returns (prefill s, decode s), each ended by a sync."""
        if self.step is None:
            with torch.no_grad():
                self._build(ids)
        self.cache.reset()  # zeroes in place: the buffers keep the addresses the graphs captured
        tokens = self.tokens
        with torch.no_grad():
            sync(device)
            t0 = time.perf_counter()
            self.prefill(ids)
            sync(device)
            t1 = time.perf_counter()
            if self.impl == "graph":
                step = self.step
                for j in range(1, len(tokens)):
                    # Outputs of a CUDA-graph-tree replay are overwritten by the next replay: copy
                    # the token out now; the next step reads that slot, never the graph's output.
                    tokens[j].copy_(step(tokens[j - 1]))
            else:
                self.static_tok.copy_(tokens[0])
                for j in range(1, len(tokens)):
                    self.graph.replay()
                    tokens[j].copy_(self.static_tok)
            sync(device)
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    def output(self, ids: torch.Tensor) -> torch.Tensor:
        """The prompt followed by the generated tokens, shaped like generate's output."""
        return torch.cat([ids, self.tokens.squeeze(-1).t()], dim=1)


def bench_static(model, mode, ids, args, device):
    decoder = StaticDecoder(model, ids.shape[0], ids.shape[1], args.new_tokens, mode, args, device)
    graphs0, skips0 = compiled_graphs(), cudagraph_skips()
    for _ in range(args.warmup):
        decoder.run(ids, device)
        out = decoder.output(ids)
        assert out.shape == (ids.shape[0], args.prompt + args.new_tokens), out.shape
    if mode == "graph" and compiled_graphs() == graphs0:
        raise RuntimeError("torch.compile did not compile the decode step")
    times = [decoder.run(ids, device) for _ in range(args.repeat)]
    t_first = statistics.median(t for t, _ in times)
    t_decode = statistics.median(t for _, t in times)
    batch = ids.shape[0]
    return {
        "tok_s": batch * args.new_tokens / (t_first + t_decode),
        "decode_tok_s": batch * (args.new_tokens - 1) / t_decode,
        "ms_per_step": 1e3 * t_decode / (args.new_tokens - 1),
        "prefill_ms": 1e3 * t_first,
        "cudagraph_skips": cudagraph_skips() - skips0,
    }


def bench_one(model, mode, batch, args, device):
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, model.config.vocab_size, (batch, args.prompt), generator=gen).to(device)
    if mode in ("graph", "cudagraph"):
        return bench_static(model, mode, ids, args, device)
    graphs0 = compiled_graphs()
    skips0 = cudagraph_skips()
    for _ in range(args.warmup):
        out = generate(model, ids, args.new_tokens, mode, args)
        assert out.shape == (batch, args.prompt + args.new_tokens), out.shape
    compiled = compiled_graphs() > graphs0
    if mode == "compiled" and not compiled:
        raise RuntimeError("generate did not compile the forward (static cache refused?)")
    full = [timed(lambda: generate(model, ids, args.new_tokens, mode, args), device)
            for _ in range(args.repeat)]
    # Prefill + first token alone, to report the decode rate apart from the prompt.
    generate(model, ids, 1, mode, args)
    first = [timed(lambda: generate(model, ids, 1, mode, args), device) for _ in range(args.repeat)]
    skipped = cudagraph_skips() - skips0  # > 0: some compiled call ran without CUDA graphs
    t_full, t_first = statistics.median(full), statistics.median(first)
    t_decode = t_full - t_first  # can come out <= 0 only from timing noise (tiny CPU runs)
    return {
        "tok_s": batch * args.new_tokens / t_full,
        "decode_tok_s": batch * (args.new_tokens - 1) / t_decode if t_decode > 0 else None,
        "ms_per_step": 1e3 * t_decode / (args.new_tokens - 1) if t_decode > 0 else None,
        "prefill_ms": 1e3 * t_first,
        "cudagraph_skips": skipped,
    }


def release(device):
    torch._dynamo.reset()
    if device.type == "cuda":
        try:
            from torch._inductor import cudagraph_trees

            cudagraph_trees.reset_cudagraph_trees()
        except (ImportError, AttributeError):
            pass
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma list of {', '.join(CONTENDERS)}")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--batch", default="1,8", help="comma list of batch sizes")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128, or 16 with --tiny)")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens (default 256, or 8 with --tiny)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32, or 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=1, help="untimed generate calls of the same lengths first")
    p.add_argument("--repeat", type=int, default=1, help="timed calls (median)")
    p.add_argument("--backend", default=None,
                   help="torch.compile backend for modes 'compiled' and 'graph' (default: inductor; aot_eager on the CPU, "
                        "where inductor's C++ build takes minutes)")
    p.add_argument("--fullgraph", choices=("auto", "on", "off"), default="auto",
                   help="auto: fullgraph for bf16/kbit (a graph break is an error), not for bitsandbytes")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, short prompt")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="append one JSON line per result to this file")
    p.add_argument("--table-from", default=None, help="only print the table of a --json file, run nothing")
    args = p.parse_args(argv)
    if args.tiny:
        args.device = args.device or "cpu"
    args.prompt = args.prompt or (16 if args.tiny else 128)
    args.new_tokens = args.new_tokens or (8 if args.tiny else 256)
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.modes = [m for m in args.modes.split(",") if m]
    args.batch = [int(b) for b in args.batch.split(",") if b]
    for c in args.contenders:
        if c not in CONTENDERS:
            p.error(f"unknown contender {c!r}; choose from {', '.join(CONTENDERS)}")
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if args.new_tokens < 2:
        p.error("--new-tokens must be at least 2")
    return args


def available(name: str) -> str | None:
    """None if the contender can run here, else why not."""
    try:
        __import__({"kbit": "kbit", "bnb": "bitsandbytes"}.get(name.split("-")[0], "torch"))
    except ImportError as e:
        return f"not importable: {e}"
    return None


def main(argv=None):
    args = parse_args(argv)
    if args.table_from:
        return table_from(args.table_from)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.backend = args.backend or ("inductor" if device.type == "cuda" else "aot_eager")
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch._dynamo.config.cache_size_limit = 64
    cfg = llama_config(args)
    env = f"torch {torch.__version__}, device {device}"
    if device.type == "cuda":
        env += f" ({torch.cuda.get_device_name(device)})"
    print(f"{env}; layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, prompt {args.prompt}, "
          f"new tokens {args.new_tokens}, backend {args.backend}", flush=True)

    cuda = device.type == "cuda"
    base = build_bf16(cfg, device)
    rows = []
    for name in args.contenders:
        why = available(name)
        if why:
            print(f"skip {name}: {why}", flush=True)
            continue
        before = torch.cuda.memory_allocated(device) if cuda else 0
        t0 = time.perf_counter()
        model = make_contender(name, base)
        sync(device)
        build_s = time.perf_counter() - t0
        resident = resident_bytes(model, base, torch.cuda.memory_allocated(device) - before if cuda else None)
        footprint = model.get_memory_footprint()
        print(f"{name}: built in {build_s:.1f} s, resident {resident / GIB:.2f} GiB, "
              f"get_memory_footprint {footprint / GIB:.2f} GiB", flush=True)
        args.fullgraph_for = args.fullgraph == "on" or (args.fullgraph == "auto" and "bnb" not in name)
        for mode in args.modes:
            for batch in args.batch:
                row = dict(contender=name, mode=mode, batch=batch, footprint_gib=footprint / GIB,
                           resident_gib=resident / GIB, layers=cfg.num_hidden_layers, prompt=args.prompt,
                           new_tokens=args.new_tokens, device=str(device))
                if cuda:
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    start = torch.cuda.memory_allocated(device)
                t0 = time.perf_counter()
                try:
                    row.update(bench_one(model, mode, batch, args, device))
                except Exception as e:  # one contender failing must not lose the others' numbers
                    first_line = str(e).splitlines()[0][:200] if str(e) else ""
                    row["error"] = f"{type(e).__name__}: {first_line}"
                row["wall_s"] = time.perf_counter() - t0
                if cuda:
                    row["peak_gib"] = (resident + torch.cuda.max_memory_allocated(device) - start) / GIB
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
                # Forget compiled graphs and caches: each batch size gets its own static-shape
                # graphs, as a user serving one batch size would.
                drop_run_state(model)
                release(device)
        if model is not base:
            del model
        release(device)
    print_table(rows)


def print_table(rows):
    """Markdown table; speedups are against bf16 and bitsandbytes NF4 at the same mode and batch."""
    def tok_s_of(name):
        return {(r["mode"], r["batch"]): r["tok_s"] for r in rows if r["contender"] == name and "tok_s" in r}

    refs = {"bf16": tok_s_of("bf16"), "bnb-nf4": tok_s_of("bnb-nf4")}
    print("\n| contender | mode | batch | tok/s | decode tok/s | vs bf16 | vs bnb-nf4 | ms/step | prefill ms "
          "| get_memory_footprint GiB | resident GiB | peak GiB | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = f"| {r['contender']} | {r['mode']} | {r['batch']} |"
        mem = f"{r['footprint_gib']:.3g} | {r['resident_gib']:.3g} |"
        if "error" in r:
            print(f"{head} | | | | | | {mem} | error: {r['error']} |")
            continue
        vs = [refs[n].get((r["mode"], r["batch"])) for n in ("bf16", "bnb-nf4")]
        vs = [f"{r['tok_s'] / v:.2f}x" if v else "-" for v in vs]
        dec = f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "-"
        step = f"{r['ms_per_step']:.2f}" if r["ms_per_step"] else "-"
        peak = f"{r['peak_gib']:.3g}" if "peak_gib" in r else "-"
        notes = f"{r['cudagraph_skips']} CUDA-graph skips" if r.get("cudagraph_skips") else ""
        print(f"{head} {r['tok_s']:.1f} | {dec} | {vs[0]} | {vs[1]} | {step} | {r['prefill_ms']:.1f} | {mem} "
              f"{peak} | {notes} |")


def table_from(path: str) -> None:
    """Prints the table of rows appended by earlier --json runs (the last row per key wins)."""
    rows = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[(r["contender"], r["mode"], r["batch"])] = r
    order = {c: i for i, c in enumerate(CONTENDERS)}
    rows = sorted(rows.values(), key=lambda r: (order[r["contender"]], MODES.index(r["mode"]), r["batch"]))
    print_table(rows)


if __name__ == "__main__":
    main()
