"""kbit (placeholder until the lead's package lands): loads the compiled ops."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401
