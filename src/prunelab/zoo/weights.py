"""Read a loaded model's weights into private memory with plain file reads.

transformers memory-maps safetensors files, so a freshly loaded model's weights are the
file's pages. That costs nothing until they are touched, but pruning touches every weight
twice: a forward pass faults the file's pages in (they count in the process's RSS) and
writing the pruned weight makes a private copy of each page (copy on write). A pruned model
then occupies its fp32 size twice over. Reading each tensor into its own buffer instead,
without touching the mapping, keeps one copy; the mapping goes when its last tensor does.

Before any of that, `check_weight_files` reads the headers of a directory's weight files (a
few kilobytes each) so that a truncated, random or incomplete checkpoint is refused with one
line naming the file, instead of a long traceback from deep inside the loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import PrunelabError

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
# Bytes per element of the safetensors dtypes whose size is whole bytes; others go unchecked.
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
               "F8_E8M0": 1}
# A real header lists names, dtypes, shapes and offsets: far below this even for thousands
# of tensors. A larger length field means the file is not safetensors at all.
_MAX_HEADER_BYTES = 100_000_000
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
_RESTORE = "copy or download it again, or re-save the model with save_pretrained"


def read_safetensors_header(file: Path) -> tuple[dict, int]:
    """The tensor entries of a safetensors file's header (name -> dtype, shape, offsets) and
    the offset where its tensor data starts.

    PrunelabError naming the file and what is wrong where it is not a whole safetensors
    file: too short, random bytes, truncated, or with tensors that do not tile its data.
    """
    file = Path(file)
    size = file.stat().st_size
    if size < 8:
        raise PrunelabError(f"{file} is not a safetensors file: it holds only {size} bytes",
                            _RESTORE)
    with open(file, "rb") as stream:
        header_size = int.from_bytes(stream.read(8), "little")
        if header_size > _MAX_HEADER_BYTES:
            raise PrunelabError(f"{file} is not a safetensors file: its first 8 bytes do not "
                                "give a plausible header length (random bytes, or another "
                                "format)", _RESTORE)
        if header_size > size - 8:
            raise PrunelabError(f"{file} is truncated: its header should be {header_size:,} "
                                f"bytes but the file holds only {size:,}", _RESTORE)
        raw = stream.read(header_size)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise PrunelabError(f"{file} is not a safetensors file: its header is not a JSON "
                            "object (random bytes, or another format)", _RESTORE)
    header.pop("__metadata__", None)
    data_bytes = size - 8 - header_size
    spans = []
    for name, entry in header.items():
        problem = _entry_problem(entry)
        if problem:
            raise PrunelabError(f"{file} is damaged: tensor {name} {problem}", _RESTORE)
        begin, end = entry["data_offsets"]
        spans.append((begin, end, name))
    spans.sort()
    reach = max((end for _, end, _ in spans), default=0)
    if reach > data_bytes:
        raise PrunelabError(f"{file} is truncated: its tensors need {reach:,} bytes of data "
                            f"but the file holds {data_bytes:,}", _RESTORE)
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise PrunelabError(f"{file} is damaged: tensor {name}'s bytes overlap another's "
                                "or leave a gap", _RESTORE)
        position = end
    if position != data_bytes:
        raise PrunelabError(f"{file} is damaged: {data_bytes - position:,} bytes follow its "
                            "last tensor", _RESTORE)
    return header, 8 + header_size


def _entry_problem(entry: object) -> str | None:
    """What is wrong with one header entry, or None."""
    if not isinstance(entry, dict):
        return "has no description"
    shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
    if not isinstance(dtype, str):
        return "has no dtype"
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        return f"has no valid shape ({shape!r})"
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(n) is int and n >= 0 for n in offsets) and offsets[0] <= offsets[1]):
        return f"has no valid byte range ({offsets!r})"
    item = _ITEM_BYTES.get(dtype)
    numel = 1
    for n in shape:
        numel *= n
    if item is not None and offsets[1] - offsets[0] != numel * item:
        return (f"is {dtype} {shape} ({numel * item:,} bytes) but spans "
                f"{offsets[1] - offsets[0]:,} bytes")
    return None


def check_weight_files(directory: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Check that `directory` holds whole weights, as `from_pretrained` would look for them;
    return each safetensors tensor's file and shape by name (empty for pickled checkpoints).

    Every `*.safetensors` file is checked (prunelab reads them all); an index must name
    shards that exist and hold the tensors it places in them.
    """
    directory = Path(directory)
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    headers = {}
    for file in sorted(directory.glob("*.safetensors")):
        headers[file.name] = read_safetensors_header(file)[0]
        shapes.update({name: (file.name, tuple(entry["shape"]))
                       for name, entry in headers[file.name].items()})
    if not (directory / "model.safetensors").exists() and (directory / SAFETENSORS_INDEX).exists():
        for name, shard in _weight_map(directory / SAFETENSORS_INDEX).items():
            if shard not in headers:
                raise _missing_shard(directory, SAFETENSORS_INDEX, shard)
            if name not in headers[shard]:
                raise PrunelabError(f"{directory / shard} lacks tensor {name}, which "
                                    f"{SAFETENSORS_INDEX} places there",
                                    f"the shard is damaged or from another checkpoint: {_RESTORE}")
        return shapes
    if headers:
        return shapes
    if (directory / "pytorch_model.bin").exists():
        return shapes
    if (directory / PICKLE_INDEX).exists():
        for shard in set(_weight_map(directory / PICKLE_INDEX).values()):
            if not (directory / shard).is_file():
                raise _missing_shard(directory, PICKLE_INDEX, shard)
        return shapes
    raise PrunelabError(f"{directory} holds no weights (no model.safetensors, "
                        f"{SAFETENSORS_INDEX} or pytorch_model.bin)",
                        "pass a directory written by save_pretrained, weights included")


