"""quantize_model: replace a model's nn.Linear layers by kbit's quantized layers, in place."""

from __future__ import annotations

import re
from typing import Iterable, Optional, Union

import torch
from torch import nn

from .config import QuantConfig
from .nn import Linear4bit, Linear8bitLt

# Below this many layers a progress bar is more noise than help.
PROGRESS_MIN_LAYERS = 64


def name_matches(name: str, pattern: str) -> bool:
    """Whether module `name` is covered by a skip pattern: the pattern's dotted components appear as
    a run of the name's components ("lm_head", "mlp.down_proj", "layers.3"), or the pattern is a
    regular expression matching the whole name. "layers.1" does not cover "layers.10"."""
    parts, want = name.split("."), pattern.split(".")
    for i in range(len(parts) - len(want) + 1):
        if parts[i:i + len(want)] == want:
            return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def default_skip_modules(model: nn.Module) -> list[str]:
    """Modules kept in float like bitsandbytes does: the output embeddings (lm_head), found through
    get_output_embeddings() where the model has it and by the name "lm_head", plus the model's own
    _keep_in_fp32_modules."""
    skip = ["lm_head"]
    getter = getattr(model, "get_output_embeddings", None)
    out = getter() if callable(getter) else None
    if out is not None:
        skip += [name for name, m in model.named_modules() if m is out and name]
    for attr in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict"):
        extra = getattr(model, attr, None)
        if isinstance(extra, (list, tuple, set)):
            skip += [s for s in extra if isinstance(s, str)]
    return list(dict.fromkeys(skip))


def _is_target(module: nn.Module) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly (NonDynamicallyQuantizableLinear): leave it.
    return (isinstance(module, nn.Linear) and not isinstance(module, (Linear4bit, Linear8bitLt))
            and not isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear))


def find_targets(model: nn.Module, config: QuantConfig) -> list[list[str]]:
    """Names of the nn.Linear layers quantize_model would replace, grouped by module (a module
    reachable under several names is one group, so it is quantized once)."""
    skip = default_skip_modules(model) + list(config.skip_modules or [])
    groups: dict[int, list[str]] = {}
    skipped: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if not name or not _is_target(module):
            continue
        groups.setdefault(id(module), []).append(name)
        if any(name_matches(name, p) for p in skip):
            skipped.add(id(module))
    return [names for key, names in groups.items() if key not in skipped]


def quantize_linear(linear: nn.Linear, config: QuantConfig) -> nn.Module:
    """One nn.Linear as the layer `config` asks for (on the linear's device)."""
    if config.load_in_4bit:
        return Linear4bit.from_linear(
            linear, compute_dtype=config.compute_dtype, quant_type=config.quant_type,
            double_quant=config.double_quant, blocksize=config.blocksize, quant_storage=config.quant_storage,
        )
    return Linear8bitLt.from_linear(linear, threshold=config.llm_int8_threshold)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_model(
    model: nn.Module, config: Union[QuantConfig, dict], progress: Optional[bool] = None
) -> nn.Module:
    """Replaces every nn.Linear of `model` (except the output embeddings and `config.skip_modules`)
    by a Linear4bit or Linear8bitLt, in place, one layer at a time so that each float weight can be
    freed as soon as its quantized copy exists. Works on the meta device (shapes only).

    progress: show a tqdm bar (None: only for models with many layers). Returns `model`, marked
    with `is_loaded_in_4bit` / `is_loaded_in_8bit` as PEFT and transformers expect.
    """
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config)
    if not isinstance(config, QuantConfig):
        raise TypeError(f"kbit: config must be a QuantConfig or a dict, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"kbit: model must be an nn.Module, got {type(model).__name__}")
    groups = find_targets(model, config)
    if progress is None:
        progress = len(groups) >= PROGRESS_MIN_LAYERS
    bar = _progress(len(groups), progress)
    with torch.no_grad():
        for names in groups:
            linear = model.get_submodule(names[0])
            quantized = quantize_linear(linear, config)
            for name in names:
                _set_module(model, name, quantized)
            del linear, quantized  # drop our reference: the float weight goes once nothing else holds it
            bar.update(1)
    bar.close()
    model.is_loaded_in_4bit = config.load_in_4bit
    model.is_loaded_in_8bit = config.load_in_8bit
    return model


def _progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="kbit: quantizing", unit="layer")
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def iter_quantized(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """(name, layer) for every kbit quantized layer in `model`."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, (Linear4bit, Linear8bitLt)))
