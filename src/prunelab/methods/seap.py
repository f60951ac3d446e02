"""SEAP (IAAR-Shanghai/SEAP, 2025), the pruning step: task-specific expert activation pruning.

SEAP scores heads and channels as FLAP does (WIFV on the inputs of o_proj and down_proj,
bias compensation), but from the activations of a *task's own prompts*: calibrate on a text
file of one task's prompts for that task's mask, or on all tasks' prompts for the general
one. Its layers lose different shares, from a logistic function of depth (the reference
code's "UL-LD"): the first `keep_first` and last `keep_last` layers stay whole; the others,
at normalised depth x = (l − keep_first) / (active − 1),

    ρ_l = Λ / (1 + exp(−k (x − x0))),   k = 0.8, x0 = 0.3 (the reference defaults),

so deeper layers lose more. Λ is set so that the layers' mean share equals the target over
*all* layers (the reference averages over the pruned layers only, which makes its models
larger than the target says; ours are the size asked, comparable with FLAP's). Within a
layer, heads and channels follow the uniform rules of `methods/structured.py`.

Routing an input to its task's model at inference is `prunelab.routing` (each mask is its
own pruned model; a classifier on the shared first blocks chooses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from prunelab.errors import PrunelabError
from prunelab.methods.base import MethodCost, register
from prunelab.methods.flap import Flap
from prunelab.methods.structured import StructuredConfig


@dataclass
class SeapConfig(StructuredConfig):
    metric: Literal["WIFV", "IFV", "WIFN"] = field(default="WIFV", metadata={
        "help": "channel importance, as in flap"})
    bias: bool = field(default=True, metadata={
        "help": "add the removed channels' mean contribution to the output bias"})
    k: float = field(default=0.8, metadata={"help": "steepness of the depth schedule"})
    x0: float = field(default=0.3, metadata={"help": "midpoint of the schedule, in [0, 1]"})
    keep_first: int = field(default=2, metadata={"help": "first layers left whole"})
    keep_last: int = field(default=2, metadata={"help": "last layers left whole"})

    def validate(self) -> None:
        super().validate()
        if self.heads is not None or self.channels is not None:
            raise PrunelabError("seap sets each layer's share from its depth schedule",
                                "leave out heads and channels (use flap for per-part ratios)")
        if self.keep_first < 0 or self.keep_last < 0:
            raise PrunelabError("keep_first and keep_last must be 0 or more",
                                "give e.g. keep_first=2 keep_last=2")


def logistic_shares(n_layers: int, target: float, k: float, x0: float, keep_first: int,
                    keep_last: int) -> list[float]:
    """Each layer's share to remove: 0 for the kept ends, Λ/(1 + e^(−k(x − x0))) between,
    with Λ making the mean over all layers equal `target`."""
    active = list(range(keep_first, n_layers - keep_last))
    if not active:
        raise PrunelabError(f"keep_first={keep_first} and keep_last={keep_last} leave none of "
                            f"the {n_layers} layers to prune", "keep fewer layers whole")
    span = max(len(active) - 1, 1)
    shape = {l: 1 / (1 + math.exp(-k * ((l - keep_first) / span - x0))) for l in active}
    scale = target * n_layers / sum(shape.values())
    shares = [scale * shape[l] if l in shape else 0.0 for l in range(n_layers)]
    if max(shares) >= 1:
        raise PrunelabError(f"the target {target:.1%} would remove all of a layer under the "
                            f"depth schedule (its deepest layer would lose {max(shares):.0%})",
                            "lower the target, or keep fewer layers whole")
    return shares


@register
class Seap(Flap):
    name = "seap"
    cost = MethodCost(passes=1.0)
    summary = "structured: FLAP scores from a task's prompts, logistic share per depth (SEAP)"
    Config = SeapConfig

    @property
    def uniform(self) -> bool:
        return True  # within each layer; the share varies with depth

    def layer_shares(self, n_layers: int, sparsity: float) -> list[float]:
        c = self.config
        return logistic_shares(n_layers, sparsity, c.k, c.x0, c.keep_first, c.keep_last)
