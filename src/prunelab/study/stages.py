"""Stages of a study point: what is done to a model, in order, before it is evaluated.

A compression point is a short chain of stages (prune; later quantize, fine-tune) plus the
value swept on the plot's x-axis. Each stage kind is one registered class: a typed config
that a recipe's `stages:` entry maps onto, a label, and whether it draws calibration data.
The study's key and arm label are made from the stage configs alone, so every field that
decides a result is in both. Running a stage on a real model is the backend's business
(`prunelab.study.backend`), so this module imports nothing heavy.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CalibrationPatch(BaseModel):
    """Fields of the recipe's `calibration` that one stage changes (the rest are inherited)."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = None
    n_samples: int | None = Field(None, ge=1)
    seqlen: int | None = Field(None, ge=8)


class Stage(BaseModel):
    """A stage's config. Subclasses set `kind` and register with `register_stage`."""

    model_config = ConfigDict(extra="forbid")
    kind: str

    # The numeric fields that measure *how much* is removed: sweeping one of these gives the
    # study's "amount of compression" axis (thresholds and verdicts are read along it).
    amount_fields: ClassVar[tuple[str, ...]] = ()

    def label(self, omit: frozenset[str] = frozenset()) -> str:
        raise NotImplementedError

    def problems(self, calibration: dict | None) -> list[str]:
        """What is wrong with this config, given the calibration it would draw from, that the
        schema cannot see (an unknown method, a missing calibration file)."""
        return []

    def needs_calibration(self) -> bool:
        return False

    def seeded(self) -> bool:
        """Whether the stage's result depends on the point's seed even without calibration
        data (fine-tuning's data order): then the recipe's seeds repeat the point."""
        return False

    def bind(self, recipe) -> Stage:
        """This stage with fields the recipe decides filled in (default: unchanged)."""
        return self

    def cost_terms(self, calibration: dict | None, per_token: float,
                   params: float) -> list[float]:
        """Estimated seconds of this stage on a model of `params` parameters, as terms added
        in order (`prunelab.study.estimate`); default: its method's declared cost."""
        from prunelab.study.estimate import method_terms

        return method_terms(getattr(self, "method", self.kind), getattr(self, "options", {}),
                            calibration, per_token, params / 1e6)

    def run(self, loaded, calibration: dict | None, seed: int | None) -> dict:
        """Apply this stage to `loaded` (a `prunelab.LoadedModel`) in place; return a record."""
        raise NotImplementedError


