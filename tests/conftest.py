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
