"""Model configs shipped with kbit (HF config.json files) for `kbit footprint` and the docs:
tiny_llama (a small Llama to run for real) and llama-3.1-8b (Meta's released config)."""

from __future__ import annotations

import json
from pathlib import Path

_DIR = Path(__file__).parent


def available() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.json"))


def load(name_or_path: str):
    """A transformers config from a bundled name, a config.json path, a model directory, or a
    Hub id (as transformers resolves it)."""
    from transformers import AutoConfig

    bundled = _DIR / f"{name_or_path}.json"
    path = bundled if bundled.is_file() else Path(name_or_path)
    if path.is_file():
        d = json.loads(path.read_text())
        if "model_type" not in d:
            raise ValueError(f"kbit: {path} has no 'model_type'; is it a transformers config.json?")
        return AutoConfig.for_model(d.pop("model_type"), **d)
    if path.is_dir():
        return AutoConfig.from_pretrained(str(path))
    if name_or_path.endswith(".json") or name_or_path.startswith(("/", ".", "~")):
        raise ValueError(f"kbit: no config at {name_or_path!r}; bundled configs: {', '.join(available())}")
    return AutoConfig.from_pretrained(name_or_path)
