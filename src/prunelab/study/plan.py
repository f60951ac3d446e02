"""From a recipe to the ordered list of work: compression points × task levels.

Ordering: for each model, the dense model first, then every compression point; each compressed
model is built once and evaluated on every task before the next is built. A *point* is one
(model, compression, seed, task level); its key is a hash of everything that decides its
result (the stage configs with their resolved calibration, the content of the task and of a
local calibration file, the evaluation settings) plus the software versions, so a finished
point is recognised on any later run and never recomputed, and an edited file never is.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.study.axis import axis_for, computed_axis
from prunelab.study.recipe import BITS_PATH, Compression, Recipe, problems_of, yaml_path
from prunelab.study.stages import Stage, chain_label, parse_stage


@dataclass(frozen=True)
class TaskInfo:
    """What the study needs to know of one task level (a `prunelab.tasks.Task` projected)."""

    name: str
    family: str
    axis: str
    level: Any
    level_rank: int
    chance: float | None = None
    size: int | None = None
    kind: str = "mc"
    digest: str | None = None  # of the task's content (items, template, scoring)
    paired: bool = False  # every level of the family asks the same items (Task.paired_levels)


@dataclass(frozen=True, eq=False)
class CompressionPoint:
    """One way of compressing a model: a chain of stages (none: the dense model), the seed of
    its calibration draw, and where it sits in the analysis: its arm and its x value."""

    stages: tuple[Stage, ...] = ()
    calibration: tuple[dict | None, ...] = ()  # per stage: the resolved calibration, or None
    seed: int | None = None  # None when no stage draws calibration data
    arm: str = "dense"
    x: float = 0.0
    x_field: str | None = None  # e.g. "stages[0].sparsity"; None for dense

    @property
    def is_dense(self) -> bool:
        return not self.stages

    @property
    def x_is_amount(self) -> bool:
        """Whether x measures how much is removed (a sparsity), not e.g. a band's position."""
        declared = axis_for(self.x_field).is_amount
        if declared is not None:
            return declared
        match = _STAGE_FIELD.fullmatch(self.x_field or "")
        return bool(match) and match.group(2) in self.stages[int(match.group(1))].amount_fields

    @property
    def label(self) -> str:
        if self.is_dense:
            return "dense"
        return chain_label(list(self.stages)) + (f" seed {self.seed}" if self.seed is not None
                                                 else "")

    @property
    def first(self) -> dict:
        """The first stage's method, sparsity, pattern and options (the store's plain columns)."""
        if self.is_dense:
            return {"method": "dense", "sparsity": 0.0, "pattern": None, "options": {}}
        data = self.stages[0].model_dump()
        return {"method": data.get("method") or data["kind"],
                "sparsity": data.get("sparsity") or 0.0,
                "pattern": data.get("pattern"), "options": data.get("options", {})}

    def config(self) -> dict:
        return {"stages": [{**s.model_dump(mode="json"), "calibration_resolved": c}
                           for s, c in zip(self.stages, self.calibration)],
                "seed": self.seed}

    def _identity(self) -> str:
        # The arm is part of what a point is: one compressed model may sit on two curves
        # (a calibration-size sweep crossing a variant); it is then built once and
        # evaluated for each (see `point_config`).
        return json.dumps([self.config(), self.arm, self.x_field], sort_keys=True, default=str)

    def __eq__(self, other) -> bool:
        return isinstance(other, CompressionPoint) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


DENSE = CompressionPoint()


def describe_compression(config: dict) -> str:
    """The label of a stored compression config (`CompressionPoint.config()`)."""
    stages = [parse_stage({k: v for k, v in s.items() if k != "calibration_resolved"})
              for s in config.get("stages", [])]
    return chain_label(stages) if stages else "dense"

_STAGE_FIELD = re.compile(r"stages\[(\d+)\]\.([A-Za-z_]\w*)(?:\.(.+))?")


@dataclass
class Unit:
    """One compressed model and the task levels to evaluate on it."""

    model: str
    compression: CompressionPoint
    tasks: list[TaskInfo]
    keys: dict[str, str] = field(default_factory=dict)  # task name -> point key
    grid_ids: dict[str, str] = field(default_factory=dict)  # task name -> key without versions
    dtype: str = "fp32"  # the precision the model is loaded and computed in

    @property
    def compression_key(self) -> str:
        return digest({"model": self.model, "compression": self.compression.config()})


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


def point_config(recipe: Recipe, model: str, comp: CompressionPoint, task: TaskInfo) -> dict:
    """Everything that decides a point's result, except software versions."""
    config = {"model": model, "compression": comp.config(), "arm": comp.arm,
              "x_field": comp.x_field, "task": task.name,
              "task_digest": task.digest, "level": task.level,
              "eval": {"limit": recipe.eval.limit, "seed": recipe.eval.seed}}
    if recipe.dtype_of(model) != "fp32":  # fp32 points keep the keys they had before dtypes
        config["dtype"] = recipe.dtype_of(model)
    return config


