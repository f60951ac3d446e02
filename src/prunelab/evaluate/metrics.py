"""Answer matching and confidence intervals. Pure functions, no model."""

from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, targets: tuple[str, ...] | list[str]) -> float:
    pred = normalize(prediction)
    return float(any(pred == normalize(t) for t in targets))


def token_f1(prediction: str, targets: tuple[str, ...] | list[str]) -> float:
    """Best token-overlap F1 against any target (SQuAD's definition)."""
    pred = normalize(prediction).split()
    best = 0.0
    for target in targets:
        gold = normalize(target).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold or common == 0:
            best = max(best, float(pred == gold))
            continue
        precision, recall = common / len(pred), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_match(prediction: str, targets: tuple[str, ...] | list[str]) -> float:
    """Junk DNA's lenient QA match: either string contains the other after normalisation.

    An empty prediction matches nothing (the empty string is contained in every answer).
    """
    pred = normalize(prediction)
    if not pred:
        return 0.0
    for target in targets:
        gold = normalize(target)
        if gold and (gold in pred or pred in gold):
            return 1.0
    return 0.0


GENERATION_SCORERS = {"contains": contains_match, "exact_match": exact_match, "f1": token_f1}


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip() if text.strip() else ""


def wilson(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (good near 0 and 1, unlike Wald)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(values: np.ndarray, weights: np.ndarray | None = None, *, n_boot: int = 2000,
              seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of a mean, or of a ratio sum(values)/sum(weights), over items."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    if weights is None:
        stats = values[idx].mean(axis=1)
    else:
        weights = np.asarray(weights, dtype=float)
        stats = values[idx].sum(axis=1) / weights[idx].sum(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return (float(low), float(high))
