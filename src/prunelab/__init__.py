"""prunelab: prune pre-trained language models and measure what they lose.

The public API, importable as `prunelab.X` (gathered in `prunelab.api`):
    load_model(name_or_dir)            -> LoadedModel (model, tokenizer, provenance)
    prune(loaded, method=, sparsity=, pattern=, calibration=) -> PruneResult
    perplexity(loaded, source=, seqlen=, n_windows=)          -> float
    quantize(loaded, method=, bits=, group_size=) -> PruneResult (grids in .quantized)
    save(loaded, out_dir, result)      write save_pretrained output plus prunelab.json
    evaluate_tasks(loaded, tasks=[...]) -> EvalResults with every example's result

Importing prunelab imports no torch and changes no setting of the process: the names above
load on first use, and the allocator tweak for big models is opt-in
(`prunelab.allocator.configure()`, which the `prunelab` command calls).
"""

from importlib import import_module

__version__ = "0.1.0"

# The names `prunelab.X` offers; each is `prunelab.api.X`. None may be a subpackage's name
# (`prunelab.evaluate` is the package, its entry point `evaluate_tasks`).
_PUBLIC = ("CalibrationConfig", "LoadedModel", "PrunelabError", "evaluate_tasks", "load_model",
           "perplexity", "prune", "quantize", "save")


def __getattr__(name: str):
    # Lazy, so that `import prunelab` stays fast and the CLI starts without torch.
    if name in _PUBLIC:
        value = getattr(import_module("prunelab.api"), name)
        globals()[name] = value
        return value
    if name.startswith("_"):
        raise AttributeError(f"module 'prunelab' has no attribute {name!r}")
    try:  # a submodule not imported yet, e.g. `prunelab.evaluate` (as `import` would give)
        return import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
