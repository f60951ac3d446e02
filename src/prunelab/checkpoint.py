"""Writing a compressed model to a directory with its provenance, and reading that back.

A checkpoint is `save_pretrained` output (safetensors, or packed compressed-tensors) plus
prunelab.json: where the model came from, what was done to it, with which versions, and what
it takes on disk.
"""

from __future__ import annotations

import json
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from prunelab.devices import dtype_name
from prunelab.errors import PrunelabError
from prunelab.paths import atomic_dir
from prunelab.zoo.provenance import PROVENANCE_FILE, read_provenance_file

if TYPE_CHECKING:
    from prunelab.compress import PruneResult
    from prunelab.zoo.models import LoadedModel



def versions() -> dict:
    """The versions that produced a result, recorded beside it."""
    import torch
    import transformers

    import prunelab

    return {"prunelab": prunelab.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def save(loaded: LoadedModel, out_dir: str | Path, result: PruneResult | None = None,
         overwrite: bool = False, extra: dict | None = None,
         format: str = "dequantized") -> Path:
    """Write `save_pretrained` output (safetensors) plus prunelab.json, atomically.

    With `format="compressed-tensors"` the quantized layers of `result` are written packed
    (`prunelab.quant_export`); with `format="compact"` each sparse matrix is written as its
    kept weights (or codes) and where they are (`prunelab.compact`); prunelab.json records
    the size on disk either way."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise PrunelabError(f"output directory {out} already exists",
                            "choose a new --out, or remove the old one")
    if format not in ("dequantized", "compact"):
        from prunelab.quant_export import check_format, check_model_for_format

        check_format(format)
        check_model_for_format(loaded.model, format)
    provenance = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": loaded.name, "dequantized": loaded.dequantized,
                  # the precision the weights were computed and are saved in
                  "dtype": dtype_name(_weight_dtype(loaded.model)),
                  **({"zoo": loaded.info["zoo"]} if "zoo" in loaded.info else {})},
        "pruning": result.to_dict() if result else None,
        "versions": versions(),
        **(extra or {}),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if format == "compressed-tensors":
            from prunelab.quant_export import write_compressed_tensors

            write_compressed_tensors(loaded.model, result.quantized if result else {}, tmp)
        elif format == "compact":
            _save_compact(loaded, tmp, result)
        else:
            loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        provenance["storage"] = storage_record(loaded.model, tmp, format)
        provenance["weights_file_bytes"] = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def _save_compact(loaded: LoadedModel, directory: Path, result: PruneResult | None) -> None:
    """save_pretrained into a scratch folder inside `directory`, then its compact form."""
    from prunelab.compact_dirs import write_compact

    dense = directory / ".dense"
    dense.mkdir()
    loaded.model.save_pretrained(dense, safe_serialization=True)
    write_compact(dense, directory, pattern=result.pattern if result else None,
                  quantized=result.quantized if result else None, refuse_dense=False)
    shutil.rmtree(dense)


def _weight_dtype(model):
    """The floating dtype of the model's parameters (the first found; prunelab loads every
    parameter in one dtype)."""
    import torch

    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def storage_record(model, directory: Path, format: str) -> dict:
    """Bytes of the saved weights beside what the same parameters take in fp32 and bf16."""
    on_disk = sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))
    parameters = sum(p.numel() for p in model.parameters())
    return {"format": format, "safetensors_bytes": on_disk, "parameters": parameters,
            "fp32_bytes": 4 * parameters, "bf16_bytes": 2 * parameters}


def read_provenance(directory: str | Path) -> dict:
    """The prunelab.json of a directory written by `save`, checked (one line when there is
    none or it is damaged)."""
    return read_provenance_file(directory)
