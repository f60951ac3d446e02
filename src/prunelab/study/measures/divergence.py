"""Divergence of each compressed model's next-token distributions from the dense model's,
recipe `divergence:` (JSD, KL both ways, top-1 agreement; `prunelab.evaluate.divergence`).
The dense side is computed once per model and kept on the model handle."""

from __future__ import annotations

from prunelab.study.measures import Measure, register_measure
from prunelab.study.measures.perplexity import EvalWindows


class Divergence(EvalWindows):
    """Divergence of each compressed model's next-token distributions from the dense model's
    (JSD, KL both ways, top-1 agreement; `prunelab.evaluate.divergence`) on these windows."""


@register_measure
class DivergenceMeasure(Measure):
    name = "divergence"
    recipe_field = "divergence"
    section = Divergence
    on_dense = False  # the dense model against itself says nothing
    # its report sections: prunelab/report/divergence.py

    def check(self, config) -> list[tuple[str, str]]:
        from prunelab.data.checks import check_perplexity_args
        from prunelab.errors import PrunelabError

        try:
            check_perplexity_args(config.source, config.seqlen, config.n_windows)
        except PrunelabError as exc:
            return [("divergence", exc.problem)]
        return []

    def run(self, backend, handle, config, work=None) -> dict:
        """The compressed model against the handle's pristine dense copy."""
        from prunelab.data.corpora import eval_windows
        from prunelab.evaluate.divergence import dense_hidden_states, windows_divergence

        key = (config.source, config.seqlen, config.n_windows)
        cached = handle.cache.get(self.name)
        if cached is None or cached[0] != key:
            # The dense side computed once per model and reused by every compressed one.
            windows = eval_windows(handle.loaded, *key)
            cached = (key, windows, dense_hidden_states(handle.pristine, windows))
            handle.cache[self.name] = cached
        _, windows, hidden = cached
        return windows_divergence(handle.pristine, handle.loaded.model, windows,
                                  dense_hidden=hidden).to_dict()

    def fake(self, backend, handle, config, work=None) -> dict:
        return backend.divergence(handle, config.source, config.seqlen, config.n_windows)

    def cost(self, recipe, config, point, per_token, params, task=None) -> float:
        return 2 * config.n_windows * config.seqlen * per_token  # both models, one pass each
