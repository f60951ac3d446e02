"""A pruning run's request checked as far as it can be without torch or the model.

The command line runs `check_prune_request` before it imports the heavy stack, so that a typo
is refused in a fraction of a second; `prunelab.compress.check_prune_args` runs it first too,
then the checks that need the method's own code (`make_method`, `check_request`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunelab.allocator import mmap_threshold_from_env
from prunelab.checks import (NMPattern, check_new_dir, check_only, check_sparsity,
                             parse_pattern, pattern_unsupported)
from prunelab.data.calibration import CalibrationConfig, calibration_config
from prunelab.errors import PrunelabError
from prunelab.method_catalogue import check_options, known_methods


@dataclass(frozen=True)
class PruneRequest:
    """A pruning run's arguments as far as they can be checked without torch."""

    method: str
    options: dict  # as given, less `only` (the method converts them when it is made)
    sparsity: float
    pattern: NMPattern | None
    calibration: CalibrationConfig


def check_prune_request(method: str, sparsity: float | None = None,
                        pattern: str | None = None,
                        calibration: CalibrationConfig | str | Path | None = None,
                        options: dict | None = None, *, seed: int | None = None,
                        out: str | Path | None = None) -> PruneRequest:
    """Everything of `prunelab.api.check_prune_args` that needs no method code: the method's
    name and its options' names and types (from the catalogue), the pattern, the sparsity
    (derived from the pattern when not given), the calibration, the allocator setting and
    `out` (which must not exist yet)."""
    options = dict(options or {})
    check_only(options.pop("only", None))  # every method's: which layers (see `api.prune`)
    known = known_methods()
    shape = known.get(method)
    check_options(method, options, None if shape is None else shape.options, known)
    nm = parse_pattern(pattern)
    if nm is not None and not shape.supports_nm:
        raise pattern_unsupported(method, [name for name, s in sorted(known.items())
                                           if s.supports_nm])
    if shape.quantizes and (nm is not None or sparsity):
        raise PrunelabError(f"method {method} quantizes weights and prunes none",
                            "leave out --sparsity and --pattern (prune first with a method "
                            "that prunes, or use sparsegpt --option bits=4 for both at once)")
    if sparsity is None and shape.quantizes:
        sparsity = 0.0
    if sparsity is None:
        if nm is None:
            raise PrunelabError("no sparsity given", "pass --sparsity 0.5 or --pattern 2:4")
        sparsity = nm.sparsity
    sparsity = check_sparsity(sparsity)
    if nm is not None and abs(sparsity - nm.sparsity) > 1e-9:
        raise PrunelabError(f"sparsity {sparsity} disagrees with pattern {nm} "
                            f"(which removes {nm.sparsity:.3f})",
                            "leave out the sparsity when giving a pattern")
    import prunelab.tasks.calibration  # noqa: F401  (registers the "task:" sources' check)

    calibration = calibration_config(calibration, seed)
    mmap_threshold_from_env()  # read again when pruning starts; a bad value should fail now
    check_new_dir(out)
    return PruneRequest(method, options, sparsity, nm, calibration)
