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


# -- the registry of metrics ----------------------------------------------------------------
#
# What a task kind yields per example, how examples aggregate into a score with an interval,
# whether a chance level applies, and which direction is better. The evaluation summary, the
# study's store and its statistics all read these entries, so a new metric (divergence from
# the dense model, refusal rate) is one registration here.

LN2 = math.log(2)


class Metric:
    name: str = ""
    higher_is_better: bool = True
    chance_applies: bool = True
    description: str = ""
    # Whether each item scores 0 or 1 (a level's score is then a binomial share, and a dry
    # run's power analysis can assume its variance from the score alone).
    binary: bool = False

    def example(self, record: dict) -> tuple[float | None, float]:
        """(value, weight) of one example record; the score is sum(value) / sum(weight)."""
        raise NotImplementedError

    def chance(self, record: dict) -> float | None:
        """What guessing would score on this example (None where no chance applies)."""
        return record.get("chance") if self.chance_applies else None

    def example_score(self, value: float, weight: float) -> float:
        """One example's score in the metric's own unit (what `chance` is compared with)."""
        return value / weight

    def relative(self, pruned, dense):
        """Pruned performance as a fraction of dense (1 = nothing lost), elementwise on
        scores or arrays of bootstrap scores."""
        return pruned / dense if self.higher_is_better else dense / pruned

    def score(self, values: np.ndarray, weights: np.ndarray) -> float:
        """The level's score in the metric's own unit, from its items' values and weights."""
        return float(values.sum() / weights.sum())

    def summarise(self, values: np.ndarray, weights: np.ndarray,
                  seed: int) -> tuple[float, float, float]:
        """(score, 95% low, 95% high) over the examples of one task level."""
        raise NotImplementedError


class ShareCorrect(Metric):
    """The mean per-example credit: 0/1 (accuracy, matches) or a fraction (F1)."""

    def __init__(self, name: str, description: str, binary: bool = True):
        self.name, self.description, self.binary = name, description, binary

    def example(self, record):
        return record.get("correct"), 1.0

    def summarise(self, values, weights, seed):
        score = float(values.mean())
        if np.isin(values, (0.0, 1.0)).all():
            low, high = wilson(values.sum(), len(values))  # exact near 0 and 1
        else:
            low, high = bootstrap(values, seed=seed)
        return score, low, high


class BitsPerByte(Metric):
    """Negative log-likelihood of a text per UTF-8 byte, in bits; lower is better. Its chance
    is what a model that knows nothing scores: every token equally likely, log2(vocabulary)
    bits per token, per byte of the text; a level at or above it tells nothing of pruning."""

    name = "bits_per_byte"
    higher_is_better = False
    description = "bits per byte of the scored text (lower is better)"

    def example(self, record):
        return -float(record["loglik"]), float(record["n_bytes"])  # nats, bytes

    def example_score(self, value, weight):
        return value / weight / LN2

    def score(self, values, weights):
        return float(values.sum() / weights.sum() / LN2)  # values are nats

    def summarise(self, values, weights, seed):
        score = self.score(values, weights)
        low, high = (v / LN2 for v in bootstrap(values, weights, seed=seed))
        return score, low, high


class GoldChoiceProbability(Metric):
    """Multiple choice: the probability of the gold choice(s), normalised over the choices,
    from the scores that decide the answer (mean or summed log-probability per choice).
    Continuous where accuracy is 0/1, so tens of items carry information; chance is 1/k."""

    name = "gold_prob"
    description = "probability of the gold choice, normalised over the choices"

    def example(self, record):
        scores = record.get("choice_scores_sum" if record.get("mc_score") == "sum"
                            else "choice_scores")
        gold = _gold_indices(record)
        if not scores or not gold:
            return None, 1.0
        logits = np.asarray(scores, float)
        probs = np.exp(logits - logits.max())
        return float(probs[gold].sum() / probs.sum()), 1.0

    def chance(self, record):
        choices = record.get("choices") or []
        return len(_gold_indices(record)) / len(choices) if choices else None

    def summarise(self, values, weights, seed):
        return (float(values.mean()), *bootstrap(values, seed=seed))


class GoldLogProb(Metric):
    """Generation: the gold answer's mean log-probability per token (higher is better). Its
    relative performance is the ratio of per-token probabilities, exp(pruned − dense)."""

    name = "gold_logprob"
    chance_applies = False
    description = "mean log-probability per token of the gold answer"

    def example(self, record):
        value = record.get("gold_logprob")
        return (None if value is None else float(value)), 1.0

    def summarise(self, values, weights, seed):
        return (float(values.mean()), *bootstrap(values, seed=seed))

    def relative(self, pruned, dense):
        return np.exp(pruned - dense)


def _gold_indices(record: dict) -> list[int]:
    choices, target = record.get("choices") or [], record.get("target")
    golds = target if isinstance(target, (list, tuple)) else [target]
    return [i for i, c in enumerate(choices) if c in golds]


# The continuous measure that goes with each kind of task's own metric.
CONTINUOUS = {"mc": "gold_prob", "generate": "gold_logprob", "rolling": "bits_per_byte"}


def continuous_metric(record: dict) -> Metric:
    """The continuous measure for an example record (by what the record holds)."""
    if record.get("choice_scores") is not None:
        return METRICS[CONTINUOUS["mc"]]
    if record.get("loglik") is not None:
        return METRICS[CONTINUOUS["rolling"]]
    if record.get("gold_logprob") is not None:
        return METRICS[CONTINUOUS["generate"]]
    return get_metric(record.get("metric"))


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Register a metric; a name taken twice is refused."""
    if metric.name in METRICS:
        from prunelab.errors import PrunelabError

        raise PrunelabError(f"a metric named {metric.name!r} is already registered",
                            "give the new metric another name")
    METRICS[metric.name] = metric
    return metric


for _metric in (ShareCorrect("accuracy", "share of items answered correctly"),
                ShareCorrect("contains", "share of answers containing a target or contained "
                                         "in one (the Junk DNA paper's lenient match)"),
                ShareCorrect("exact_match", "share of answers equal to a target (normalised)"),
                ShareCorrect("f1", "mean best token-overlap F1 against the targets",
                             binary=False),
                BitsPerByte(), GoldChoiceProbability(), GoldLogProb()):
    register_metric(_metric)


def get_metric(name: str | None) -> Metric:
    if name not in METRICS:
        from prunelab.errors import PrunelabError

        raise PrunelabError(f"unknown metric {name!r}", f"use one of {', '.join(METRICS)}")
    return METRICS[name]
