"""Text corpora for calibration and perplexity, and how they are cut into token windows.

Evaluation text and calibration text are deliberately different: perplexity is measured on
Wikipedia paragraphs of the SQuAD v1.1 dev set (our WikiText stand-in, since WikiText is not
reachable here) while calibration defaults to the "new_wiki" paragraphs of SQuADShifts,
written later and about other articles. Any local UTF-8 text file works as either.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

from prunelab.data.sources import (DEFAULT_CALIBRATION_SOURCE,  # noqa: F401  (re-exported)
                                   DEFAULT_EVAL_SOURCE, TEXT_PROVIDERS, TEXT_SOURCES,
                                   CalibrationConfig)
from prunelab.errors import PrunelabError


def load_text(source: str | Path) -> str:
    """The whole text of a named corpus or a local file; paragraphs joined by blank lines."""
    name = str(source)
    for prefix, provide in TEXT_PROVIDERS.items():
        if name.startswith(prefix):
            return provide(name)
    if name in TEXT_SOURCES:
        from prunelab.data.bigbench import task_dir

        folder, filename, _ = TEXT_SOURCES[name]
        data = json.loads((task_dir(folder) / filename).read_text(encoding="utf-8"))
        paragraphs = [p["context"].strip() for article in data["data"]
                      for p in article["paragraphs"]]
        return "\n\n".join(paragraphs)
    path = Path(name).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PrunelabError(f"{path} is not UTF-8 text", "pass a plain UTF-8 text file") from None
    raise PrunelabError(
        f"unknown text source {name!r}",
        f"use one of {', '.join(TEXT_SOURCES)} or the path of a local text file",
    )


_TOKEN_CACHE: dict[tuple[str, int], torch.Tensor] = {}


def token_stream(loaded, source: str | Path) -> torch.Tensor:
    """All tokens of a text source (no special tokens), cached per tokenizer for the process."""
    key = (str(source), id(loaded.tokenizer))
    if key not in _TOKEN_CACHE:
        ids = loaded.encode(load_text(source))
        _TOKEN_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[key]


def _check_seqlen(loaded, seqlen: int) -> None:
    if seqlen < 2:
        raise PrunelabError(f"sequence length {seqlen} is too short", "use --seqlen 2 or more")
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
    _check_seqlen(loaded, config.seqlen)
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


def eval_windows(loaded, source: str | Path = DEFAULT_EVAL_SOURCE, seqlen: int = 512,
                 n_windows: int | None = 32) -> torch.Tensor:
    """Consecutive non-overlapping windows of `seqlen` tokens from the start of `source`."""
    _check_seqlen(loaded, seqlen)
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
