"""The QLoRA example and benchmark scripts run end to end at tiny size on the CPU."""

import importlib.util
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from kbit.integrations.transformers import attach_quantizer
from kbit.nn import Linear4bit

REPO = Path(__file__).resolve().parents[1]


def _load_script(relative: str):
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_qlora_example_tiny(tmp_path):
    example = _load_script("examples/qlora_finetune.py")
    out = tmp_path / "out"
    summary = example.main(["--tiny", "--steps", "4", "--lr", "1e-2", "--output", str(out), "--merge"])
    assert summary["last_loss"] < summary["first_loss"], summary
    assert summary["trainable_params"] > 0
    assert summary["optimizer"] == "PagedAdamW8bit"  # kbit's, through Trainer(optimizer_cls_and_kwargs=...)
    # The adapter reloads onto the same (seeded) quantized base and changes its outputs.
    config = example.llama_config("tiny")
    base = example.random_quantized_llama(config, "cpu")
    attach_quantizer(base, example.quant_config())
    assert isinstance(base.model.layers[0].mlp.down_proj, Linear4bit)
    ids = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = base(input_ids=ids).logits.float()
        adapted = PeftModel.from_pretrained(base, out / "adapter")(input_ids=ids).logits.float()
    assert not torch.allclose(plain, adapted)
    # --merge wrote a float model with the adapter folded in.
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not any(isinstance(m, Linear4bit) for m in merged.modules())
    assert "quantization_config" not in json.loads((out / "merged" / "config.json").read_text())
    with torch.no_grad():
        folded = merged(input_ids=ids).logits.float()
    torch.testing.assert_close(folded, adapted, rtol=0.05, atol=0.05)  # bf16 model, bf16 merged weights


def test_bench_qlora_tiny(tmp_path):
    bench = _load_script("benchmarks/bench_qlora.py")
    rows = bench.main(["--tiny", "--contenders", "kbit", "--steps", "1", "--load", "--load-repeats", "1",
                       "--ckpt-dir", str(tmp_path / "ckpt"), "--json", str(tmp_path / "rows.jsonl")])
    kinds = {(r["bench"], r["contender"]) for r in rows}
    assert kinds == {("qlora_step", "kbit"), ("load", "kbit")}
    step = next(r for r in rows if r["bench"] == "qlora_step")
    assert step["s_per_step"] > 0 and all(torch.isfinite(torch.tensor(step["losses"])))
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2
