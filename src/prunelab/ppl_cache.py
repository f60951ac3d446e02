"""Remembered perplexities of unmodified models, so that a dense model is measured only once.

Every `prunelab prune` reports the dense model's perplexity beside the pruned one's. The dense
number depends only on the model's files and the token windows it reads, so it is stored in
`$PRUNELAB_HOME/perplexity/<key>.json`, where the key hashes:

- the model directory's weights and config (a sha256 of each file's bytes),
- the windows: their token ids *and* their shape (the same tokens cut into windows of
  another length give another perplexity),
- the dtype and device the model runs in, and the torch and transformers versions, since
  each can move the last digits.

The batch size is left out: it changes only how the windows are grouped.

Hashing a model's files reads all of them (hundreds of MB for a small LLM), so each file's
digest is remembered too, in `$PRUNELAB_HOME/digests/`, keyed by path, size, inode and the
modification and change times; any write to the file changes one of these, and then it is
read again.

Cache files are written atomically and anything unreadable in them counts as a miss, so a
torn or hand-edited file costs a re-measurement, never a wrong number or a crash.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import torch

from prunelab.data.corpora import tokens_digest
from prunelab.paths import cache_dir, write_json_atomic

# Bump when the key's recipe changes, so that old entries are never read with a new meaning.
KEY_VERSION = 1

# What decides a model's outputs: its weights, its config, and any code it ships.
_MODEL_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "config.json", "*.py")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered while the file is unchanged on disk."""
    path = Path(path).resolve()
    stat = path.stat()
    identity = {"path": str(path), "size": stat.st_size, "inode": stat.st_ino,
                "device": stat.st_dev, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}
    memo = cache_dir("digests") / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    remembered = _read_json(memo)
    if (isinstance(remembered, dict) and remembered.get("file") == identity
            and _is_hex_digest(remembered.get("sha256"))):
        return remembered["sha256"]
    digest = hashlib.sha256()
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    value = digest.hexdigest()
    after = path.stat()
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
            stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns):  # not if written while read
        _write(memo, {"file": identity, "sha256": value})
    return value


def weights_digest(directory: Path) -> str:
    """One digest for everything in a model directory that decides its outputs."""
    directory = Path(directory)
    files = sorted({p for pattern in _MODEL_FILES for p in directory.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def cache_key(loaded, windows: torch.Tensor) -> str | None:
    """The key of `loaded`'s perplexity on `windows`, or None where it cannot be known.

    Only a model read from a directory has one; a model built in memory has no files that
    would tell whether it changed.
    """
    directory = getattr(loaded, "path", None)
    if directory is None or not Path(directory).is_dir():
        return None
    import transformers

    params = list(loaded.model.parameters())
    parts = {
        "version": KEY_VERSION,
        "model": weights_digest(Path(directory)),
        "windows": tokens_digest(windows),
        "shape": list(windows.shape),
        "dtypes": sorted({str(p.dtype) for p in params}),
        "devices": sorted({p.device.type for p in params}),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def lookup(key: str) -> float | None:
    """The remembered perplexity under `key`, or None (also for an unreadable entry)."""
    entry = _read_json(_entry_path(key))
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    value = entry.get("perplexity")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 1:  # a perplexity is at least 1
        return None
    return float(value)


def store(key: str, value: float, about: dict | None = None) -> None:
    """Remember `value` under `key`; `about` (model name, source, ...) is for people reading."""
    _write(_entry_path(key), {
        "key": key, "perplexity": value, **(about or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def _entry_path(key: str) -> Path:
    return cache_dir("perplexity") / f"{key}.json"


def _write(path: Path, data: dict) -> None:
    try:
        write_json_atomic(path, data)
    except OSError:  # a full disk or read-only cache costs a re-measurement later, not the run
        pass


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, torn or not JSON: a miss
        return None


def _is_hex_digest(value) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))

