"""Compact sparse checkpoints: each pruned matrix stored as where its kept weights are and
their values, so that a pruned model really is smaller on disk.

A compact directory is an ordinary model directory (config.json, tokenizer, prunelab.json)
whose model.safetensors holds, for each packed matrix of module `<m>` (its `<m>.weight`
gone), one of these layouts (the full description, with sizes, is docs/guides/compact.md):

- "sparse-bitmask", as compressed-tensors' former format of that name: `<m>.shape` (int64
  [rows, cols]), `<m>.compressed` (the kept values, row by row, in the checkpoint's dtype),
  `<m>.bitmask` (uint8 [rows, ceil(cols / 8)], one bit per weight, bit j of byte k is column
  8k + j, as numpy's `packbits(..., bitorder="little")` along each row) and
  `<m>.row_offsets` (int64 [rows], where each row's values start). Unstructured sparsity.
- "sparse-24-bitmask", as compressed-tensors' former 2:4 format: `<m>.shape` (int64 [2, 1]),
  `<m>.compressed` ([rows, cols / 2]) and `<m>.bitmask` as above. Written only on request
  (`layout="compressed-tensors"`): for 2:4 it costs 4 bits per group of 4 where
  "nm-index" costs 3.
- "nm-index" (prunelab's own), for N:M: `<m>.shape`, `<m>.compressed` ([rows, cols·N/M]) and
  `<m>.pattern_index`: for every group of M consecutive inputs of a row, which of the
  C(M, N) choices of N positions it keeps (their rank in lexicographic order), in
  ceil(log2 C(M, N)) bits, packed little-endian into uint8. For 2:4 that is 3 bits per group
  (6 choices), 0.75 bits per weight; a bitmask takes 1.
- Quantized codes (prunelab's own, for pruned-then-quantized models): the positions as
  "sparse-bitmask" (without row offsets) or "nm-index", and instead of float values
  `<m>.codes`: the kept integer codes, `bits` bits each, packed little-endian into uint8;
  `<m>.weight_scale` (float32 [rows, groups]) and, for an asymmetric grid,
  `<m>.weight_zero_point` (uint8 [rows, groups]). A weight is (code − zero point) · scale;
  a pruned weight is the zero point's code (exactly 0).

Which matrices are packed, and how, is recorded in compact.json (`COMPACT_FILE`); where every
packed matrix is in one of compressed-tensors' two former formats, config.json also carries
their `quantization_config` / `sparsity_config` entry so that readers of those formats
recognise it. Unpacking restores the dense tensors bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from prunelab.checks import COMPACT_FILE
from prunelab.checks import check_compact_layout as check_layout
from prunelab.checks import check_compact_pattern as check_pattern
from prunelab.checks import check_value_dtype
from prunelab.errors import PrunelabError

FORMAT_NAME = "prunelab-compact"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
_FIELDS = ("shape", "compressed", "bitmask", "row_offsets", "pattern_index", "codes",
           "weight_scale", "weight_zero_point")
_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------
# bit packing
# ----------------------------------------------------------------------------------------

def pack_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Non-negative integers below 2^width, each in `width` bits, packed little-endian into
    uint8 (value i occupies bits i·width … i·width + width − 1 of the stream)."""
    flat = values.reshape(-1).to(torch.int64).numpy()
    bits = ((flat[:, None] >> np.arange(width)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bits.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, width: int, count: int) -> torch.Tensor:
    """The `count` integers of `width` bits that `pack_bits` packed (int64)."""
    bits = np.unpackbits(packed.numpy(), count=count * width, bitorder="little")
    weights = (1 << np.arange(width)).astype(np.int64)
    return torch.from_numpy(bits.reshape(count, width).astype(np.int64) @ weights)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool [rows, cols] mask as uint8 [rows, ceil(cols / 8)], little bit order per row."""
    return torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))


def unpack_mask(bitmask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    bits = np.unpackbits(bitmask.numpy(), axis=-1, count=shape[1], bitorder="little")
    return torch.from_numpy(bits.astype(bool))


@dataclass(frozen=True)
class GroupCode:
    """The choices of N kept positions out of M, in lexicographic order, and the bits their
    rank takes."""

    n: int
    m: int

    @property
    def choices(self) -> torch.Tensor:  # bool [C(M, N), M]
        rows = [[j in combo for j in range(self.m)] for combo in combinations(range(self.m),
                                                                                self.n)]
        return torch.tensor(rows, dtype=torch.bool)

    @property
    def width(self) -> int:
        return max(1, math.ceil(math.log2(math.comb(self.m, self.n))))

    def rank(self, groups: torch.Tensor) -> torch.Tensor:
        """Each group's choice (bool [groups, M] with exactly N set) as its rank."""
        lookup = torch.full((1 << self.m,), -1, dtype=torch.int64)
        powers = 1 << torch.arange(self.m, dtype=torch.int64)
        lookup[(self.choices.to(torch.int64) * powers).sum(1)] = torch.arange(
            len(self.choices))
        return lookup[(groups.to(torch.int64) * powers).sum(1)]


def parse_group(pattern: str | None) -> GroupCode | None:
    if not pattern:
        return None
    n, m = (int(part) for part in str(pattern).split(":"))
    return GroupCode(n, m)


def nm_positions(kept: torch.Tensor, group: GroupCode, name: str) -> torch.Tensor:
    """Exactly N positions per group of M: the non-zero weights, and where a group has fewer,
    its first zero positions (they store their zero). PrunelabError where a group holds more
    than N non-zero weights."""
    rows, cols = kept.shape
    groups = kept.reshape(-1, group.m)
    over = groups.sum(1) > group.n
    if over.any():
        first = int(over.nonzero()[0, 0])
        raise PrunelabError(f"{name} breaks the {group.n}:{group.m} pattern (row "
                            f"{first * group.m // cols}, columns {first * group.m % cols}-"
                            f"{first * group.m % cols + group.m - 1} keep "
                            f"{int(groups[first].sum())} weights)",
                            "pack without the pattern (prunelab pack stores any sparsity as a "
                            "bitmask), or prune again with --pattern")
    # rank positions: kept weights first, then the earliest zeros
    score = groups.to(torch.int64) * (2 * group.m) + torch.arange(group.m, 0, -1)
    chosen = torch.zeros_like(groups)
    chosen.scatter_(1, score.topk(group.n, dim=1).indices, True)
    return chosen.reshape(rows, cols)


# ----------------------------------------------------------------------------------------
# one matrix
# ----------------------------------------------------------------------------------------

def _nonzero_bits(tensor: torch.Tensor) -> torch.Tensor:
    """Where the stored bits are not all zero (so -0.0 is kept, and comes back as -0.0)."""
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return tensor.contiguous().view(as_int[tensor.element_size()]) != 0


@dataclass
class Codes:
    """A layer's integer codes with their grid (`prunelab.methods.quant.QuantizedWeight`
    reduced to what the file stores)."""

    codes: torch.Tensor  # uint8 [rows, cols]
    scales: torch.Tensor  # float32 [rows, groups]
    zeros: torch.Tensor  # uint8 [rows, groups]
    bits: int
    group_size: int
    symmetric: bool

    def zero_codes(self) -> torch.Tensor:
        return self.zeros.repeat_interleave(self.group_size, dim=1)


def pack_matrix(name: str, weight: torch.Tensor, *, group: GroupCode | None = None,
                layout: str = "prunelab", codes: Codes | None = None
                ) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The tensors (named `<name>.<field>`) and the compact.json entry storing `weight`, or
    None when no layout is smaller than the dense matrix."""
    rows, cols = weight.shape
    if codes is not None:
        kept = codes.codes != codes.zero_codes()
    else:
        kept = _nonzero_bits(weight)
    # the pattern's index holds this matrix only if every group keeps at most N weights
    use_group = group is not None and cols % group.m == 0 and int(
        kept.reshape(-1, group.m).sum(1).max()) <= group.n
    shape = torch.tensor([rows, cols], dtype=torch.int64)
    entry: dict = {"shape": [rows, cols], "dtype": str(weight.dtype).removeprefix("torch.")}
    out: dict[str, torch.Tensor] = {}
    if use_group and layout == "prunelab":
        positions = nm_positions(kept, group, name)
        out["pattern_index"] = pack_bits(group.rank(positions.reshape(-1, group.m)),
                                         group.width)
        entry.update(layout="nm-index", pattern=f"{group.n}:{group.m}")
    elif use_group and (group.n, group.m) == (2, 4) and codes is None:
        positions = nm_positions(kept, group, name)
        out["bitmask"] = pack_mask(positions)
        shape = shape.reshape(-1, 1)
        entry.update(layout="sparse-24-bitmask", pattern="2:4")
    else:
        positions = kept
        out["bitmask"] = pack_mask(positions)
        entry["layout"] = "sparse-bitmask"
        if codes is None:
            counts = positions.sum(1)
            out["row_offsets"] = torch.cumsum(counts, 0) - counts
    out["shape"] = shape
    count = int(positions.sum())
    entry["kept"] = count
    if codes is None:
        values = weight[positions]
        out["compressed"] = values.reshape(rows, -1) if "pattern" in entry else values
    else:
        out["codes"] = pack_bits(codes.codes[positions], codes.bits)
        out["weight_scale"] = codes.scales.to(torch.float32).contiguous()
        if not codes.symmetric:
            out["weight_zero_point"] = codes.zeros.to(torch.uint8).contiguous()
        entry["codes"] = {"bits": codes.bits, "group_size": codes.group_size,
                          "symmetric": codes.symmetric}
    size = sum(t.numel() * t.element_size() for t in out.values())
    if codes is None and size >= weight.numel() * weight.element_size():
        return None
    return {f"{name}.{key}": value.contiguous() for key, value in out.items()}, entry


def unpack_matrix(name: str, tensors: dict[str, torch.Tensor], entry: dict) -> torch.Tensor:
    """The dense weight of `name` from its packed tensors; PrunelabError where they disagree
    with each other or with compact.json."""
    def field(key: str) -> torch.Tensor:
        try:
            return tensors[f"{name}.{key}"]
        except KeyError:
            raise _damaged(f"it has no tensor {name}.{key}") from None

    rows, cols = (int(n) for n in field("shape").reshape(-1).tolist())
    if [rows, cols] != list(entry.get("shape", [])):
        raise _damaged(f"{name}.shape is [{rows}, {cols}] but compact.json says "
                       f"{entry.get('shape')}")
    layout = entry.get("layout")
    if layout == "nm-index":
        group = parse_group(entry.get("pattern"))
        if cols % group.m:
            raise _damaged(f"{name}: {cols} columns do not split into groups of {group.m}")
        count = rows * cols // group.m
        index = field("pattern_index")
        if index.numel() != math.ceil(count * group.width / 8):
            raise _damaged(f"{name}.pattern_index holds {index.numel()} bytes, "
                           f"{math.ceil(count * group.width / 8)} expected")
        ranks = unpack_bits(index, group.width, count)
        if int(ranks.max()) >= math.comb(group.m, group.n):
            raise _damaged(f"{name}.pattern_index names a choice that does not exist")
        positions = group.choices[ranks].reshape(rows, cols)
    elif layout in ("sparse-bitmask", "sparse-24-bitmask"):
        bitmask = field("bitmask")
        if tuple(bitmask.shape) != (rows, math.ceil(cols / 8)) or bitmask.dtype != torch.uint8:
            raise _damaged(f"{name}.bitmask is {bitmask.dtype} {list(bitmask.shape)}, uint8 "
                           f"[{rows}, {math.ceil(cols / 8)}] expected")
        positions = unpack_mask(bitmask, (rows, cols))
    else:
        raise _damaged(f"{name} has layout {layout!r}, which this prunelab does not read")
    count = int(positions.sum())
    codes = entry.get("codes")
    if codes is None:
        values = field("compressed").reshape(-1)
        if values.numel() != count:
            raise _damaged(f"{name}: its mask keeps {count} weights but it stores "
                           f"{values.numel()} values")
        if f"{name}.row_offsets" in tensors:
            counts = positions.sum(1)
            if not torch.equal(tensors[f"{name}.row_offsets"], torch.cumsum(counts, 0) - counts):
                raise _damaged(f"{name}.row_offsets disagree with its bitmask")
        dense = torch.zeros((rows, cols), dtype=values.dtype)
        dense[positions] = values
        return dense
    from prunelab.methods.quant import dequantize

    bits, group_size = int(codes["bits"]), int(codes["group_size"])
    scales = field("weight_scale")
    if cols % group_size or tuple(scales.shape) != (rows, cols // group_size):
        raise _damaged(f"{name}.weight_scale is {list(scales.shape)}, "
                       f"[{rows}, {cols // max(group_size, 1)}] expected")
    zeros = (field("weight_zero_point") if not codes["symmetric"]
             else torch.full_like(scales, 2 ** (bits - 1), dtype=torch.uint8))
    packed = field("codes")
    if packed.numel() != math.ceil(count * bits / 8):
        raise _damaged(f"{name}: its mask keeps {count} weights but it stores "
                       f"{packed.numel()} bytes of {bits}-bit codes "
                       f"({math.ceil(count * bits / 8)} expected)")
    full = zeros.repeat_interleave(group_size, dim=1).clone()
    full[positions] = unpack_bits(packed, bits, count).to(torch.uint8)
    return dequantize(full, scales, zeros, group_size)


def _damaged(problem: str) -> PrunelabError:
    return PrunelabError(f"compact checkpoint damaged: {problem}",
                         "copy or write it again (prunelab pack, or prune --format compact)")


# ----------------------------------------------------------------------------------------
# a whole state dict / directory
# ----------------------------------------------------------------------------------------

def prunable_names(directory: Path) -> list[str]:
    """The prunable layers' module names of the model a directory's config.json describes
    (built on the meta device: no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunelab import arch

    config = AutoConfig.from_pretrained(directory)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return [name for name, layer in arch.named_prunable_layers(skeleton).items()
            if getattr(layer, "weight", None) is not None and layer.weight.dim() == 2]


def pack_state(state: dict[str, torch.Tensor], layers: list[str], *,
               pattern: str | None = None, layout: str = "prunelab",
               quantized: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The compact tensors of a state dict and compact.json's `layers` entry. `layers` are
    the prunable modules (their `.weight` is packed where that is smaller); `quantized` maps
    module names to their QuantizedWeight, whose codes are stored instead of values."""
    check_layout(layout)
    check_pattern(pattern)
    group = parse_group(pattern)
    out = dict(state)
    entries: dict[str, dict] = {}
    for name in layers:
        weight = state.get(f"{name}.weight")
        if weight is None or weight.dim() != 2:
            continue
        codes = _codes(name, weight, (quantized or {}).get(name))
        packed = pack_matrix(name, weight, group=group, layout=layout, codes=codes)
        if packed is None:
            continue
        tensors, entry = packed
        del out[f"{name}.weight"]
        out.update(tensors)
        entries[name] = entry
    return out, entries


def _codes(name: str, weight: torch.Tensor, record) -> Codes | None:
    if record is None:
        return None
    if record.group_index is not None:
        raise PrunelabError(f"{name} was quantized with act-order without static groups, "
                            "whose scales the compact format cannot store in column order",
                            "quantize with static groups, or save --format dequantized")
    from prunelab.methods.quant import dequantize

    codes = record.codes_for(weight)  # read once: they are checked, then packed
    if not torch.equal(weight.to(torch.float32),
                       dequantize(codes, record.scales, record.zeros, record.group_size)):
        raise PrunelabError(f"{name}'s weight is not its quantization's dequantized value",
                            "save --format dequantized (the weights changed after quantizing)")
    return Codes(codes.cpu(), record.scales.cpu(), record.zeros.cpu(), record.bits,
                 record.group_size, record.symmetric)


def unpack_state(tensors: dict[str, torch.Tensor], layers: dict[str, dict]
                 ) -> dict[str, torch.Tensor]:
    """The dense state dict of compact tensors (every packed field replaced by `.weight`)."""
    dense = {}
    packed = set()
    for name, entry in layers.items():
        if not isinstance(entry, dict):
            raise _damaged(f"compact.json's entry for {name} is not a mapping")
        dense[f"{name}.weight"] = unpack_matrix(name, tensors, entry)
        packed.update(f"{name}.{key}" for key in _FIELDS)
    for key, value in tensors.items():
        if key not in packed:
            dense[key] = value
    return dense


def is_compact(directory: str | Path) -> bool:
    return (Path(directory) / COMPACT_FILE).is_file()


def read_manifest(directory: str | Path) -> dict:
    """compact.json, checked in one line."""
    path = Path(directory) / COMPACT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrunelabError(f"{directory} is not a compact checkpoint (no {COMPACT_FILE})",
                            "unpack a directory written by `prunelab pack` or "
                            "`prunelab prune --format compact`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(f"{path} is not readable JSON ({type(exc).__name__})") from None
    if not (isinstance(data, dict) and data.get("format") == FORMAT_NAME
            and isinstance(data.get("layers"), dict)):
        raise _damaged(f"{path} is not a {FORMAT_NAME} manifest")
    if data.get("version") != FORMAT_VERSION:
        raise PrunelabError(f"{path} is {FORMAT_NAME} version {data.get('version')}, this "
                            f"prunelab reads version {FORMAT_VERSION}",
                            "upgrade prunelab, or unpack it with the version that wrote it")
    return data


def check_compact_directory(directory: str | Path, stored: dict) -> None:
    """Refuse, reading only compact.json, a compact directory whose manifest names a matrix
    the weights lack (`stored`: the tensor names of its checked weight files; the counts are
    checked as it unpacks)."""
    for name, entry in read_manifest(directory)["layers"].items():
        if not isinstance(entry, dict):
            raise _damaged(f"compact.json's entry for {name} is not a mapping")
        needed = ["shape", "codes" if entry.get("codes") else "compressed",
                  "pattern_index" if entry.get("layout") == "nm-index" else "bitmask"]
        for key in needed:
            if f"{name}.{key}" not in stored:
                raise _damaged(f"its weights have no tensor {name}.{key}, which compact.json "
                               "lists")


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a directory's safetensors files (checked by the caller first:
    `prunelab.zoo.weights.check_weight_files`)."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def load_dense_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """A compact directory's dense state dict, every tensor as it was before packing."""
    manifest = read_manifest(directory)
    return unpack_state(load_tensors(Path(directory)), manifest["layers"])


def load_model_weights(directory: str | Path, dtype: torch.dtype | None = None):
    """The model of a compact directory (architecture from config.json), weights unpacked;
    in `dtype`, or in the dtype its values were stored in."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    state = load_dense_state(directory)
    stored = _DTYPE_NAMES.get(read_manifest(directory).get("dtype"), torch.float32)
    config = AutoConfig.from_pretrained(directory)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or stored)
    missing, unexpected = model.load_state_dict(
        {k: v.to(dtype or stored) if v.is_floating_point() else v for k, v in state.items()},
        strict=False)
    tied = _tied_keys(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise _damaged(f"its tensors do not match config.json's model (missing "
                       f"{missing[:2]}, unexpected {unexpected[:2]})")
    return model.eval()


def _tied_keys(model) -> set[str]:
    keys = set()
    if getattr(model.config, "tie_word_embeddings", False):
        keys.add("lm_head.weight")
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys.update(tied)
    return keys


# ----------------------------------------------------------------------------------------
# sizes
# ----------------------------------------------------------------------------------------

def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


# The N:M patterns `model_account` looks for in a model's weights, sparsest first.
_KNOWN_PATTERNS = ("1:4", "2:8", "2:4", "4:8")


def detect_pattern(state: dict[str, torch.Tensor], layers: list[str]) -> str | None:
    """The sparsest known N:M pattern every prunable matrix keeps (None: unstructured)."""
    weights = [state[f"{n}.weight"] for n in layers if f"{n}.weight" in state]
    for pattern in _KNOWN_PATTERNS:
        group = parse_group(pattern)
        if weights and all(w.shape[1] % group.m == 0 and int(
                _nonzero_bits(w).reshape(-1, group.m).sum(1).max()) <= group.n
                for w in weights):
            return pattern
    return None


def model_account(model, *, values: str = "bf16", layout: str = "prunelab") -> dict:
    """`physical_account` of a model in memory (nothing written): its weights as
    save_pretrained stores them (a tied tensor once), in `values` dtype, dense and compact."""
    from prunelab import arch

    dtype = check_dtype(values)
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.numel() and tensor.data_ptr() in seen:
            continue  # a tied weight: stored once
        seen.add(tensor.data_ptr())
        tensor = tensor.detach().cpu()
        state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() \
            else tensor
    names = [n for n, layer in arch.named_prunable_layers(model).items()
             if getattr(layer, "weight", None) is not None and layer.weight.dim() == 2]
    pattern = detect_pattern(state, names)
    packed, _ = pack_state(state, names, pattern=pattern, layout=layout)
    return {"values": values, "layout": layout, "pattern": pattern,
            "dense_bytes": tensor_bytes(state), "compact_bytes": tensor_bytes(packed),
            "prunable_dense_bytes": sum(tensor_bytes({n: state[f"{n}.weight"]}) for n in names
                                        if f"{n}.weight" in state),
            "prunable_compact_bytes": sum(tensor_bytes({k: v}) for k, v in packed.items()
                                          if k.rsplit(".", 1)[0] in names)}


# ----------------------------------------------------------------------------------------
# directories
# ----------------------------------------------------------------------------------------

def manifest(layers: dict[str, dict], dtype: str, pattern: str | None, layout: str) -> dict:
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "dtype": dtype,
            "pattern": pattern, "layout": layout, "layers": layers}


def compressed_tensors_config(layers: dict[str, dict], state: dict) -> dict | None:
    """config.json's `quantization_config` naming compressed-tensors' former sparse format,
    where every packed matrix is in it (None otherwise: prunelab's own layouts)."""
    kinds = {entry["layout"] for entry in layers.values()}
    if not layers or "codes" in json.dumps(list(layers.values())) or len(kinds) != 1 \
            or not kinds <= {"sparse-bitmask", "sparse-24-bitmask"}:
        return None
    kind = kinds.pop()
    total = sum(math.prod(e["shape"]) for e in layers.values())
    kept = sum(e["kept"] for e in layers.values())
    return {"quant_method": "compressed-tensors", "format": "dense",
            "sparsity_config": {"format": kind, "global_sparsity": round(1 - kept / total, 6),
                                "sparsity_structure": "2:4" if kind == "sparse-24-bitmask"
                                else "unstructured",
                                "targets": sorted(layers), "ignore": []}}


def refuse_unsupported(source: Path) -> None:
    """Refuse what the compact format does not hold: packed integer codes, and structurally
    pruned models (their per-layer shapes need their own loader)."""
    from prunelab.structure import STRUCTURE_KEY

    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(config, dict) and STRUCTURE_KEY in config:
        raise PrunelabError(f"{source} is structurally pruned (rows and columns removed, "
                            "not zeroed): the compact format stores zeroed weights only",
                            "keep it as it is: its file is already smaller")
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if isinstance(quant, dict) and quant.get("format") == "pack-quantized":
        raise PrunelabError(f"{source} is a packed compressed-tensors checkpoint: its codes "
                            "are packed already, and its zeros cannot be told apart",
                            "prune/quantize again with --format compact, or pack the "
                            "dequantized directory")


def check_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype of `pack --dtype NAME`; None for "keep" (the checkpoint's own)."""
    if name is None:
        return None
    check_value_dtype(name)
    return {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16,
            "fp16": torch.float16}[name]
