"""The `kbit` command: the footprint job and its tables."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from kbit import cli  # noqa: E402


def _rows(text: str, title: str) -> dict:
    """{scheme: cells} of the table printed under the line starting with `title`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 3:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_default_job(capsys):
    assert cli.main(["--batch", "1", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    tiny = _rows(out, "tiny_llama")
    assert list(tiny) == ["FP32", "BF16", "INT8", "NF4", "NF4+DQ"]
    # cells: bytes, size, unit, % of FP32, bits/param Linear, bits/param all, rel. err, top-1
    assert tiny["FP32"][3] == "100.0%" and tiny["BF16"][3] == "50.0%"
    assert tiny["FP32"][4] == "32.000" and tiny["BF16"][4] == "16.000"
    assert 8.0 < float(tiny["INT8"][4]) < 8.1
    assert 4.5 < float(tiny["NF4"][4]) < 4.51 and 4.12 < float(tiny["NF4+DQ"][4]) < 4.2
    assert tiny["BF16"][6] == "(reference)"
    errs = {k: float(tiny[k][6]) for k in ("FP32", "INT8", "NF4", "NF4+DQ")}
    assert 0 < errs["FP32"] < errs["INT8"] < errs["NF4"] < 1.0
    assert all(0 <= float(tiny[k][7].rstrip("%")) <= 100 for k in errs)

    big = _rows(out, "llama-3.1-8b")
    assert list(big) == ["FP32", "BF16", "INT8", "NF4", "NF4+DQ"]
    linear = 6_979_321_856  # weights in the 224 quantized Linear layers of Llama-3.1-8B
    bf16_rest = 2 * 128256 * 4096 * 2 + 65 * 4096 * 2  # embeddings + lm_head + norms in bf16
    buffers = 2 * 64 * 4  # rotary inv_freq buffers, float32
    nf4 = linear // 2 + 4 * linear // 64 + 224 * 16 * 4 + bf16_rest + buffers
    assert int(big["NF4"][0].replace(",", "")) == nf4
    assert big["FP32"][0] == f"{(linear + bf16_rest // 2) * 4 + buffers:,}"
    assert big["NF4"][4] == "4.500" and big["NF4+DQ"][4] == "4.127" and big["INT8"][4] == "8.006"
    assert len(big["NF4"]) == 6  # no error columns for the meta-device estimate


def test_config_path_and_errors(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 100}))
    assert cli.main(["footprint", "--config", str(path)]) == 0
    rows = _rows(capsys.readouterr().out, str(path))
    n = 64 * 64 * 4 + 64 * 128 * 3  # q, k, v, o and the three MLP weights
    assert rows["NF4"][4] == f"{8 * (n // 2 + 4 * n // 64 + 7 * 16 * 4) / n:.3f}"
    assert cli.main(["--config", "/no/such/config.json"]) == 2
    assert "no config" in capsys.readouterr().err


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "kbit", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "footprint" in out.stdout
