"""A study recipe: YAML mapped one to one onto a typed config.

Every key of the YAML is a field below (unknown keys are refused), so the recipe file is the
whole description of a study. The CLI only overrides fields (`--set path=value`).
Validation collects *every* problem, each with its path in the YAML (`compressions[1].sparsity[2]`),
and raises one `PrunelabError` before any work starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model,
                      field_validator, model_validator)

from prunelab import defaults
from prunelab.data.checks import MIN_SEQLEN
from prunelab.errors import PrunelabError
from prunelab.study.axis import computed_axis
from prunelab.study.measures.divergence import Divergence
from prunelab.study.measures.perplexity import Perplexity
from prunelab.study.measures.physical import PhysicalAccount
from prunelab.study.measures.refusal import Refusal
from prunelab.study.stages import CalibrationPatch, parse_stage

__all__ = ["Analysis", "BandProbe", "Calibration", "Compression", "Divergence", "Evaluation",
           "Perplexity", "Recipe", "Refusal", "load_recipe", "parse_recipe", "recipe_model"]

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
# The precisions a model is loaded and computed in (`prunelab.checks.DTYPES`).
DType = Literal["fp32", "bf16", "fp16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Compression(_Strict):
    """One arm family of the grid: a chain of stages, swept over one or more of its fields.

    Shorthand for one prune stage: `method`, `options`, an optional `calibration` patch, and
    the lists `sparsity` and `patterns` ("2:4" keeps 2 of 4) to sweep. The general form is
    `stages:` (a list of stage configs, e.g. prune then prune again), with `sweep:` mapping a
    field path to its values (`stages[0].sparsity`, `stages[1].options.percdamp`,
    `stages[0].calibration.n_samples`; in the shorthand the `stages[0].` may be left out).
    `x` names the swept field on the plots' x-axis (default: the sparsity); every other
    swept field makes arms of its own ("wanda calibration.n_samples=16").
    """

    method: str | None = None
    sparsity: list[Fraction] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    # Quantizers (rtn, gptq): the bit widths to sweep (`stages[0].options.bits`).
    bits: list[int] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    calibration: CalibrationPatch | None = None
    stages: list[dict[str, Any]] = Field(default_factory=list)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    x: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Compression:
        shorthand = (self.method is not None or self.sparsity or self.patterns or self.options
                     or self.calibration is not None or self.bits)
        if self.stages and shorthand:
            raise ValueError("gives both stages and the one-stage shorthand (method, sparsity, "
                             "patterns, options, calibration): use one form")
        if not self.stages and self.method is None:
            raise ValueError("gives neither a method nor stages")
        if self.method is not None and not self.sparsity and not self.patterns and not any(
                _relative(p) in ("stages[0].sparsity", BITS_PATH) for p in self.sweep) and not (
                self.bits):
            raise ValueError("gives neither a sparsity list nor patterns nor bits (empty grid)")
        for path, values in self.sweep.items():
            if not values:
                raise ValueError(f"sweep of {path} has no values")
        problems = []
        for i, stage in enumerate(self.stages):
            try:
                parse_stage(stage)
            except ValidationError as exc:
                problems += [f"stages[{i}].{yaml_path(loc)}: {msg}"
                             for loc, msg in problems_of(exc)]
            except ValueError as exc:
                problems.append(f"stages[{i}]: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def base_stages(self) -> list[dict[str, Any]]:
        """The chain as raw stage data, before any sweep is applied."""
        if self.stages:
            return [dict(s) for s in self.stages]
        stage: dict[str, Any] = {"kind": "prune", "method": self.method,
                                 "options": dict(self.options)}
        if self.calibration is not None:
            stage["calibration"] = self.calibration.model_dump(exclude_none=True)
        return [stage]

    def sweeps(self) -> dict[str, list[Any]]:
        """The `sweep:` fields as full paths (the shorthand's sparsity and patterns apart)."""
        return {_relative(p): list(v) for p, v in self.sweep.items()}

    def x_path(self) -> str:
        if self.x is not None:  # a computed axis by its name, else a stage field's path
            return self.x.strip() if computed_axis(self.x.strip()) else _relative(self.x)
        if self.bits and not self.sparsity and not self.patterns:
            return BITS_PATH
        for path in self.sweeps():
            if path.endswith(".sparsity"):
                return path
        return "stages[0].sparsity"


BITS_PATH = "stages[0].options.bits"


def _relative(path: str) -> str:
    """A sweep path as a full path from the compression: `sparsity` -> `stages[0].sparsity`."""
    path = path.strip()
    return path if path.startswith("stages[") else f"stages[0].{path}"


class Calibration(_Strict):
    """Calibration text for methods that need it; the window seed is each study seed."""

    source: str = defaults.CALIBRATION_SOURCE
    n_samples: int = Field(defaults.CALIBRATION_SAMPLES, ge=1)
    seqlen: int = Field(defaults.CALIBRATION_SEQLEN, ge=MIN_SEQLEN)


class Evaluation(_Strict):
    limit: int | None = Field(None, ge=1, description="items per task level (None = all)")
    seed: int = Field(0, ge=0, description="selects the items and few-shot demonstrations")
    batch_size: int = Field(16, ge=1)
    # How `finetune` task levels (the transfer study's encoder track) are trained before they
    # are scored: `prunelab.recover.TrainConfig` fields (None: the paper's defaults, batch 32).
    # The same for the dense model and every transfer arm; each arm's seed is the study seed.
    finetune: dict[str, Any] | None = None


class BandProbe(_Strict):
    """The "nested junk" probe: prune only the |W| rank band [s, s + width) of each matrix."""

    starts: list[Fraction] = Field(min_length=1)
    width: float = Field(0.1, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _inside(self) -> BandProbe:
        bad = [s for s in self.starts if s + self.width > 1 + 1e-9]
        if bad:
            raise ValueError(f"band start(s) {bad} + width {self.width} go past 1")
        return self


class Analysis(_Strict):
    # "relative": pruned / dense score, the paper's "% of dense". "above_chance": the share of
    # the dense model's above-chance skill that is kept, (pruned - chance) / (dense - chance),
    # which does not reward a collapsed level for having a high chance floor.
    measure: Literal["relative", "above_chance"] = "relative"
    # "task": each item as its task's metric scores it (0/1 for multiple choice). "continuous":
    # the gold choice's probability over the choices (multiple choice), the gold answer's
    # log-probability per token (generation), bits per byte (text): tens of items then carry
    # information that 0/1 scores do not.
    item_measure: Literal["task", "continuous"] = "task"
    n_boot: int = Field(1000, ge=50, description="bootstrap replicates for every interval")
    thresholds: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        default_factory=lambda: [0.9, 0.5])


# Measure sections declared after runs were stored: left out of a recipe's dump (its YAML in
# the report, its fingerprint) when absent, so those runs keep their form and hash.
LATER_SECTIONS = ("physical_account",)


class Recipe(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    description: str = ""
    models: list[str] = Field(min_length=1)
    # The precision every model is loaded and computed in; `model_dtypes` sets one model's
    # own. Statistics are float32 whatever it is; a point's key holds it when not fp32.
    dtype: DType = Field(defaults.DTYPE, description="precision every model is loaded and "
                         "computed in: fp32, bf16 or fp16 (statistics stay fp32)")
    model_dtypes: dict[str, DType] = Field(default_factory=dict, description="one model's own "
                                           "precision, by its name under models")
    compressions: list[Compression] = Field(default_factory=list)
    band_probe: BandProbe | None = None
    tasks: list[str] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    calibration: Calibration = Field(default_factory=Calibration)
    eval: Evaluation = Field(default_factory=Evaluation)
    perplexity: Perplexity | None = None
    divergence: Divergence | None = None
    refusal: Refusal | None = None
    physical_account: PhysicalAccount | None = None
    analysis: Analysis = Field(default_factory=Analysis)

    @field_validator("models", "tasks", "seeds")
    @classmethod
    def _each_once(cls, values: list) -> list:
        # A repeated entry would be merged silently into one: say so instead.
        first: dict = {}
        for i, value in enumerate(values):
            if value in first:
                raise ValueError(f"lists {value!r} twice (at [{first[value]}] and [{i}]): "
                                 "keep one")
            first[value] = i
        return values

    @model_validator(mode="after")
    def _some_compression(self) -> Recipe:
        if not self.compressions and self.band_probe is None:
            raise ValueError("no compressions and no band_probe: nothing to compare with dense")
        return self

    @model_validator(mode="after")
    def _dtypes_of_listed_models(self) -> Recipe:
        unknown = [m for m in self.model_dtypes if m not in self.models]
        if unknown:
            raise ValueError(f"model_dtypes names {unknown[0]!r}, which is not among the "
                             "models: list it under models, or remove its entry")
        return self

    def dtype_of(self, model: str) -> str:
        """The precision `model` is loaded and computed in."""
        return self.model_dtypes.get(model, self.dtype)

    def fingerprint(self) -> str:
        """A hash of what the recipe computes; a run directory belongs to one fingerprint.

        `analysis` and `description` are left out: they change no stored result, so a run
        can be re-analysed (e.g. more bootstrap replicates) in its own directory."""
        data = self.dump(exclude={"analysis", "description"})
        for name in ("divergence", "refusal"):  # recipes from before the field keep their hash
            if data.get(name) is None:
                data.pop(name, None)
        if data["eval"].get("finetune") is None:
            data["eval"].pop("finetune", None)
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def dump(self, exclude: set[str] | None = None) -> dict:
        """The recipe as JSON data; a registered measure's section that no built-in field
        declares is left out when absent (so recipes without it keep their form and hash)."""
        data = self.model_dump(mode="json", exclude=exclude)
        for name in (set(type(self).model_fields) - set(Recipe.model_fields)) | set(
                LATER_SECTIONS):
            if data.get(name) is None:
                data.pop(name, None)
        # Precision fields came later too: at their defaults (fp32, no per-model entry) they
        # are left out, so fp32 recipes keep the form and hash they had before dtypes.
        if data.get("dtype") == defaults.DTYPE:
            data.pop("dtype")
        if not data.get("model_dtypes"):
            data.pop("model_dtypes", None)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.dump(), sort_keys=False)


_RECIPE_MODELS: dict[tuple, type[Recipe]] = {}


def recipe_model() -> type[Recipe]:
    """`Recipe` with a field for each registered measure's section that it does not declare
    itself (a measure added in its own file, `prunelab.study.measures`)."""
    from prunelab.study.measures import MEASURES

    extra = tuple((m.recipe_field, m.section) for m in MEASURES.values()
                  if m.recipe_field and m.section and m.recipe_field not in Recipe.model_fields)
    if not extra:
        return Recipe
    if extra not in _RECIPE_MODELS:
        _RECIPE_MODELS[extra] = create_model(
            "Recipe", __base__=Recipe, __module__=__name__,
            **{name: (section | None, None) for name, section in extra})
    return _RECIPE_MODELS[extra]


# ---------------------------------------------------------------------------------------------
# Loading, overriding, validating


def yaml_path(loc: tuple) -> str:
    """('compressions', 1, 'sparsity', 2) -> 'compressions[1].sparsity[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # a key that would break the one-line message (a newline) is shown quoted
            out += ("." if out else "") + (part if str(part).isprintable() else repr(part))
    return out or "(top level)"


def problems_of(exc: ValidationError) -> list[tuple[tuple, str]]:
    found = []
    for err in exc.errors():
        # Drop pydantic's tagged-union / function-validator markers from the path.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(
                err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        found.append((loc, msg))
    return found


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    return [(yaml_path(loc), msg) for loc, msg in problems_of(exc)]


def recipe_error(source: str, problems: list[tuple[str, str]]) -> PrunelabError:
    listed = " ".join("; ".join(f"{path}: {msg}" for path, msg in problems).split())
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return PrunelabError(f"invalid recipe {source}: {count}: {listed}",
                         "fix each listed field and run again")


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_override(data: dict, assignment: str) -> None:
    """Apply `a.b[0].c=VALUE` to raw recipe data; VALUE is parsed as YAML ("[0.5, 0.6]", "null")."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path.strip():
        raise PrunelabError(f"override {assignment!r} is not PATH=VALUE",
                            "write e.g. --set eval.limit=20 or --set compressions[0].sparsity=[0.5]")
    parts = [m.group(1) if m.group(1) is not None else int(m.group(2))
             for m in _SEGMENT.finditer(path.strip())]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise PrunelabError(f"override {assignment!r}: the value is not valid YAML",
                            "quote keys with brackets, e.g. "
                            "--set 'compressions[0].sweep={\"stages[1].sparsity\": [0.5]}'"
                            ) from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        try:
            if isinstance(part, int):
                node = node[part]
            else:
                if node.get(part) is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        except (IndexError, KeyError, TypeError, AttributeError):
            raise PrunelabError(f"override {assignment!r}: {yaml_path(tuple(parts[:i + 1]))} "
                                "does not exist in the recipe", "check the path") from None
    try:
        node[parts[-1]] = value
    except (IndexError, TypeError):
        raise PrunelabError(f"override {assignment!r}: cannot set {yaml_path(tuple(parts))}",
                            "check the path") from None


SemanticCheck = Callable[[Recipe], list[tuple[str, str]]]


def parse_recipe(data: Any, source: str = "recipe", overrides: list[str] | None = None,
                 check: SemanticCheck | None = None) -> Recipe:
    """Validate raw data (a mapping from YAML) into a Recipe; every problem in one error.

    `check` (the backend's checks of what the schema cannot see: methods, tasks, models) is
    run here only when the schema fails, on what of the recipe is sound, so that its problems
    come in the same error instead of after the schema's are fixed; a recipe that validates
    is checked by the study itself (`prepare`)."""
    if not isinstance(data, dict):
        raise recipe_error(source, [("(top level)", "must be a mapping of keys to values")])
    data = copy.deepcopy(data)
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return recipe_model().model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
    if check is not None:
        problems += [p for p in _semantic_problems(data, check) if p not in problems]
    raise recipe_error(source, problems)


# Stand-ins for a required field the schema refused, so that the rest can still be checked;
# problems found under them are not reported (the schema's are).
_STAND_INS = {"name": "recipe", "models": ["stand-in"], "tasks": ["stand-in"]}
_STAND_IN_COMPRESSION = {"method": "magnitude", "sparsity": [0.5]}
_SWEPT_FIELDS = ("sparsity", "patterns", "bits", "sweep")


def _semantic_problems(data: dict, check: SemanticCheck) -> list[tuple[str, str]]:
    """`check`'s problems on the sound part of a recipe the schema refused: each refused
    field is left out (or stood in for, when required), and problems under a stand-in are
    dropped."""
    data = copy.deepcopy(data)
    stood_in: set[str] = set()
    for _ in range(4):  # leaving a field out can uncover an error in what it hid
        try:
            recipe = recipe_model().model_validate(data)
            break
        except ValidationError as exc:
            if not all(_leave_out(data, loc, stood_in) for loc, _ in problems_of(exc)):
                return []
    else:
        return []
    try:
        found = check(recipe)
    except PrunelabError:
        return []
    return [(path, msg) for path, msg in found
            if not any(path == s or path.startswith((f"{s}.", f"{s}[")) for s in stood_in)]


def _leave_out(data: dict, loc: tuple, stood_in: set[str]) -> bool:
    """Take the refused field at `loc` out of `data`; False when it cannot be."""
    if not loc or not isinstance(loc[0], str):
        return False
    top = loc[0]
    entries = data.get("compressions")
    if top == "compressions" and len(loc) >= 2 and isinstance(loc[1], int) \
            and isinstance(entries, list) and loc[1] < len(entries):
        i, entry = loc[1], entries[loc[1]]
        if len(loc) >= 3 and isinstance(entry, dict) and loc[2] in entry \
                and loc[2] not in ("method", "stages"):
            entry.pop(loc[2])  # e.g. a bad sparsity: the method can still be checked
            if not any(entry.get(k) for k in _SWEPT_FIELDS) and "method" in entry:
                entry["sparsity"] = [0.5]
        else:
            entries[i] = dict(_STAND_IN_COMPRESSION)
            stood_in.add(f"compressions[{i}]")
        return True
    if top in _STAND_INS:
        data[top] = copy.deepcopy(_STAND_INS[top])
    elif top in data:
        data.pop(top)  # a field with a default
    else:
        return False
    stood_in.add(top)
    return True


def load_recipe(path: str | Path, overrides: list[str] | None = None,
                check: SemanticCheck | None = None) -> Recipe:
    """A recipe file, validated; a schema refusal also lists what `check` (the backend's
    checks: `prunelab.study.checks.check_recipe` for prunelab's) finds in the rest."""
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"recipe {path} does not exist",
                            "pass a YAML recipe (see recipes/), or run `prunelab demo`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PrunelabError(f"recipe {path} is not valid YAML{where}",
                            "check indentation and quoting") from None
    return parse_recipe(data, str(path), overrides, check)
