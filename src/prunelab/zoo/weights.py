"""Read a loaded model's weights into private memory with plain file reads.

transformers memory-maps safetensors files, so a freshly loaded model's weights are the
file's pages. That costs nothing until they are touched, but pruning touches every weight
twice: a forward pass faults the file's pages in (they count in the process's RSS) and
writing the pruned weight makes a private copy of each page (copy on write). A pruned model
then occupies its fp32 size twice over. Reading each tensor into its own buffer instead,
without touching the mapping, keeps one copy; the mapping goes when its last tensor does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


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
        with open(file, "rb") as stream:
            header_size = int.from_bytes(stream.read(8), "little")
            header = json.loads(stream.read(header_size))
            data_start = 8 + header_size
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
