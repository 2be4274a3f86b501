"""StableEmbedding: an embedding followed by LayerNorm whose optimizer state stays 32-bit.

Like bitsandbytes' StableEmbedding (for training with 8-bit optimizers): Xavier-uniform init, the
layer norm applied in full precision, and kbit.optim keeping float32 Adam states for its weight,
whose rows see rare, large gradients that 8-bit states would quantize badly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StableEmbedding(nn.Embedding):
    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None, max_norm=None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False, _weight=None,
                 device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq,
                         sparse, _weight, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(embedding_dim, device=device)
        self.weight._kbit_optim_bits = 32  # read by kbit.optim when it creates the state

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        emb = F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                          self.scale_grad_by_freq, self.sparse)
        return self.norm(emb.to(torch.get_default_dtype())).to(self.weight.dtype)
