"""The public Python API: prune, perplexity, save. (`load_model` lives in `prunelab.zoo`.)

    import prunelab
    m = prunelab.load_model("smollm2-135m")
    result = prunelab.prune(m, method="wanda", sparsity=0.5)
    print(prunelab.perplexity(m), result.overall_sparsity)
    prunelab.save(m, "out/wanda50", result)
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

import prunelab
from prunelab.allocator import compact_heap, release_free_heap
from prunelab.data.corpora import (DEFAULT_EVAL_SOURCE, CalibrationConfig, calibration_windows,
                                   eval_windows, tokens_digest)
from prunelab.engine import LayerRecord, check_pattern, prune_blocks
from prunelab.errors import PrunelabError
from prunelab.evaluate.perplexity import perplexity_of_windows
from prunelab.methods.base import Statistic, make_method
from prunelab.methods.masks import check_sparsity, parse_pattern
from prunelab.paths import atomic_dir
from prunelab.zoo.models import LoadedModel

PROVENANCE_FILE = "prunelab.json"


@dataclass
class PruneResult:
    method: str
    options: dict
    sparsity: float
    pattern: str | None
    calibration: dict | None
    layers: list[LayerRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def overall_sparsity(self) -> float:
        total = sum(r.numel for r in self.layers)
        return sum(r.zeros_after for r in self.layers) / total if total else 0.0

    @property
    def zeros_before(self) -> int:
        return sum(r.zeros_before for r in self.layers)

    def to_dict(self) -> dict:
        return {
            "method": self.method, "options": self.options, "sparsity": self.sparsity,
            "pattern": self.pattern, "calibration": self.calibration,
            "overall_sparsity": round(self.overall_sparsity, 6),
            "prunable_weights": sum(r.numel for r in self.layers),
            "zeros_before_pruning": self.zeros_before,
            "seconds": round(self.seconds, 2),
            "layers": [r.to_dict() for r in self.layers],
        }


def prune(loaded: LoadedModel, method: str = "wanda", sparsity: float | None = None, *,
          pattern: str | None = None, calibration: CalibrationConfig | str | None = None,
          seed: int | None = None, batch_size: int = 8, device: str | None = None,
          progress: bool = True, **options) -> PruneResult:
    """Prune `loaded.model` in place with a registered method; return what was done.

    `sparsity` is the fraction of each prunable matrix to remove; with an N:M `pattern`
    ("2:4" keeps 2 of every 4) it may be left out, as it follows from the pattern.
    `calibration` is a CalibrationConfig, or a text source name / file path with the default
    sizes. Method options (e.g. `percdamp=0.02` for SparseGPT) are passed as keywords.
    """
    chosen = make_method(method, options)
    nm = parse_pattern(pattern)
    if nm is not None and not chosen.supports_nm:
        raise PrunelabError(f"method {method} does not support N:M patterns",
                            "leave out --pattern, or choose magnitude, wanda or sparsegpt")
    if sparsity is None:
        if nm is None:
            raise PrunelabError("no sparsity given", "pass sparsity=0.5 or an N:M pattern")
        sparsity = nm.sparsity
    sparsity = check_sparsity(sparsity)
    if nm is not None and abs(sparsity - nm.sparsity) > 1e-9:
        raise PrunelabError(f"sparsity {sparsity} disagrees with pattern {nm} "
                            f"(which removes {nm.sparsity:.3f})",
                            "leave out the sparsity when giving a pattern")

    check_pattern(loaded.model, chosen, nm)

    windows, calib_record = None, None
    if calibration is None or isinstance(calibration, (str, Path)):
        calibration = (CalibrationConfig() if calibration is None
                       else CalibrationConfig(source=str(calibration)))
    if seed is not None:
        calibration = CalibrationConfig(calibration.source, calibration.n_samples,
                                        calibration.seqlen, seed)
    with compact_heap():  # fragmentation would otherwise add 0.1-0.2 GB (prunelab.allocator)
        if chosen.statistic is not Statistic.NONE:
            windows = calibration_windows(loaded, calibration)
            release_free_heap()  # what the tokenizer freed (prunelab.allocator)
            calib_record = {**calibration.to_dict(), "tokens_sha256": tokens_digest(windows),
                            "bos": loaded.add_bos}
        start = time.perf_counter()
        records = prune_blocks(loaded.model, chosen, sparsity, nm, windows,
                               batch_size=batch_size, device=device, progress=progress)
    return PruneResult(method=method, options=_plain(chosen.config), sparsity=sparsity,
                       pattern=str(nm) if nm else None, calibration=calib_record,
                       layers=records, seconds=time.perf_counter() - start)


def perplexity(loaded: LoadedModel, source: str = DEFAULT_EVAL_SOURCE, seqlen: int = 512,
               n_windows: int | None = 32, batch_size: int = 4, progress: bool = False) -> float:
    """Perplexity on `n_windows` consecutive non-overlapping windows of `seqlen` tokens."""
    windows = eval_windows(loaded, source, seqlen, n_windows)
    return perplexity_of_windows(loaded.model, windows, batch_size, progress)


def versions() -> dict:
    import transformers

    return {"prunelab": prunelab.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def save(loaded: LoadedModel, out_dir: str | Path, result: PruneResult | None = None,
         overwrite: bool = False, extra: dict | None = None) -> Path:
    """Write `save_pretrained` output (safetensors) plus prunelab.json, atomically."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise PrunelabError(f"output directory {out} already exists",
                            "choose a new --out, or remove the old one")
    provenance = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": loaded.name, "dequantized": loaded.dequantized,
                  **({"zoo": loaded.info["zoo"]} if "zoo" in loaded.info else {})},
        "pruning": result.to_dict() if result else None,
        "versions": versions(),
        **(extra or {}),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def read_provenance(directory: str | Path) -> dict:
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        raise PrunelabError(f"{directory} has no {PROVENANCE_FILE}",
                            "pass a directory written by `prunelab prune --out`")
    return json.loads(path.read_text())


def _plain(config) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(config) if is_dataclass(config) else {}