# -- expanding a recipe's compressions ------------------------------------------------------------


def set_path(data: dict, path: str, value: Any) -> None:
    """Set `stages[1].options.percdamp` (a full path) in raw compression data."""
    match = _STAGE_FIELD.fullmatch(path)
    if not match:
        raise ValueError(f"{path} is not a stage field (write stages[0].sparsity, "
                         "stages[0].options.NAME, stages[0].calibration.n_samples)")
    index, name, rest = int(match.group(1)), match.group(2), match.group(3)
    stages = data["stages"]
    if index >= len(stages):
        raise ValueError(f"{path}: the chain has only {len(stages)} stage(s)")
    node = stages[index]
    keys = [name] + (rest.split(".") if rest else [])
    for key in keys[:-1]:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ValueError(f"{path}: {key} is not a mapping")
    node[keys[-1]] = value


def get_path(stages: list[Stage], path: str) -> Any:
    match = _STAGE_FIELD.fullmatch(path)
    if not match or int(match.group(1)) >= len(stages):
        return None
    node: Any = stages[int(match.group(1))].model_dump()
    for key in [match.group(2)] + (match.group(3).split(".") if match.group(3) else []):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def expand(comp: Compression) -> list[tuple[list[Stage], str]]:
    """Every chain a compression entry stands for, with its x path: the cartesian product of
    its sweeps (the shorthand's sparsities and patterns are one axis). Raises ValueError."""
    axes: list[list[tuple[str, Any]]] = []
    if comp.method is not None and (comp.sparsity or comp.patterns):
        axes.append([("stages[0].sparsity", float(s)) for s in sorted(comp.sparsity)]
                    + [("stages[0].pattern", p.strip()) for p in comp.patterns])
    if comp.method is not None and comp.bits:
        axes.append([(BITS_PATH, int(b)) for b in sorted(comp.bits, reverse=True)])
    for path, values in comp.sweeps().items():
        axes.append([(path, v) for v in values])
    x_path = comp.x_path()
    out = []
    for combo in itertools.product(*axes):
        data = {"stages": copy.deepcopy(comp.base_stages())}
        for path, value in combo:
            set_path(data, path, value)
        stages = [parse_stage(s) for s in data["stages"]]
        out.append((stages, x_path))
    return out


def check_compressions(recipe: Recipe) -> list[tuple[str, str]]:
    """(yaml path, problem) for every compression entry whose sweeps cannot be expanded or
    whose x is not a number at some point."""
    from pydantic import ValidationError

    problems = []
    chains: dict[str, tuple[int, str]] = {}  # each chain: the entry giving it, its label
    for i, comp in enumerate(recipe.compressions):
        try:
            expanded = expand(comp)
            for stages, x_path in expanded:
                x = x_value(stages, x_path)
                if not isinstance(x, (int, float)) or isinstance(x, bool):
                    raise ValueError(f"x = {x_path} is {x!r} at {chain_label(stages)}, not a "
                                     "number: sweep a numeric field, or name it with x:")
            problems += _repeated_chains(i, expanded, chains)
        except ValidationError as exc:
            problems.append((f"compressions[{i}]", "; ".join(
                f"{yaml_path(loc)}: {msg}" if loc else msg for loc, msg in problems_of(exc))))
        except ValueError as exc:
            problems.append((f"compressions[{i}]", str(exc)))
    return problems


def _repeated_chains(i: int, expanded, chains: dict[str, tuple[int, str]]
                     ) -> list[tuple[str, str]]:
    """A compression the grid already holds (the same chain on the same x-axis), which would
    be merged silently into one: named with the entry that first gives it."""
    problems = []
    for stages, x_path in expanded:
        chain = json.dumps([[type(s).__name__, s.model_dump(mode="json")] for s in stages]
                           + [x_path], sort_keys=True, default=str)
        if chain not in chains:
            chains[chain] = (i, chain_label(stages))
            continue
        first, label = chains[chain]
        where = "itself" if first == i else f"compressions[{first}]"
        problems.append((f"compressions[{i}]", f"repeats {label}, already given by {where} "
                         "(it would be computed and shown once): remove the repeat"))
        break  # one line per entry is enough to find it
    return problems


def band_compression(recipe: Recipe) -> Compression | None:
    """The band probe section as an ordinary sweep: magnitude-band over band_low."""
    probe = recipe.band_probe
    if probe is None:
        return None
    return Compression(method="magnitude-band", sparsity=[probe.width],
                       sweep={"options.band_low": [round(s, 6) for s in sorted(probe.starts)]},
                       x="options.band_low")


