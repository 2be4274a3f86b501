"""Blockwise layout shared by the quantization references in the tests (FORMAT.md)."""

import torch


def padded_blocks(A, blocksize):
    """A's elements as float32 on the CPU in (blocks, blocksize) rows, the last block zero-padded;
    with the per-block absmax and the element count."""
    flat = A.detach().reshape(-1).float().cpu()
    n = flat.numel()
    padded = torch.zeros(-(-n // blocksize) * blocksize)
    padded[:n] = flat
    blocks = padded.view(-1, blocksize)
    return blocks, blocks.abs().amax(1), n
