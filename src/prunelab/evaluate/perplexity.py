"""Perplexity on non-overlapping windows of a text source."""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def windows_nll(model, windows: torch.Tensor, batch_size: int = 4,
                progress: bool = False) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over all windows, and the tokens scored.

    Every position but the first of each window is predicted from the ones before it.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    batches = windows.split(batch_size)
    for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress,
                      file=sys.stderr, dynamic_ncols=True):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                               batch[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += batch[:, 1:].numel()
    return total, count


def perplexity_of_windows(model, windows: torch.Tensor, batch_size: int = 4,
                          progress: bool = False) -> float:
    total, count = windows_nll(model, windows, batch_size, progress)
    return math.exp(total / count)
