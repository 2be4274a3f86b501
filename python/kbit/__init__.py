"""kbit: 8-bit (LLM.int8()) and 4-bit (NF4/FP4) quantization for PyTorch and Hugging Face models."""

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _ops, functional  # noqa: F401
from .quant_state import QuantState  # noqa: F401
from . import nn, optim  # noqa: F401
from .config import QuantConfig  # noqa: F401
from .memory import estimate_footprint, get_memory_footprint  # noqa: F401
from .quantize import quantize_model  # noqa: F401
from .loading import from_pretrained, save_pretrained  # noqa: F401
from . import integrations as _integrations

_integrations.install()  # registers quant_method "kbit" with transformers once that is imported

__version__ = "0.1.0"
