import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def testdata_dir() -> Path:
    return Path(os.environ.get("KBIT_TESTDATA", REPO.parent / "shared" / "testdata"))


@pytest.fixture(scope="session")
def bnb_vectors():
    path = testdata_dir() / "bnb_vectors.safetensors"
    if not path.exists():
        pytest.skip(f"bitsandbytes test vectors not found at {path}")
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def cpu_only(monkeypatch):
    """For tests of CPU behaviour that load models through transformers: like bitsandbytes', kbit's
    quantizer places a model with no device_map on the current CUDA device when there is one, and
    these tests compare against models built on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
