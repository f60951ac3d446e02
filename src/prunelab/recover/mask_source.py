"""Where a transfer's mask comes from when it is taken from a saved model (`--mask-from`).

A mask taken from a directory is the zeros of its prunable weights. A directory that was
never pruned (a dense model, a quantized one, a fine-tuned one) has no such zeros, or only
the few that rounding left: a "sparse" run on it would be a dense fine-tune under the wrong
name. So the directory's record is checked before the model loads (`check_mask_source`),
its weights once they are read (`check_mask_has_zeros`), and what was used is recorded in
the output's prunelab.json (`mask_record`: the path, how it was pruned, a digest of the mask).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from prunelab.errors import PrunelabError

FIX = ("give a directory written by `prunelab prune --out`, or let transfer prune here with "
       "--method and --sparsity")


def check_mask_source(directory: str | Path) -> dict:
    """The pruning record of a mask source, before any model loads: what it was pruned with
    (method, sparsity or pattern, the share of weights removed). Refuses a directory that is
    missing, has no prunelab.json, or whose prunelab.json records no pruning that removed
    weights."""
    from prunelab.method_catalogue import METHOD_CATALOGUE
    from prunelab.zoo.provenance import PROVENANCE_FILE, read_provenance_file

    directory = Path(directory)
    if not directory.is_dir():
        raise PrunelabError(f"--mask-from {directory} is not a directory", FIX)
    if not (directory / PROVENANCE_FILE).is_file():
        raise PrunelabError(f"--mask-from {directory} has no {PROVENANCE_FILE}: it is not a "
                            "model prunelab pruned, so it has no mask to keep", FIX)
    record = read_provenance_file(directory)
    pruning = record.get("pruning")
    if not isinstance(pruning, dict):
        raise PrunelabError(f"--mask-from {directory} was not pruned (its {PROVENANCE_FILE} "
                            "has no pruning record)", FIX)
    method = pruning.get("method")
    shape = METHOD_CATALOGUE.get(method) if isinstance(method, str) else None
    removed = pruning.get("overall_sparsity")
    if shape is not None and shape.quantizes and not pruning.get("sparsity") \
            and not pruning.get("pattern"):
        raise PrunelabError(f"--mask-from {directory} was quantized ({method}), not pruned: "
                            "its zeros are rounding, not a mask", FIX)
    if not removed:
        raise PrunelabError(f"--mask-from {directory} removed no weights (its "
                            f"{PROVENANCE_FILE} records {method or 'no method'} at sparsity "
                            f"{removed or 0})", FIX)
    return {"path": str(directory.resolve()), "method": method,
            "sparsity": pruning.get("sparsity"), "pattern": pruning.get("pattern"),
            "overall_sparsity": removed}


def check_mask_has_zeros(directory: str | Path, masks: Mapping) -> None:
    """Refuse masks that hold nothing (the weights carry no zeros), whatever the record says."""
    if not any(bool(mask.any()) for mask in masks.values()):
        raise PrunelabError(f"--mask-from {directory}: its prunable weights hold no zeros, so "
                            "there is no mask to keep", FIX)


def mask_digest(masks: Mapping) -> str:
    """sha256 of the masks, layer by layer in name order (name, shape, the bits packed): two
    runs with the same digest kept the same weights at zero."""
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name].detach().cpu().bool()
        digest.update(f"{name}:{tuple(mask.shape)};".encode())
        digest.update(np.packbits(mask.reshape(-1).numpy()).tobytes())
    return "sha256:" + digest.hexdigest()


def mask_record(source: dict, masks: Mapping) -> dict:
    """What the output's prunelab.json says of the mask it was trained with."""
    return {**source, "masked_weights": sum(int(mask.sum()) for mask in masks.values()),
            "digest": mask_digest(masks)}
