"""What a task is: items (the data), a prompt template, and its place on a difficulty axis.

A task is declarative: a loader that returns `Item`s, a `Template` that turns an item (and
seeded demonstrations) into a prompt and continuations, and metadata (family, axis, level,
level_rank, licence, source). The evaluation engine never looks inside a family's data files.

Three kinds of task:
- "mc":       log-likelihood multiple choice; `Item.choices` and `Item.gold` (correct indices).
- "generate": greedy generation, first line, scored against `Item.targets`.
- "rolling":  log-likelihood of `Item.text` (perplexity / bits per byte).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

from prunelab.errors import PrunelabError

# "finetune": a classification level scored by fine-tuning an encoder on its training split
# (the transfer study's encoder track, `prunelab.recover.encoder`), not by prompting.
KINDS = ("mc", "generate", "rolling", "finetune")
PROMPTED_KINDS = KINDS[:3]
# Metric of each generation scorer, see prunelab.evaluate.metrics.
GENERATE_METRICS = ("contains", "exact_match", "f1")


@dataclass(frozen=True)
class Item:
    """One test example. `id` is unique within the task and stable across its levels."""

    id: str
    input: str = ""
    choices: tuple[str, ...] = ()
    gold: tuple[int, ...] = ()  # indices of the correct choices ("mc")
    targets: tuple[str, ...] = ()  # acceptable answers ("generate"; also demo answers)
    text: str = ""  # the text to score ("rolling")
    context: str = ""  # optional extra text the template may place (e.g. a passage)

    @property
    def answer(self) -> str:
        """The answer shown when this item is used as a demonstration."""
        if self.gold:
            return self.choices[self.gold[0]]
        return self.targets[0] if self.targets else ""


@dataclass(frozen=True)
class Template:
    """How an item becomes text. `{input}` and `{context}` are filled from the item.

    prompt = prefix + demo_1 + separator + ... + demo_k + separator + query
    where demo = query + answer_format(answer), query = input_format(item).
    Trailing whitespace of the prompt moves to the front of the continuation, so that a
    BPE tokenizer sees " 109" as it would in running text (and as lm-eval does).
    """

    input_format: str = "Q: {input}\nA:"
    answer_format: str = " {answer}"
    prefix: str = ""
    separator: str = "\n\n"

    def query(self, item: Item) -> str:
        return self.input_format.format(input=item.input, context=item.context)

    def demo(self, item: Item) -> str:
        return self.query(item) + self.answer_format.format(answer=item.answer)

    def prompt(self, item: Item, demos: list[Item]) -> str:
        parts = [self.demo(d) for d in demos] + [self.query(item)]
        return self.prefix + self.separator.join(parts)

    def continuation(self, answer: str) -> str:
        return self.answer_format.format(answer=answer)


def split_whitespace(prompt: str, continuation: str) -> tuple[str, str]:
    """Move trailing spaces of the prompt onto the continuation ("... the " + "x" -> "... the", " x")."""
    stripped = prompt.rstrip(" ")
    return stripped, prompt[len(stripped):] + continuation


def stable_hash(*parts: Any) -> int:
    """A hash that does not change between runs or Python versions (unlike `hash`)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class Task:
    """One level of one family. `name` is "family:level"; `level_rank` higher = harder."""

    name: str
    family: str
    axis: str
    level: Any
    level_rank: int
    kind: str
    loader: Callable[[], list[Item]] = field(repr=False)
    template: Template = field(default_factory=Template)
    metric: str = "accuracy"
    shots: int = 0
    max_new_tokens: int = 16
    # How this task decides multiple choice when the caller does not say: "mean" log-prob
    # per token (numbers split into digits), or "sum" (one-word labels of unequal length,
    # where the mean favours the label with more, easily predicted, continuation tokens).
    mc_score: str = "mean"
    license: str = ""
    source: str = ""
    description: str = ""
    # Demonstrations come from this pool (default: the task's own items, never the test item).
    demo_loader: Callable[[], list[Item]] | None = field(default=None, repr=False)
    # Items sharing this key are one "question" in another guise (e.g. same facts as MC and
    # as generation); used to pick the same items at every level of a family.
    selection_key: str = ""
    # Every level of this family asks the same items (by id) in another guise: more options,
    # fewer demonstrations, another language. The study then resamples an item at all levels
    # together, so the comparison between levels is paired item by item.
    paired_levels: bool = False
    # The items come from BIG-bench, which cannot always be had (`prunelab.data.bigbench`):
    # listings mark such tasks, and loading them refuses in one line where it is missing.
    needs_bigbench: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PrunelabError(f"task {self.name}: kind {self.kind!r} is not one of {KINDS}",
                                "use mc, generate or rolling")

    @cached_property
    def items(self) -> list[Item]:
        items = list(self.loader())
        if not items:
            raise PrunelabError(f"task {self.name} has no items", "check its data file")
        return items

    @cached_property
    def demo_pool(self) -> list[Item]:
        return list(self.demo_loader()) if self.demo_loader else self.items

    @property
    def size(self) -> int:
        return len(self.items)

    @cached_property
    def content_digest(self) -> str:
        """A hash of everything in the task that decides a result: items, demonstrations,
        template and scoring. A study keys its points by it, so an edited task file is never
        mistaken for the one already evaluated."""
        content = {"kind": self.kind, "metric": self.metric, "shots": self.shots,
                   "max_new_tokens": self.max_new_tokens, "mc_score": self.mc_score,
                   "selection_key": self.selection_key, "template": asdict(self.template),
                   **({"paired_levels": True} if self.paired_levels else {}),
                   "items": [asdict(i) for i in self.items],
                   "demos": None if self.demo_loader is None else
                   [asdict(i) for i in self.demo_pool]}
        text = json.dumps(content, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def chance(self) -> float | None:
        return chance_of(self.kind, self.items)

    def select(self, limit: int | None, seed: int) -> list[Item]:
        """The test items: all, or `limit` of them chosen by a seeded hash of their ids.

        Ranking by a hash of (seed, family, id) rather than by position means every level of a
        family that shares item ids (languages of multiemo, shots, options) tests the same items.
        """
        items = self.items
        if limit is None:
            return list(items)
        if limit <= 0:
            raise PrunelabError(f"limit must be positive, got {limit}", "pass --limit 1 or more")
        if limit > len(items):
            raise PrunelabError(
                f"limit {limit} is larger than task {self.name} ({len(items)} items)",
                f"pass --limit {len(items)} or less, or no limit",
            )
        key = self.selection_key or self.family
        ranked = sorted(items, key=lambda it: stable_hash(seed, key, it.id))
        return ranked[:limit]

    def demos(self, item: Item, seed: int) -> list[Item]:
        """`shots` demonstrations for `item`, seeded per item; never the item itself.

        Items whose input equals the test item's input are excluded too (logical_deduction
        asks several questions about one paragraph). The order is a seeded permutation, so a
        task with k shots uses the first k of the demos a task with more shots would use.
        """
        if self.shots == 0:
            return []
        pool = [d for d in self.demo_pool
                if d.id != item.id and d.input != item.input and d.answer]
        if len(pool) < self.shots:
            raise PrunelabError(f"task {self.name} wants {self.shots} demonstrations but has "
                                f"{len(pool)} other items", "lower its shots")
        rng = random.Random(stable_hash(seed, self.selection_key or self.family, "demos", item.id))
        # Sampling indices (not shuffling the pool) keeps this cheap for 50k-item pools.
        order = rng.sample(range(len(pool)), self.shots)
        return [pool[i] for i in order]

    def prompt(self, item: Item, seed: int) -> str:
        return self.template.prompt(item, self.demos(item, seed))

    def with_(self, **changes: Any) -> Task:
        """A copy with some fields changed (data cache not shared; loaders are)."""
        return replace(self, **changes)


def chance_of(kind: str, items: list[Item]) -> float | None:
    """Expected score of uniform random guessing: mean of |gold|/|choices| for MC."""
    if kind in ("mc", "finetune"):
        return sum(len(it.gold) / len(it.choices) for it in items) / len(items)
    if kind == "generate":
        return 0.0
    return None
