"""Perplexity of the book's small language models on held-out text (WikiText-2).

Causal LM: $\\exp$ of the mean next-token negative log-likelihood over all blocks. Masked LM: $\\exp$ of the
mean loss on a seeded 15 % BERT masking of the same blocks (the MLM "perplexity" the 2023 paper reports).
"""

from __future__ import annotations

import math

import torch

from .pretrain import mask_tokens


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, kind: str, tokenizer=None, batch_size: int = 32, seed: int = 0) -> float:
    model.eval()
    total, count = 0.0, 0
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, blocks.shape[0], batch_size):
        x = blocks[i:i + batch_size]
        if kind == "mlm":
            batch = mask_tokens(x, tokenizer, gen)
            n = int((batch["labels"] != -100).sum())
        else:
            batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}
            n = x.numel() - x.shape[0]  # the first token of each block has no prediction
        loss = model(**batch).loss
        total += float(loss) * n
        count += n
    return math.exp(total / max(count, 1))
