"""Checks of the plain arguments that say which text and how much of it: no model, no torch.

Each raises a one-line PrunelabError naming the problem and the fix, so that the CLI and the
Python API refuse a bad value the same way, before anything is loaded.
"""

from __future__ import annotations

from prunelab import defaults
from prunelab.data.sources import check_text_source
from prunelab.errors import PrunelabError

# The shortest window accepted, for calibration and for evaluation alike (the recipes' bound):
# shorter ones say little about a model whose context is hundreds of tokens.
MIN_SEQLEN = 8


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_seqlen(seqlen) -> None:
    if not _is_int(seqlen) or seqlen < MIN_SEQLEN:
        raise PrunelabError(f"sequence length {seqlen} is too short",
                            f"use --seqlen {MIN_SEQLEN} or more")


def check_batch_size(batch_size) -> None:
    if not _is_int(batch_size) or batch_size < 1:
        raise PrunelabError(f"batch size {batch_size!r} is not a positive integer",
                            "use a batch size of 1 or more")


def check_window_args(seqlen, n_windows, batch_size) -> None:
    """Evaluation windows: their length, how many (None: all the text holds), the batch."""
    check_seqlen(seqlen)
    if n_windows is not None and (not _is_int(n_windows) or n_windows < 1):
        raise PrunelabError(f"{n_windows} windows is too few", "use --windows 1 or more")
    check_batch_size(batch_size)


def check_perplexity_args(source: str = defaults.EVAL_SOURCE, seqlen: int = defaults.EVAL_SEQLEN,
                          n_windows: int | None = defaults.EVAL_WINDOWS,
                          batch_size: int = defaults.PERPLEXITY_BATCH_SIZE) -> None:
    """Check a perplexity measurement's arguments without the model (the CLI does, first)."""
    check_window_args(seqlen, n_windows, batch_size)
    check_text_source(str(source), "text")