def _weight_map(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrunelabError(f"{index} is not readable JSON ({type(exc).__name__})",
                            f"restore it: {_RESTORE}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not (isinstance(weight_map, dict) and weight_map
            and all(isinstance(v, str) for v in weight_map.values())):
        raise PrunelabError(f"{index} has no 'weight_map' of tensor names to shard files",
                            f"restore it: {_RESTORE}")
    for shard in weight_map.values():
        if Path(shard).name != shard:  # a name only: never a path out of the directory
            raise PrunelabError(f"{index} names shard {shard!r}, which is not a file name",
                                f"restore it: {_RESTORE}")
    return weight_map


def _missing_shard(directory: Path, index: str, shard: str) -> PrunelabError:
    return PrunelabError(f"{directory} is missing {shard}, a shard its {index} names",
                         "copy every shard of the checkpoint into the directory")


def read_weights_privately(model: nn.Module, directory: Path) -> int:
    """Give every tensor of `model` found in `directory`'s safetensors files a private copy.

    Only a tensor that lies in the file's mapping (where the mapping can be seen) and has the
    same name and shape, and whose first and last elements equal the file's, is replaced
    (transformers may convert some weights while loading; those stay as loaded).
    Returns how many tensors were replaced.
    """
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    replaced = 0
    for file in sorted(Path(directory).glob("*.safetensors")):
        mapped = _mapped_ranges(file)
        header, data_start = read_safetensors_header(file)
        with open(file, "rb") as stream:
            for key, entry in header.items():
                target = tensors.get(key)
                dtype = _DTYPES.get(entry.get("dtype", "")) if isinstance(entry, dict) else None
                if (target is None or dtype is None or target.device.type != "cpu"
                        or tuple(target.shape) != tuple(entry["shape"]) or target.numel() == 0
                        or (mapped is not None and not _inside(target.data_ptr(), mapped))):
                    continue
                begin, end = entry["data_offsets"]
                fresh = torch.empty(entry["shape"], dtype=dtype)
                buffer = fresh.reshape(-1).view(torch.uint8).numpy()
                if end - begin != buffer.nbytes:
                    continue
                stream.seek(data_start + begin)
                stream.readinto(memoryview(buffer))
                fresh = fresh.to(target.dtype)
                if not _same_ends(fresh, target):
                    continue
                with torch.no_grad():
                    target.data = fresh
                replaced += 1
    return replaced


def _mapped_ranges(file: Path) -> list[tuple[int, int]] | None:
    """Address ranges where `file` is mapped into this process; None where that is unknown."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return None
    name = str(Path(file).resolve())
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == name:
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def _inside(address: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start <= address < end for start, end in ranges)


def _same_ends(a: torch.Tensor, b: torch.Tensor, count: int = 8) -> bool:
    """Compare a few elements only: reading all of `b` would fault the whole mapping in."""
    a, b = a.reshape(-1), b.detach().reshape(-1)
    return torch.equal(a[:count], b[:count]) and torch.equal(a[-count:], b[-count:])
