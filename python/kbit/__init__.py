"""kbit: 8-bit (LLM.int8()) and 4-bit (NF4/FP4) quantization for PyTorch and Hugging Face models."""

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _ops, functional  # noqa: F401
from .quant_state import QuantState  # noqa: F401

__version__ = "0.1.0"
