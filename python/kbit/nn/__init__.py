"""Quantized layers: drop-in nn.Linear replacements with packed weights."""

from .linear_4bit import Linear4bit
from .linear_8bit import Linear8bitLt
from .parameter import Params4bit
from .stable_embedding import StableEmbedding

__all__ = ["Linear4bit", "Linear8bitLt", "Params4bit", "StableEmbedding"]
