"""Structured pruning of state-space mixers (Mamba-2 heads, Mamba channels, state dimensions),
scored FLAP-style on the dense model.

`unit=heads` (default): every layer loses the same share (`--sparsity`) of its SSM heads
(Mamba-2; removed evenly from each of its groups, which share B and C) or of its inner
channels (Mamba). A channel j of the out_proj input scores FLAP's fluctuation metric,
WIFV = Var(x_j) · ‖W_out[:, j]‖² (or IFV = Var(x_j)); a head scores the sum over its
channels. This is the setting Ghattas et al. (2025) ran FLAP in on SSM heads.

`unit=state`: every layer loses the same share of its state dimensions (B and C rows,
removed at the same positions in every group). The out_proj input says nothing about a
single state dimension, so n scores √(E[B_n²] · E[C_n²]) summed over groups, from the input
projection's outputs on the calibration text (x_proj's for Mamba): the size of the terms
C_n·h_n that state n adds to every output. This score is prunelab's, not a paper's.

There is no bias compensation: the mixers' out_proj has no bias, and the gated norm before
it would not pass a constant through unchanged. All scores come from one dense pass;
`prunelab.ssm` does the surgery and writes the config the saved directory needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from prunelab import arch, ssm
from prunelab.errors import PrunelabError
from prunelab.methods.base import MethodConfig, MethodCost, PlanContext, PruningMethod, register


@dataclass
class SsmFlapConfig(MethodConfig):
    unit: Literal["heads", "state"] = field(default="heads", metadata={
        "help": "what --sparsity removes from every mixer: SSM heads (Mamba: inner channels) "
                "or state dimensions"})
    metric: Literal["WIFV", "IFV"] = field(default="WIFV", metadata={
        "help": "head score (unit=heads): weighted input variance, or input variance"})


def removal_count(units: int, share: float, groups: int = 1) -> int:
    """How many of `units` (split into `groups` equal groups) a share removes: the nearest
    whole number per group."""
    return round(share * units / groups) * groups


@register
class SsmFlap(PruningMethod):
    name = "ssm-flap"
    cost = MethodCost(passes=1.0)
    summary = "structured SSM: Mamba-2 heads / Mamba channels or state dims, FLAP-style scores"
    Config = SsmFlapConfig
    supports_nm = False

    def __init__(self, config):
        super().__init__(config)
        self.planning_statistics = (("input_mean_var",) if config.unit == "heads"
                                    else ("output_sq_sum",))

    def check_model(self, model, sparsity=None, pattern=None):
        found = arch.find_blocks(model)
        if not ssm.is_ssm(model):
            raise PrunelabError(f"{type(model).__name__} has no state-space mixers",
                                "ssm-flap prunes Mamba and Mamba-2 models; for attention "
                                "models use flap, wanda-sp or magnitude-sp")
        self._path = found.path
        self._parts = ssm.model_mixers(model)
        if sparsity is None:
            return
        for i, parts in enumerate(self._parts):
            where = f"{found.path}.{i}"
            if self.config.unit == "heads":
                gone = removal_count(parts.heads, sparsity, parts.groups)
                if gone >= parts.heads:
                    what = "SSM head" if parts.family == "mamba2" else "inner channel"
                    raise PrunelabError(f"--sparsity {sparsity} would remove every {what} of "
                                        f"{where} ({parts.heads} in {parts.groups} group(s))",
                                        f"give a share that leaves at least one {what} per "
                                        "group")
            elif removal_count(parts.state, sparsity) >= parts.state:
                raise PrunelabError(f"--sparsity {sparsity} would remove every state dimension "
                                    f"of {where} ({parts.state})", "give a smaller share")

    def _names(self, index: int, parts: ssm.MixerParts) -> tuple[str, str]:
        prefix = f"{self._path}.{index}.{parts.path}." if parts.path else f"{self._path}.{index}."
        source = "x_proj" if parts.family == "mamba" else "in_proj"
        return prefix + "out_proj", prefix + source

    def plan(self, context: PlanContext):
        self._keep = []
        for i, parts in enumerate(self._parts):
            out_name, source_name = self._names(i, parts)
            if out_name not in context.statistics or source_name not in context.statistics:
                raise PrunelabError("ssm-flap scores every mixer's out_proj and input "
                                    "projection, but only= left some of them out",
                                    "drop --option only for ssm-flap")
            if self.config.unit == "heads":
                stats = context.statistics[out_name]
                variance = stats["input_mean_var"].var.to(torch.float32).cpu()
                if self.config.metric == "WIFV":
                    weight = context.weights[out_name].to(torch.float32).cpu()
                    variance = variance * weight.pow(2).sum(dim=0)
                scores = variance.reshape(parts.heads, parts.head_dim).sum(dim=1)
                self._keep.append(self._keep_heads(parts, scores, context.sparsity))
            else:
                stats = context.statistics[source_name]
                mean_sq = (stats["output_sq_sum"].to(torch.float32).cpu()
                           / max(stats.n_tokens, 1))
                self._keep.append(_keep_lowest_gone(self.state_scores(parts, mean_sq),
                                                    removal_count(parts.state,
                                                                  context.sparsity)))
        return None

    @staticmethod
    def state_scores(parts: ssm.MixerParts, mean_sq: torch.Tensor) -> torch.Tensor:
        """Each state dimension's score from the mean squares of the rows that make B and C."""
        n, g = parts.state, parts.groups
        if parts.family == "mamba2":
            start = 2 * parts.inner
            b = mean_sq[start:start + g * n].reshape(g, n)
            c = mean_sq[start + g * n:start + 2 * g * n].reshape(g, n)
        else:
            rank = int(parts.mixer.time_step_rank)
            b = mean_sq[rank:rank + n].reshape(1, n)
            c = mean_sq[rank + n:rank + 2 * n].reshape(1, n)
        return (b * c).sqrt().sum(dim=0)

    @staticmethod
    def _keep_heads(parts: ssm.MixerParts, scores: torch.Tensor, share: float) -> torch.Tensor:
        per_group = parts.heads // parts.groups
        gone = removal_count(parts.heads, share, parts.groups) // parts.groups
        return torch.cat([g * per_group + _keep_lowest_gone(scores[g * per_group:
                                                                   (g + 1) * per_group], gone)
                          for g in range(parts.groups)])

    def prune_block(self, block, layers, stats, targets):
        name = next(iter(targets.values())).name
        index = int(name[len(self._path) + 1:].split(".")[0])
        where = f"{self._path}.{index}"
        parts = ssm.locate(block, where)
        if self.config.unit == "heads":
            ssm.shrink_heads(parts, self._keep[index], where)
        else:
            ssm.shrink_state(parts, self._keep[index], where)
        self._keep[index] = None
        return {}

    def finish(self, model) -> None:
        ssm.write_config(model)


def _keep_lowest_gone(scores: torch.Tensor, gone: int) -> torch.Tensor:
    """The indices kept once the `gone` lowest scores are removed (ties: lower index first)."""
    order = torch.sort(scores.to(torch.float32), stable=True).indices
    return torch.sort(order[gone:]).values