STAGE_KINDS: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Register a stage kind; a kind taken twice is refused."""
    from prunelab.errors import PrunelabError

    kind = cls.model_fields["kind"].default
    if kind in STAGE_KINDS:
        raise PrunelabError(f"a stage kind {kind!r} is already registered",
                            "give the new stage another kind")
    STAGE_KINDS[kind] = cls
    return cls


def parse_stage(data: Any) -> Stage:
    """A stage config from recipe data; `kind` defaults to prune.

    Raises ValueError (unknown kind) or pydantic's ValidationError (bad fields)."""
    if not isinstance(data, dict):
        raise ValueError("a stage must be a mapping with a kind (e.g. kind: prune)")
    kind = data.get("kind", "prune")
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}: use one of {', '.join(STAGE_KINDS)}")
    return STAGE_KINDS[kind].model_validate({**data, "kind": kind})


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@register_stage
class PruneStage(Stage):
    """One registered pruning method at a sparsity or an N:M pattern."""

    kind: Literal["prune"] = "prune"
    method: str
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    pattern: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    calibration: CalibrationPatch | None = None

    amount_fields: ClassVar[tuple[str, ...]] = ("sparsity",)

    @model_validator(mode="after")
    def _pattern_fixes_sparsity(self) -> PruneStage:
        if self.pattern is not None:
            n, sep, m = str(self.pattern).strip().partition(":")
            if not (sep and n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
                raise ValueError(f"pattern {self.pattern!r} is not N:M with 0 < N < M "
                                 "(e.g. 2:4 keeps 2 of every 4 weights)")
            implied = round(1 - int(n) / int(m), 6)
            if self.sparsity is not None and abs(self.sparsity - implied) > 1e-6:
                raise ValueError(f"sparsity {self.sparsity} disagrees with pattern {self.pattern} "
                                 f"(which removes {implied}); give one of them")
            self.pattern = f"{int(n)}:{int(m)}"
            self.sparsity = implied
        return self

    def problems(self, calibration):
        from prunelab.compress import check_prune_args
        from prunelab.errors import PrunelabError

        try:
            check_prune_args(self.method, None if self.pattern else self.sparsity, self.pattern,
                             _calibration_config(calibration, None), self.options)
        except PrunelabError as exc:
            return [str(exc)]
        return []

    def needs_calibration(self) -> bool:
        from prunelab.methods.base import make_method

        options = {k: v for k, v in self.options.items() if k != "only"}  # the engine's
        return make_method(self.method, options).needs_calibration

    def run(self, loaded, calibration, seed):
        from prunelab.compress import prune

        result = prune(loaded, self.method, None if self.pattern else self.sparsity,
                       pattern=self.pattern, calibration=_calibration_config(calibration, seed),
                       progress=False, **self.options)
        record = result.to_dict()
        record.pop("layers", None)  # per-layer detail is in the pruning engine's own output
        return record

    def label(self, omit: frozenset[str] = frozenset()) -> str:
        parts = [self.method]
        if self.pattern:
            # Along a sparsity axis, N:M patterns with one M form one arm ("wanda N:4").
            parts.append(f"N:{self.pattern.split(':')[1]}" if "sparsity" in omit else self.pattern)
        elif self.sparsity is not None and "sparsity" not in omit:
            parts.append(f"{self.sparsity:.0%}")
        parts += [f"{k}={_number(v)}" for k, v in sorted(self.options.items())
                  if f"options.{k}" not in omit]
        if self.calibration is not None:
            parts += [f"calibration.{k}={_number(v)}"
                      for k, v in self.calibration.model_dump(exclude_none=True).items()
                      if f"calibration.{k}" not in omit]
        return " ".join(parts)


def _calibration_config(calibration: dict | None, seed: int | None):
    """The engine's CalibrationConfig from a study's resolved calibration (None: none); the
    window seed is the study seed, never a field of the recipe's section."""
    if calibration is None:
        return None
    from prunelab.data.calibration import calibration_config

    return calibration_config({k: calibration[k] for k in ("source", "n_samples", "seqlen")},
                              seed)


# Where a transfer stage on an encoder leaves its setting (in `loaded.info`): the encoder track
# fine-tunes per task level when each is evaluated (`PrunelabBackend.evaluate`), not here.
DEFERRED_TRANSFER = "deferred_transfer"


@register_stage
class TransferStage(Stage):
    """Fine-tuning in one of the Junk DNA paper's transfer settings (`prunelab.recover`):
    the mask comes from a pruning method at a sparsity or pattern (none for `dense`), and the
    model trains on the named tasks' items that the study's evaluation does not test."""

    kind: Literal["transfer"] = "transfer"
    setting: Literal["dense", "sparse", "sparse-to-dense", "freeze"]
    method: str | None = None
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    pattern: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    calibration: CalibrationPatch | None = None
    # The tasks whose held-out items the model trains on (decoder track; the encoder track
    # trains on each `finetune` level's own split and leaves this out).
    train_on: list[str] = Field(default_factory=list)
    trainable: list[str] = Field(default_factory=lambda: ["all"])
    lora_rank: int | None = Field(None, ge=1)
    masked_lora: bool = False
    train: dict[str, Any] = Field(default_factory=dict)  # `prunelab.recover.TrainConfig` fields
    max_items: int | None = Field(None, ge=1)
    # The evaluation's item choice, so training never sees a tested item (from the recipe's
    # `eval` when left out).
    holdout_limit: int | None = None
    holdout_seed: int | None = None

    amount_fields: ClassVar[tuple[str, ...]] = ("sparsity",)

    @model_validator(mode="after")
    def _mask_source(self) -> TransferStage:
        if self.setting != "dense" and self.method is None:
            raise ValueError(f"setting {self.setting} needs a pruning method for its mask")
        if self.setting == "dense":
            if self.method or self.sparsity or self.pattern:
                raise ValueError("setting dense prunes nothing: leave out method, sparsity and "
                                 "pattern")
            self.sparsity = 0.0  # its place on the sparsity axis: the 100% of dense transfer
        return self

    def _prune_stage(self) -> PruneStage | None:
        if self.setting == "dense":
            return None
        return PruneStage(method=self.method, sparsity=self.sparsity, pattern=self.pattern,
                          options=self.options, calibration=self.calibration)

    def train_config(self, seed: int | None):
        from prunelab.recover.loop import TrainConfig

        fields = dict(self.train)
        if seed is not None:
            fields["seed"] = seed
        return TrainConfig(**fields)

    def problems(self, calibration):
        from prunelab.errors import PrunelabError
        from prunelab.recover.perp import check_subsets

        out = self._prune_stage().problems(calibration) if self._prune_stage() else []
        try:
            self.train_config(None).validate()
            check_subsets(self.trainable)
        except TypeError as exc:
            out.append(f"train: {exc}")
        except PrunelabError as exc:
            out.append(str(exc))
        if self.masked_lora and not self.lora_rank:
            out.append("masked_lora needs a lora_rank")
        return out

    def needs_calibration(self) -> bool:
        prune = self._prune_stage()
        return prune is not None and prune.needs_calibration()

    def seeded(self) -> bool:
        return True

    def cost_terms(self, calibration, per_token, params) -> list[float]:
        """Its training (steps times a step's forward, backward and optimiser update), then
        the pruning that makes its mask."""
        return [self.training_seconds(per_token, params),
                *super().cost_terms(calibration, per_token, params)]

    def training_seconds(self, per_token: float, params: float) -> float:
        """Steps (max_steps, else epochs over the training items the evaluation leaves) times
        one step's seconds."""
        from prunelab.study.estimate import train_step_seconds
        from prunelab.tasks.registry import get_tasks

        if not self.train_on:  # the encoder track trains when its levels are evaluated
            return 0.0
        train = self.train_config(None)
        steps = train.max_steps
        if steps is None:
            items = self.max_items
            if items is None:
                items = 0
                for task in get_tasks(list(self.train_on)):
                    left = task.size - (self.holdout_limit or 0)
                    items += max(left, 0)
            steps = train.epochs * -(-items // train.batch_size)
        return steps * train_step_seconds(train.batch_size, per_token, params)

    def bind(self, recipe) -> TransferStage:
        if self.holdout_limit is not None:
            return self
        return self.model_copy(update={"holdout_limit": recipe.eval.limit,
                                       "holdout_seed": recipe.eval.seed})

    def run(self, loaded, calibration, seed):
        from prunelab.recover.encoder import is_encoder
        from prunelab.recover.run import TransferPlan, transfer

        if is_encoder(loaded.model):
            # The encoder track trains a new head per task level, so fine-tuning happens when
            # each `finetune` level is evaluated; here the setting is only recorded.
            loaded.info[DEFERRED_TRANSFER] = {"setting": self.setting, "method": self.method,
                                              "sparsity": self.sparsity, "seed": seed}
            return {"setting": self.setting, "method": self.method, "sparsity": self.sparsity,
                    "seed": seed, "deferred": "fine-tuned per task level when it is evaluated"}
        plan = TransferPlan(self.setting, self.method, self.sparsity, self.pattern,
                            dict(self.options), list(self.train_on), list(self.trainable),
                            self.lora_rank, self.masked_lora, self.train_config(seed),
                            self.max_items)
        return transfer(loaded, plan, calibration=_calibration_config(calibration, seed),
                        eval_limit=self.holdout_limit, eval_seed=self.holdout_seed or 0,
                        checkpoint=self.checkpoint_path(loaded.name, calibration, seed),
                        progress=False)

    def checkpoint_path(self, model: str, calibration: dict | None, seed: int | None):
        """Where a killed study's fine-tuning resumes from: one file per model, stage config,
        calibration and seed, in the cache (removed when the training ends)."""
        import hashlib
        import json

        from prunelab.paths import cache_dir

        key = json.dumps([model, self.model_dump(mode="json"), calibration, seed],
                         sort_keys=True, default=str)
        return cache_dir("checkpoints") / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"

    def label(self, omit: frozenset[str] = frozenset()) -> str:
        prune = self._prune_stage()
        parts = [f"{self.setting} transfer"]
        if prune is not None:
            parts.append(prune.label(omit))
        elif "sparsity" not in omit:
            parts.append("0%")
        parts.append("on " + ",".join(self.train_on))
        if self.trainable != ["all"]:
            parts.append("training " + "+".join(self.trainable))
        if self.lora_rank:
            parts.append(f"{'mask' if self.masked_lora else ''}lora r={self.lora_rank}")
        parts += [f"{k}={_number(v)}" for k, v in sorted(self.train.items())
                  if f"train.{k}" not in omit and k != "seed"]
        return " ".join(parts)


def chain_label(stages: list[Stage], omit: dict[int, frozenset[str]] | None = None) -> str:
    omit = omit or {}
    return " → ".join(s.label(omit.get(i, frozenset())) for i, s in enumerate(stages))
