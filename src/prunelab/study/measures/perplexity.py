"""Perplexity of each compressed model (dense included) on a held-out text, recipe
`perplexity:`; stored in the compressions table's `perplexity` column."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from prunelab import defaults
from prunelab.data.checks import MIN_SEQLEN
from prunelab.study.measures import Measure, register_measure


class EvalWindows(BaseModel):
    """Which held-out windows a measure reads: a text source, their length, how many."""

    model_config = ConfigDict(extra="forbid")
    source: str = defaults.EVAL_SOURCE
    seqlen: int = Field(defaults.EVAL_SEQLEN, ge=MIN_SEQLEN)
    n_windows: int = Field(defaults.STUDY_EVAL_WINDOWS, ge=1)


class Perplexity(EvalWindows):
    """Perplexity of each compressed model (dense included) on these windows."""


@register_measure
class PerplexityMeasure(Measure):
    name = "perplexity"
    recipe_field = "perplexity"
    section = Perplexity
    column = "perplexity"

    def run(self, backend, handle, config, work=None) -> float:
        from prunelab.evaluate.perplexity import perplexity

        return perplexity(handle.loaded, config.source, config.seqlen, config.n_windows)

    def fake(self, backend, handle, config, work=None) -> float:
        return backend.perplexity(handle, config.source, config.seqlen, config.n_windows)

    def cost(self, recipe, config, point, per_token, params, task=None) -> float:
        return config.n_windows * config.seqlen * per_token  # one forward pass of the windows
