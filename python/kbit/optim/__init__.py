"""8-bit and paged Adam optimizers (bitsandbytes' AdamW8bit, PagedAdamW8bit, PagedAdamW).

Use them as any torch.optim.Optimizer; with Hugging Face's Trainer pass
`optimizer_cls_and_kwargs=(kbit.optim.PagedAdamW8bit, {"lr": 2e-4})` or `optimizers=(opt, scheduler)`."""

from .adam import Adam8bit, AdamW8bit, PagedAdamW, PagedAdamW8bit
from .paged import is_paged

__all__ = ["Adam8bit", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "is_paged"]
