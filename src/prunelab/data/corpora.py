"""Text corpora for calibration and perplexity, and how they are cut into token windows.

Evaluation text and calibration text are deliberately different: by default perplexity is
measured on one half of Python's own reference text ("python-ref-b", our WikiText stand-in,
since WikiText is not reachable here) and calibration draws from the other half
("python-ref-a"); both ship with Python. The SQuAD sources remain where BIG-bench data can be
had. Any local UTF-8 text file works as either.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from prunelab import defaults
# The config and the source registry live in their own torch-free modules; they stay
# importable from here, where most callers (bench/, tests, study/) have always found them.
from prunelab.data.calibration import CalibrationConfig
from prunelab.data.checks import check_seqlen
from prunelab.data.sources import TEXT_PROVIDERS, TEXT_SOURCES, load_text
from prunelab.errors import PrunelabError

__all__ = ["CalibrationConfig", "TEXT_PROVIDERS", "TEXT_SOURCES", "calibration_windows",
           "check_seqlen_fits", "eval_windows", "load_text", "token_stream", "tokens_digest"]

_TOKEN_CACHE: dict[tuple[str, int], torch.Tensor] = {}


def token_stream(loaded, source: str | Path) -> torch.Tensor:
    """All tokens of a text source (no special tokens), cached per tokenizer for the process."""
    key = (str(source), id(loaded.tokenizer))
    if key not in _TOKEN_CACHE:
        ids = loaded.encode(load_text(source))
        _TOKEN_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[key]


def check_seqlen_fits(loaded, seqlen: int) -> None:
    """A window of `seqlen` tokens is long enough and fits the model's context."""
    check_seqlen(seqlen)
    if seqlen > loaded.max_length:
        raise PrunelabError(
            f"sequence length {seqlen} is longer than the model's context of {loaded.max_length}",
            f"use --seqlen {loaded.max_length} or less",
        )


def _prepend_bos(loaded, windows: torch.Tensor) -> torch.Tensor:
    """Start each window with BOS where the tokenizer would (Gemma); windows were cut one short."""
    if not loaded.add_bos:
        return windows
    bos = torch.full((windows.shape[0], 1), loaded.tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, windows], dim=1)


def calibration_windows(loaded, config: CalibrationConfig) -> torch.Tensor:
    """`n_samples` seeded random windows of `seqlen` tokens, shape [n_samples, seqlen]."""
    check_seqlen_fits(loaded, config.seqlen)
    if config.n_samples < 1:
        raise PrunelabError("calibration needs at least one sample", "use --calib-samples 1 or more")
    stream = token_stream(loaded, config.source)
    span = config.seqlen - (1 if loaded.add_bos else 0)
    if len(stream) < span + 1:
        raise PrunelabError(
            f"the calibration text {config.source} has {len(stream)} tokens, fewer than one "
            f"window of {config.seqlen}",
            "give a longer text or a smaller --seqlen",
        )
    if len(stream) < span * config.n_samples // 4:
        raise PrunelabError(
            f"the calibration text {config.source} ({len(stream)} tokens) is too little for "
            f"{config.n_samples} windows of {config.seqlen} tokens",
            "give more text, or lower --calib-samples or --seqlen",
        )
    rng = random.Random(config.seed)
    starts = [rng.randrange(0, len(stream) - span) for _ in range(config.n_samples)]
    return _prepend_bos(loaded, torch.stack([stream[s:s + span] for s in starts]))


def eval_windows(loaded, source: str | Path = defaults.EVAL_SOURCE,
                 seqlen: int = defaults.EVAL_SEQLEN,
                 n_windows: int | None = defaults.EVAL_WINDOWS) -> torch.Tensor:
    """Consecutive non-overlapping windows of `seqlen` tokens from the start of `source`."""
    check_seqlen_fits(loaded, seqlen)
    stream = token_stream(loaded, source)
    span = seqlen - (1 if loaded.add_bos else 0)
    available = len(stream) // span
    if available < 1:
        raise PrunelabError(f"the text {source} has fewer than {span} tokens",
                            "give a longer text or a smaller --seqlen")
    if n_windows is None:
        n_windows = available
    if n_windows > available:
        raise PrunelabError(
            f"the text {source} holds only {available} windows of {seqlen} tokens, not {n_windows}",
            f"use --windows {available} or fewer",
        )
    return _prepend_bos(loaded, stream[: n_windows * span].view(n_windows, span))


def tokens_digest(tokens: torch.Tensor) -> str:
    """A short hash of token ids, recorded beside results so calibration is reproducible."""
    return hashlib.sha256(tokens.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
