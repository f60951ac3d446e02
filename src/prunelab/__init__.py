"""prunelab: prune pre-trained language models and measure what they lose.

The public API, importable as `prunelab.X`:
    load_model(name_or_dir)            -> LoadedModel (model, tokenizer, provenance)
    prune(loaded, method=, sparsity=, pattern=, calibration=) -> PruneResult
    perplexity(loaded, source=, seqlen=, n_windows=)          -> float
    quantize(loaded, method=, bits=, group_size=) -> PruneResult (codes in .quantized)
    save(loaded, out_dir, result)      write save_pretrained output plus prunelab.json
    evaluate(loaded, tasks=[...])      -> EvalResults with every example's result
"""

from importlib import import_module

from prunelab.allocator import request_huge_pages

# Before torch allocates anything: torch reads this setting once (prunelab/allocator.py).
request_huge_pages()

__version__ = "0.1.0"

_EXPORTS = {
    "LoadedModel": "prunelab.zoo.models",
    "load_model": "prunelab.zoo.models",
    "prune": "prunelab.api",
    "perplexity": "prunelab.api",
    "quantize": "prunelab.api",
    "save": "prunelab.api",
    "CalibrationConfig": "prunelab.data.corpora",
    "evaluate": "prunelab.evaluate.runner",
    "PrunelabError": "prunelab.errors",
}


def __getattr__(name: str):
    # Lazy, so that `import prunelab` stays fast and the CLI starts quickly.
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
