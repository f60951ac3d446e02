"""Perplexity on non-overlapping windows of a text source, and the dense model's remembered."""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunelab import defaults, ppl_cache
from prunelab.data.checks import check_window_args
from prunelab.data.corpora import eval_windows, tokens_digest


@torch.no_grad()
def windows_nll(model, windows: torch.Tensor, batch_size: int = defaults.PERPLEXITY_BATCH_SIZE,
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


def perplexity_of_windows(model, windows: torch.Tensor,
                          batch_size: int = defaults.PERPLEXITY_BATCH_SIZE,
                          progress: bool = False) -> float:
    total, count = windows_nll(model, windows, batch_size, progress)
    return math.exp(total / count)


def perplexity(loaded, source: str = defaults.EVAL_SOURCE, seqlen: int = defaults.EVAL_SEQLEN,
               n_windows: int | None = defaults.EVAL_WINDOWS,
               batch_size: int = defaults.PERPLEXITY_BATCH_SIZE, progress: bool = False) -> float:
    """Perplexity on `n_windows` consecutive non-overlapping windows of `seqlen` tokens."""
    check_window_args(seqlen, n_windows, batch_size)  # the text is checked as it is read
    windows = eval_windows(loaded, source, seqlen, n_windows)
    return perplexity_of_windows(loaded.model, windows, batch_size, progress)


class Measured(NamedTuple):
    value: float
    cached: bool  # True when the value was read from the cache, not measured now


def dense_perplexity(loaded, source: str = defaults.EVAL_SOURCE,
                     seqlen: int = defaults.EVAL_SEQLEN,
                     n_windows: int | None = defaults.EVAL_WINDOWS,
                     batch_size: int = defaults.PERPLEXITY_BATCH_SIZE,
                     progress: bool = False) -> Measured:
    """`perplexity` of a model exactly as loaded from its directory, remembered in the cache.

    The cache entry is keyed by the directory's files and the windows (`prunelab.ppl_cache`),
    not by the weights in memory: call this only before changing the model (pruning it, or
    loading other weights into it), as the CLI does for the "dense" number. A model with no
    directory (built in memory, or from a hub id) is measured every time.
    """
    check_window_args(seqlen, n_windows, batch_size)
    windows = eval_windows(loaded, source, seqlen, n_windows)
    key = ppl_cache.cache_key(loaded, windows)
    if key is not None and (value := ppl_cache.lookup(key)) is not None:
        return Measured(value, cached=True)
    value = perplexity_of_windows(loaded.model, windows, batch_size, progress)
    if key is not None:
        ppl_cache.store(key, value, {"model": loaded.name, "source": str(source),
                                     "seqlen": seqlen, "windows": int(windows.shape[0]),
                                     "windows_sha256": tokens_digest(windows)})
    return Measured(value, cached=False)