def resolve_calibration(recipe: Recipe, stage: Stage, uses_calibration) -> dict | None:
    """The calibration a stage draws from: the recipe's, patched by the stage, with a digest of
    a local file's content (None when the stage draws none)."""
    if not uses_calibration(stage):
        return None
    calibration = recipe.calibration.model_dump()
    patch = getattr(stage, "calibration", None)
    if patch is not None:
        calibration.update(patch.model_dump(exclude_none=True))
    if str(calibration["source"]).startswith("task:"):  # items the evaluation does not use
        from prunelab.tasks.calibration import with_held_out

        calibration["source"] = with_held_out(str(calibration["source"]), recipe.eval.limit,
                                              recipe.eval.seed)
    path = Path(str(calibration["source"])).expanduser()
    if path.is_file():
        from prunelab.ppl_cache import file_digest  # remembered while the file is unchanged

        calibration["content_sha256"] = file_digest(path)[:20]
    return calibration


def compressions(recipe: Recipe, uses_calibration) -> list[CompressionPoint]:
    """Every compression point of the recipe, in study order (dense excluded).

    `uses_calibration(stage)` tells whether a stage draws calibration data: chains that draw
    none are deterministic and run once, not once per seed."""
    entries = list(recipe.compressions)
    band = band_compression(recipe)
    if band is not None:
        entries.append(band)
    out: list[CompressionPoint] = []
    labels: dict[str, str] = {}  # arm label -> the arm's identity, to keep labels unique
    for comp in entries:
        for stages, x_path in expand(comp):
            stages = [stage.bind(recipe) for stage in stages]
            x = x_value(stages, x_path)
            x = float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0
            # Along a computed axis (bits removed per weight), what is swept is what moves
            # along x.
            omitted = _swept_paths(comp) if computed_axis(x_path) else [x_path]
            omit: dict[int, frozenset[str]] = {}
            for path in omitted:
                match = _STAGE_FIELD.fullmatch(path)
                if match:
                    index = int(match.group(1))
                    omit[index] = omit.get(index, frozenset()) | {path.split(".", 1)[1]}
            arm = chain_label(stages, omit)
            identity = digest(_without_x(stages, omitted) + [x_path])
            if labels.setdefault(arm, identity) != identity:
                arm = f"{arm} #{identity[:6]}"
            calibration = tuple(resolve_calibration(recipe, s, uses_calibration) for s in stages)
            seeded = any(c is not None for c in calibration) or any(s.seeded() for s in stages)
            seeds = recipe.seeds if seeded else [None]
            for seed in seeds:
                out.append(CompressionPoint(tuple(stages), calibration, seed, arm, x, x_path))
    # A recipe may list the same compression twice; keep the first.
    return list(dict.fromkeys(out))


def x_value(stages: list[Stage], x_path: str) -> Any:
    """The point's x: the swept field's value, or a computed axis's value (study/axis.py)."""
    axis = computed_axis(x_path)
    if axis is not None:
        return axis.compute(stages)
    return get_path(stages, x_path)


def _swept_paths(comp: Compression) -> list[str]:
    paths = list(comp.sweeps())
    if comp.method is not None and (comp.sparsity or comp.patterns):
        paths += ["stages[0].sparsity", "stages[0].pattern"]
    if comp.method is not None and comp.bits:
        paths.append(BITS_PATH)
    return paths


def _without_x(stages: list[Stage], x_paths: str | list[str]) -> list:
    """The chain's data with the x field(s) blanked (what identifies an arm); N:M patterns
    along a sparsity axis keep only their M, as their arm does."""
    data = {"stages": [s.model_dump(mode="json") for s in stages]}
    for x_path in [x_paths] if isinstance(x_paths, str) else x_paths:
        set_path(data, x_path, None)
    for stage in data["stages"]:
        if stage.get("sparsity") is None and stage.get("pattern"):
            stage["pattern"] = "N:" + stage["pattern"].split(":")[1]
    return data["stages"]


def plan(recipe: Recipe, tasks: list[TaskInfo], uses_calibration, versions: dict) -> list[Unit]:
    units = []
    for model in recipe.models:
        for comp in [DENSE] + compressions(recipe, uses_calibration):
            unit = Unit(model, comp, list(tasks), dtype=recipe.dtype_of(model))
            for task in tasks:
                config = point_config(recipe, model, comp, task)
                unit.grid_ids[task.name] = digest(config)
                unit.keys[task.name] = digest({**config, "versions": versions})
            units.append(unit)
    return units


def grid_summary(recipe: Recipe, units: list[Unit]) -> dict:
    n_points = sum(len(u.tasks) for u in units)
    return {"models": len(recipe.models), "compressed_models": len(units),
            "task_levels": len(units[0].tasks) if units else 0, "points": n_points}
