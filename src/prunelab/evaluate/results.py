"""Per-example results, their per-level summary with 95% intervals, and model-facing difficulty."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.evaluate.metrics import get_metric
from prunelab.paths import atomic_file


@dataclass
class ExampleResult:
    """Everything known about one example's evaluation, so results can be audited and
    difficulty measured per example.

    correct: 1/0 for accuracy-like metrics, the F1 for "f1", None for rolling tasks.
    margin ("mc"): the correct choice's decision score minus the best other choice's
    (mean log-prob per token); > 0 exactly when the item is answered correctly.
    choice_scores / choice_scores_sum: mean-per-token and summed log-prob of each choice.
    gold_logprob ("generate"): mean log-prob per token of the first target answer, a
    continuous difficulty signal for generation tasks.
    """

    task: str
    family: str
    axis: str
    level: Any
    level_rank: int
    example_id: str
    metric: str
    prediction: Any = None
    target: Any = None
    correct: float | None = None
    margin: float | None = None
    choices: list[str] | None = None  # "mc": the options, in the order of the scores below
    choice_scores: list[float] | None = None
    choice_scores_sum: list[float] | None = None
    choice_tokens: list[int] | None = None
    chance: float | None = None  # this example's expected score under random guessing
    mc_score: str | None = None  # "mean" or "sum": which of the two decided the prediction
    scores: dict[str, float] = field(default_factory=dict)  # other metrics (em, f1, contains)
    gold_logprob: float | None = None
    loglik: float | None = None  # rolling: summed log-prob (nats)
    n_tokens: int | None = None  # rolling: tokens scored
    n_bytes: int | None = None  # rolling: UTF-8 bytes of the text
    prompt_tokens: int | None = None
    shots: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExampleResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class EvalResults:
    examples: list[ExampleResult]
    meta: dict = field(default_factory=dict)

    def summary(self) -> list[dict]:
        """One row per task, in order of first appearance: score with a 95% interval.

        Intervals: Wilson for 0/1 metrics, percentile bootstrap over items for F1 and for
        bits per byte. at_chance: the interval reaches chance (down to it; for bits per byte,
        up to a uniform guess over the vocabulary), so the level cannot be told apart from
        guessing (and tells nothing about what pruning removes).
        """
        groups: dict[str, list[ExampleResult]] = {}
        for ex in self.examples:
            groups.setdefault(ex.task, []).append(ex)
        return [_summarise(rows) for rows in groups.values()]

    def to_jsonl(self, path: str | Path) -> None:
        """One JSON object per example, written atomically (no half-written file)."""
        with atomic_file(Path(path)) as handle:
            for ex in self.examples:
                handle.write(json.dumps(ex.to_dict(), ensure_ascii=False, default=str) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | Path) -> EvalResults:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls([ExampleResult.from_dict(json.loads(line)) for line in lines if line.strip()])

    def table(self) -> str:
        return format_table(self.summary())


def _summarise(rows: list[ExampleResult]) -> dict:
    first = rows[0]
    metric = get_metric(first.metric)
    pairs = [metric.example(r.to_dict()) for r in rows]
    values = np.array([v for v, _ in pairs], dtype=float)
    weights = np.array([w for _, w in pairs], dtype=float)
    score, low, high = metric.summarise(values, weights, first.seed)
    chance = None
    if metric.chance_applies:  # weighted as the score is (bits per byte: by bytes)
        known = [(r.chance, w) for r, w in zip(rows, weights) if r.chance is not None]
        chance = (float(sum(c * w for c, w in known) / sum(w for _, w in known))
                  if known else None)
    reaches = chance is not None and (low <= chance if metric.higher_is_better
                                      else high >= chance)
    return {
        "task": first.task, "family": first.family, "axis": first.axis, "level": first.level,
        "level_rank": first.level_rank, "n": len(rows), "metric": first.metric, "score": score,
        "ci_low": float(low), "ci_high": float(high), "chance": chance,
        "at_chance": bool(chance is not None and reaches),
    }


def format_table(summary: list[dict]) -> str:
    """A plain-text table of a summary, one line per task level."""
    head = f"{'task':<30} {'axis':<12} {'n':>5} {'metric':<14} {'score':>7}  {'95% CI':<15} {'chance':>6}"
    lines = [head, "-" * len(head)]
    for row in summary:
        chance = "" if row["chance"] is None else f"{row['chance']:.3f}"
        flag = "  at chance" if row["at_chance"] else ""
        lines.append(
            f"{row['task']:<30} {row['axis']:<12} {row['n']:>5} {row['metric']:<14} "
            f"{row['score']:>7.3f}  [{row['ci_low']:.3f}, {row['ci_high']:.3f}] {chance:>6}{flag}")
    return "\n".join(lines)


def difficulty_signal(ex: ExampleResult) -> float | None:
    """How easy an example was for a model: the MC margin, else the gold answer's log-prob."""
    return ex.margin if ex.margin is not None else ex.gold_logprob


def margin_bins(dense: EvalResults, n_bins: int = 4) -> dict[tuple[str, str], int]:
    """Quantile bin of each (task, example_id) by the dense model's own margin, per task.

    Bin 0 holds the examples the dense model found hardest (lowest margin), bin n_bins-1
    the easiest. Ties are split by example order so bins stay (nearly) equal in size.
    """
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    by_task: dict[str, list[ExampleResult]] = {}
    for ex in dense.examples:
        if difficulty_signal(ex) is not None:
            by_task.setdefault(ex.task, []).append(ex)
    bins = {}
    for task, rows in by_task.items():
        ranked = sorted(rows, key=difficulty_signal)
        for position, ex in enumerate(ranked):
            bins[(task, ex.example_id)] = min(n_bins - 1, position * n_bins // len(ranked))
    return bins


def by_dense_margin(results: EvalResults, dense: EvalResults, n_bins: int = 4) -> EvalResults:
    """Model-facing difficulty: re-level `results` by the dense model's margin quantile.

    Every example of `results` whose (task, example_id) the dense run scored is kept, with
    family "<task>@margin", axis "dense_margin", level "q1".."qN" (q1 = the dense model's
    lowest margins) and level_rank so that higher = harder. Pass the dense results as both
    arguments to see the dense model's own profile; pass a pruned model's results to see
    which examples pruning loses first.
    """
    bins = margin_bins(dense, n_bins)
    relabelled = []
    for ex in results.examples:
        b = bins.get((ex.task, ex.example_id))
        if b is None:
            continue
        data = ex.to_dict()
        data.update(task=f"{ex.task}@margin:q{b + 1}", family=f"{ex.task}@margin",
                    axis="dense_margin", level=f"q{b + 1}", level_rank=n_bins - 1 - b)
        relabelled.append(ExampleResult.from_dict(data))
    relabelled.sort(key=lambda e: (e.family, -e.level_rank))
    return EvalResults(relabelled, meta={**results.meta, "binned_by": "dense margin",
                                         "n_bins": n_bins})
