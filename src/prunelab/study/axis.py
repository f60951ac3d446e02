"""What a sweep puts on the x-axis: registered `Axis` objects, and bits removed per weight.

An axis is either a stage field that a recipe sweeps (`stages[0].sparsity`,
`stages[0].options.band_low`, `stages[0].calibration.n_samples`), matched by its path, or a
value computed from the whole chain (`bits_removed_per_weight`), named by a recipe's `x:`.
Each says how its values read in the report (a percentage, bits), whether it measures how much
is removed, and, for a sweep that is not an amount, the report section that shows it. The
report and the planner ask `axis_for(x_field)`; no field name is spelled out anywhere else.

Compression intensity in bits per weight: one x-axis for pruning and quantization.

A chain of stages is priced by what storing its prunable matrices costs per weight, starting
from a dense 16-bit (bf16) weight:
- pruning to sparsity s keeps a share 1 − s of the values and adds where they are: a bitmask
  (1 bit per weight; N:M: log2 C(M, N) bits per group of M);
- quantizing to b bits makes each stored value b bits and adds each group's 16-bit scale and,
  asymmetric, its b-bit zero point, spread over the group (per-channel grids: over a row,
  whose width the recipe does not know; that overhead, under 0.03 bits for rows of 576 or
  more, is left out);
- both (prune then quantize, or SparseGPT's joint mode): kept share × b + mask + grid overhead.
The axis is `bits_removed_per_weight` = 16 − stored bits per weight, so that, like sparsity,
it is 0 for the dense model and grows with compression: a recipe's pruning and quantization
arms then share one axis and the study's statistics (slopes along level rank, thresholds)
read it as they read a sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prunelab.errors import PrunelabError
from prunelab.study.stages import Stage

BITS_REMOVED = "bits_removed_per_weight"
DENSE_BITS = 16.0


def percent(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.0%}"


@dataclass(frozen=True)
class Axis:
    """One x-axis. `matches(x_field)` finds it for a stored point's `x_field`.

    - `name`: the `x_field` itself for a computed axis, else a short name.
    - `suffix`: for a stage-field axis, the end of the field path it matches.
    - `compute`: for a computed axis, its value from the chain of stages; every swept field
      then moves along it (it is left out of the arm's name).
    - `is_amount`: True/False, or None to let the stage's `amount_fields` decide.
    - `format`: a value as the report's tables show it.
    - `label`: what the values are, in words (plots and table headers of its sweep).
    - `section_title`, `section_text`, `table_title`: the report's sweep section for it.
    """

    name: str
    suffix: str | None = None
    compute: Callable[[Sequence[Stage]], float] | None = None
    is_amount: bool | None = None
    format: Callable[[float | None], str] = percent
    label: str | None = None
    section_title: str | None = None
    section_text: str = ""
    table_title: str | None = None

    def matches(self, x_field: str | None) -> bool:
        if x_field is None:
            return False
        if self.compute is not None:
            return x_field == self.name
        return self.suffix is not None and x_field.endswith(self.suffix)

    def what(self, x_field: str) -> str:
        return self.label or x_field

    def title(self, x_field: str) -> str:
        return self.section_title or f"Relative performance along {x_field}"

    def table(self, x_field: str) -> str:
        return self.table_title or f"Sweep of {x_field}"


AXES: dict[str, Axis] = {}
# A field no registered axis matches: shown as a percentage under its own path.
DEFAULT_AXIS = Axis("field")


def register_axis(axis: Axis) -> Axis:
    """Register an axis; a name taken twice is refused. The most recently registered axis
    that matches a field wins (a narrower suffix registered after a broader one)."""
    if axis.name in AXES:
        raise PrunelabError(f"an axis named {axis.name!r} is already registered",
                            "give the new axis another name")
    AXES[axis.name] = axis
    return axis


def unregister_axis(name: str) -> None:
    """Forget an axis (for tests that register a toy one)."""
    AXES.pop(name, None)


def axis_for(x_field: str | None) -> Axis:
    for axis in reversed(AXES.values()):
        if axis.matches(x_field):
            return axis
    return DEFAULT_AXIS


def computed_axis(name: str) -> Axis | None:
    """The registered computed axis a recipe's `x:` names, or None for a field path."""
    axis = AXES.get(name)
    return axis if axis is not None and axis.compute is not None else None


def stored_bits_per_weight(stages: list[Stage] | tuple[Stage, ...]) -> float:
    """Bits per prunable weight that the chain's result takes to store (see module doc)."""
    from prunelab.methods.base import make_method
    from prunelab.methods.quant import SCALE_BITS

    kept, mask, value, overhead = 1.0, 0.0, DENSE_BITS, 0.0
    for stage in stages:
        method = getattr(stage, "method", None)
        if method is None:
            continue
        config = make_method(method, stage.options).config
        sparsity = getattr(stage, "sparsity", None) or 0.0
        pattern = getattr(stage, "pattern", None)
        if pattern:
            n, m = (int(v) for v in pattern.split(":"))
            kept = min(kept, n / m)
            mask = _nm_mask_bits(n, m)
        elif sparsity:
            kept = min(kept, 1 - sparsity)
            mask = max(mask, 1.0)
        bits = getattr(config, "bits", None)
        if bits is not None:
            value = float(bits)
            group = getattr(config, "group_size", None)
            zero_bits = 0 if getattr(config, "symmetric", False) else bits
            overhead = (SCALE_BITS + zero_bits) / group if group else 0.0
    return kept * value + mask + overhead


def bits_removed_per_weight(stages) -> float:
    return round(DENSE_BITS - stored_bits_per_weight(stages), 6)


def _nm_mask_bits(n: int, m: int) -> float:
    import math

    return math.log2(math.comb(m, n)) / m


def _bits(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2f} bits"


register_axis(Axis("sparsity", suffix=".sparsity"))
register_axis(Axis(BITS_REMOVED, compute=bits_removed_per_weight, is_amount=True,
                   format=_bits, label="bits removed per weight"))
register_axis(Axis(
    "band start", suffix="options.band_low", label="band start (|W| rank quantile)",
    section_title="Nested junk: pruning one magnitude band at a time",
    section_text="Only the weights whose |W| rank quantile lies in [s, s + width) of each "
                 "matrix are pruned (the arm names the width). If small weights were pure "
                 "junk, the low bands would cost nothing and only high bands would hurt.",
    table_title="Band probe"))
register_axis(Axis("calibration samples", suffix="calibration.n_samples"))
register_axis(Axis("calibration length", suffix="calibration.seqlen"))
