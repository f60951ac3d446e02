"""The public Python API, in one place: what `import prunelab` offers as `prunelab.NAME`.

    import prunelab
    m = prunelab.load_model("smollm2-135m")
    result = prunelab.prune(m, method="wanda", sparsity=0.5)
    print(prunelab.perplexity(m), result.overall_sparsity)
    prunelab.save(m, "out/wanda50", result)

Only names are gathered here; each lives in the module that does the work. Nothing inside
prunelab imports this module: the parts import one another directly.
"""

from __future__ import annotations

from prunelab.checkpoint import PROVENANCE_FILE, read_provenance, save, storage_record, versions
from prunelab.compress import (PruneArgs, PruneResult, check_model_fit, check_prune_args, prune,
                               quantize)
from prunelab.data.calibration import CalibrationConfig, calibration_config
from prunelab.data.checks import check_perplexity_args
from prunelab.devices import resolve_device
from prunelab.errors import PrunelabError
from prunelab.evaluate.perplexity import Measured, dense_perplexity, perplexity
# Named for what it scores: `prunelab.evaluate` is the subpackage.
from prunelab.evaluate.runner import evaluate as evaluate_tasks
from prunelab.zoo.models import LoadedModel, load_model

__all__ = [
    "CalibrationConfig", "LoadedModel", "Measured", "PROVENANCE_FILE", "PruneArgs",
    "PruneResult", "PrunelabError", "calibration_config", "check_model_fit",
    "check_perplexity_args", "check_prune_args", "dense_perplexity", "evaluate_tasks",
    "load_model", "perplexity", "prune", "quantize", "read_provenance", "resolve_device",
    "save", "storage_record", "versions",
]
