"""Compact checkpoints as directories: pack a model directory, unpack a compact one, and the
physical account of either (bytes dense and compact). The format itself, and the loader,
are `prunelab.compact`; this module adds what needs the checked weight files and the
directory's prunelab.json (`prunelab.zoo`), which the loader's own checks already read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from prunelab.compact import (COMPACT_FILE, FORMAT_NAME, WEIGHTS_FILE, check_dtype,
                              check_layout, compressed_tensors_config, detect_pattern,
                              is_compact, load_dense_state, load_tensors, manifest, pack_state,
                              prunable_names, read_manifest, refuse_unsupported, tensor_bytes,
                              unpack_state)
from prunelab.errors import PrunelabError


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a directory's safetensors files, checked first (a truncated or damaged
    file is refused in one line)."""
    from prunelab.zoo.weights import check_weight_files

    check_weight_files(directory)
    return load_tensors(directory)


def physical_account(directory: str | Path, *, dtype: torch.dtype | None = None,
                     layout: str = "prunelab") -> dict:
    """Bytes of a directory's weights dense and compact, whole model and prunable matrices
    alone. For a dense directory the compact side is what `pack` would write (computed, not
    written); for a compact one the dense side is what `unpack` would write."""
    directory = Path(directory)
    compact = is_compact(directory)
    if not compact:
        refuse_unsupported(directory)
    tensors = read_tensors(directory)
    names = prunable_names(directory)
    if compact:
        manifest = read_manifest(directory)
        dense_state = unpack_state(tensors, manifest["layers"])
        packed_state, layers = tensors, manifest["layers"]
        pattern = manifest.get("pattern")
    else:
        dense_state = tensors
        if dtype is not None:
            dense_state = {k: v.to(dtype) if v.is_floating_point() else v
                           for k, v in tensors.items()}
        # as `pack` chooses it: the recorded pattern, or one found in the weights
        pattern = _recorded_pattern(directory) or detect_pattern(dense_state, names)
        packed_state, layers = pack_state(dense_state, names, pattern=pattern, layout=layout)
    dense_linear = sum(tensor_bytes({k: dense_state[f"{k}.weight"]}) for k in names
                       if f"{k}.weight" in dense_state)
    packed_linear = sum(tensor_bytes({k: v}) for k, v in packed_state.items()
                        if k.rsplit(".", 1)[0] in names)
    return {"dense_bytes": tensor_bytes(dense_state), "compact_bytes": tensor_bytes(packed_state),
            "prunable_dense_bytes": dense_linear, "prunable_compact_bytes": packed_linear,
            "packed_matrices": len(layers), "prunable_matrices": len(names),
            "pattern": pattern, "measured_from": "compact" if compact else "dense"}


def _recorded_pattern(directory: Path) -> str | None:
    from prunelab.zoo.provenance import PROVENANCE_FILE, read_provenance_file

    if not (directory / PROVENANCE_FILE).exists():
        return None
    pruning = read_provenance_file(directory).get("pruning") or {}
    pattern = pruning.get("pattern")
    return pattern if isinstance(pattern, str) else None


def write_compact(source: Path, target: Path, *, pattern: str | None = None,
                  layout: str = "prunelab", dtype: torch.dtype | None = None,
                  quantized: dict | None = None, refuse_dense: bool = True) -> dict:
    """Write the compact form of model directory `source` into the (existing, empty)
    directory `target`: its other files copied, its weights packed. Returns compact.json."""
    from safetensors.torch import save_file

    if is_compact(source):
        raise PrunelabError(f"{source} is already a compact checkpoint",
                            "it is packed: nothing to do (unpack it first to repack)")
    refuse_unsupported(source)
    state = read_tensors(source)
    if dtype is not None:
        if quantized:
            raise PrunelabError("quantized codes keep their own grid: a value dtype does not "
                                "apply", "leave out --dtype")
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    names = prunable_names(source)
    if pattern is None:  # e.g. quantized after an N:M pruning, or no prunelab.json
        pattern = detect_pattern(state, names)
    packed, layers = pack_state(state, names, pattern=pattern, layout=layout,
                                quantized=quantized)
    if not layers and refuse_dense:
        raise PrunelabError(f"{source} has no sparse matrix that packing would make smaller "
                            f"(of its {len(names)} prunable matrices, none has enough zeros)",
                            "prune it first (prunelab prune), or keep it dense")
    floats = {str(v.dtype).removeprefix("torch.") for k, v in state.items()
              if v.is_floating_point()}
    value_dtype = floats.pop() if len(floats) == 1 else "mixed"
    for item in source.iterdir():
        if item.suffix == ".safetensors" or item.name in (
                "model.safetensors.index.json", COMPACT_FILE):
            continue
        if item.is_file():
            shutil.copy2(item, target / item.name)
    save_file(packed, str(target / WEIGHTS_FILE), metadata={"format": "pt",
                                                           "prunelab": FORMAT_NAME})
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    if dtype is not None:
        config["dtype"] = value_dtype
    entry = compressed_tensors_config(layers, packed)
    if entry is not None:
        config["quantization_config"] = entry
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    record = manifest(layers, value_dtype, pattern, layout)
    (target / COMPACT_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def write_dense(source: Path, target: Path) -> None:
    """Write the dense form of compact directory `source` into the directory `target`."""
    from safetensors.torch import save_file

    record = read_manifest(source)
    state = unpack_state(read_tensors(source), record["layers"])
    for item in source.iterdir():
        if item.suffix == ".safetensors" or item.name == COMPACT_FILE:
            continue
        if item.is_file():
            shutil.copy2(item, target / item.name)
    save_file(state, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and "sparsity_config" in quant:
        del config["quantization_config"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _storage(directory: Path, format: str) -> dict:
    """prunelab.json's `storage` record of a written directory (sizes of its weight files)."""
    on_disk = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    state = load_dense_state(directory) if format == "compact" else read_tensors(directory)
    parameters = sum(t.numel() for t in state.values())
    return {"format": format, "safetensors_bytes": on_disk, "parameters": parameters,
            "fp32_bytes": 4 * parameters, "bf16_bytes": 2 * parameters}


def update_provenance(directory: Path, format: str, extra: dict | None = None) -> None:
    """Rewrite a written directory's prunelab.json storage record, if it has one."""
    from prunelab.zoo.provenance import PROVENANCE_FILE

    path = directory / PROVENANCE_FILE
    if not path.exists():
        return
    data = json.loads(path.read_text())
    data["storage"] = _storage(directory, format)
    data["weights_file_bytes"] = data["storage"]["safetensors_bytes"]
    data.update(extra or {})
    path.write_text(json.dumps(data, indent=2) + "\n")


def pack(directory: str | Path, out: str | Path, *, layout: str = "prunelab",
         dtype: str = "keep", overwrite: bool = False) -> dict:
    """Write the compact form of model directory `directory` to `out` (atomically)."""
    from prunelab.paths import atomic_dir

    source, out = Path(directory), Path(out)
    check_layout(layout)
    value_dtype = check_dtype(dtype)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        record = write_compact(source, tmp, pattern=_recorded_pattern(source), layout=layout,
                               dtype=value_dtype)
        update_provenance(tmp, "compact")
    return record


def unpack(directory: str | Path, out: str | Path, *, overwrite: bool = False) -> None:
    """Write the dense form of compact directory `directory` to `out` (atomically)."""
    from prunelab.paths import atomic_dir

    source = Path(directory)
    read_manifest(source)
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        write_dense(source, tmp)
        update_provenance(tmp, "dequantized")


