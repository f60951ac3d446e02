"""Read the records a model directory carries beside its weights, checked.

`prunelab.json` says how a saved model was made (written by `prunelab.api.save`); `zoo.json`
says where a zoo model came from (written when it is converted). Both are read by
`prunelab info` and by `load_model`. A damaged record (truncated, not JSON, the wrong shape,
missing what its readers need) is refused with one line naming the file and what is wrong,
rather than surfacing later as a KeyError or a division by zero.
"""

from __future__ import annotations

import json
from numbers import Real
from pathlib import Path
from typing import Any

from prunelab.errors import PrunelabError

PROVENANCE_FILE = "prunelab.json"
ZOO_FILE = "zoo.json"

_LAYER_KEYS = {"name": str, "rows": int, "cols": int, "target_sparsity": Real,
               "achieved_sparsity": Real, "zeros_before": int}
_STORAGE_SIZES = ("safetensors_bytes", "fp32_bytes", "bf16_bytes")


class _Damaged(Exception):
    """What is wrong inside a record, before the file's name is put in front of it."""


def read_provenance_file(directory: str | Path) -> dict:
    """The checked contents of `directory/prunelab.json`; PrunelabError when it is absent or
    damaged, naming the file and what is wrong."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        raise PrunelabError(f"{directory} has no {PROVENANCE_FILE}",
                            "pass a directory written by `prunelab prune --out`")
    data = _read_json(path)
    try:
        _check_provenance(data)
    except _Damaged as exc:
        raise _refusal(path, str(exc)) from None
    return data


def read_zoo_file(directory: str | Path) -> dict | None:
    """The checked contents of `directory/zoo.json`, or None where there is none."""
    path = Path(directory) / ZOO_FILE
    if not path.exists():
        return None
    data = _read_json(path)
    try:
        _expect(data, dict, "the whole file")
        _optional(data, "dequantized", bool)
    except _Damaged as exc:
        raise _refusal(path, str(exc)) from None
    return data


def _refusal(path: Path, problem: str) -> PrunelabError:
    if path.name == ZOO_FILE:
        fix = (f"delete {path.parent} so that the zoo model is converted afresh, or pass "
               "another directory")
    else:
        fix = (f"restore {path.name} from a copy, or delete it to use the weights without "
               "their record (`prunelab info` needs it)")
    return PrunelabError(f"{path} is damaged: {problem}", fix)


def _read_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PrunelabError(f"cannot read {path}: {exc.strerror or exc}",
                            "check the file's permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refusal(path, f"not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                             f"{exc.start})") from None
    if not text.strip():
        raise _refusal(path, "the file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        cut = exc.msg.startswith("Unterminated") or exc.pos >= len(text.rstrip())
        raise _refusal(path, f"not valid JSON{', truncated' if cut else ''}: {exc.msg} "
                             f"(line {exc.lineno}, column {exc.colno})") from None


def _check_provenance(data: Any) -> None:
    _expect(data, dict, "the whole file")
    for key in ("model", "pruning"):
        if key not in data:
            raise _Damaged(f"it has no {key!r} entry")
    _expect(data["model"], dict, "'model'")
    _expect(data["model"].get("source"), str, "'model.source'")
    _optional(data["model"], "dequantized", bool, "model.")
    _optional(data["model"], "zoo", dict, "model.")
    _optional(data["model"], "dtype", str, "model.")
    if data["pruning"] is not None:
        _check_pruning(data["pruning"])
    if data.get("storage") is not None:
        storage = data["storage"]
        _expect(storage, dict, "'storage'")
        _expect(storage.get("format"), str, "'storage.format'")
        for key in _STORAGE_SIZES:
            _expect(storage.get(key), Real, f"'storage.{key}'")
            if storage[key] <= 0 and key != "safetensors_bytes":
                raise _Damaged(f"'storage.{key}' is {storage[key]}, not a positive size")
    if data.get("weights_file_bytes") is not None:
        _expect(data["weights_file_bytes"], int, "'weights_file_bytes'")


def _check_pruning(pruning: Any) -> None:
    _expect(pruning, dict, "'pruning'")
    layers = pruning.get("layers", [])
    _expect(layers, list, "'pruning.layers'")
    for number, layer in enumerate(layers):
        where = f"'pruning.layers[{number}]'"
        _expect(layer, dict, where)
        for key, kind in _LAYER_KEYS.items():
            _expect(layer.get(key), kind, f"{where[:-1]}.{key}'")
        _optional(layer, "notes", dict, f"pruning.layers[{number}].")
    _optional(pruning, "options", dict, "pruning.")
    size = pruning.get("model_size")
    if size is not None:
        _expect(size, dict, "'pruning.model_size'")
        for side in ("before", "after"):
            _expect(size.get(side), dict, f"'pruning.model_size.{side}'")
            for key in ("parameters", "bytes"):
                _expect(size[side].get(key), int, f"'pruning.model_size.{side}.{key}'")


_KIND_WORDS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
               Real: "a number", bool: "true or false"}


def _expect(value: Any, kind: type, what: str) -> None:
    # bool is an int to Python, never to a reader of these records
    if isinstance(value, kind) and not (kind in (int, Real) and isinstance(value, bool)):
        return
    found = "nothing" if value is None else f"{type(value).__name__} {_short(value)}"
    raise _Damaged(f"{what} should be {_KIND_WORDS[kind]}, found {found}")


def _optional(data: dict, key: str, kind: type, prefix: str = "") -> None:
    if data.get(key) is not None:
        _expect(data[key], kind, f"'{prefix}{key}'")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
