"""Packed checkpoints of quantized models, in the `compressed-tensors` library's format.

"pack-quantized" is the format vLLM and transformers read for GPTQ / W4A16 models: each
quantized linear stores `weight_packed` (the integer codes packed into int32), `weight_scale`
per group and, when asymmetric, `weight_zero_point` (packed too), and `config.json` carries a
`quantization_config`. The file is written with the library itself, through its own
lifecycle (`apply_quantization_config`, then `ModelCompressor.compress_model`), from the
codes, scales and zero points the quantizer chose, and loaded back with the library
(`load_compressed_tensors`) to the same dequantized weights, bit for bit: scales are kept in
float32 so that (q − z) · s is the same float32 product prunelab evaluated.

Symmetric grids are what `transformers`' `from_pretrained` loads (checked for every bit width,
group size and per channel in tests/test_packed_roundtrip.py). An asymmetric grid's zero point
is written packed along the output rows, as the library's compressor packs it; the loader in
transformers (compressed-tensors 0.20.1, transformers 5.25) expects it unpacked and stops with
a size mismatch, so `prunelab quantize --format compressed-tensors` is symmetric unless
`--asymmetric` is given, and then says so (`ASYMMETRIC_PACKED_NOTE`).

The library is optional (`pip install 'prunelab[compressed-tensors]'`); it is imported only
here, and only when this format is asked for.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from torch import nn

from prunelab import arch
from prunelab.checks import CHECKPOINT_FORMATS as FORMATS
from prunelab.checks import check_format_name
from prunelab.errors import PrunelabError
from prunelab.methods.quant import QuantizedWeight

INSTALL_HINT = "pip install 'prunelab[compressed-tensors]'"

ASYMMETRIC_PACKED_NOTE = (
    "note: an asymmetric packed checkpoint is read back only by prunelab.quant_export."
    "load_compressed_tensors (Python), not by transformers' from_pretrained nor prunelab's "
    "commands (they expect the zero point unpacked); quantize without --asymmetric for one "
    "that loads")


def check_packed_loads(directory: str | Path) -> None:
    """Refuse, in one line, a packed checkpoint that `from_pretrained` cannot load (an
    asymmetric grid), before it tries and reports a size mismatch. For a model loader."""
    try:
        quant = json.loads((Path(directory) / "config.json").read_text()).get(
            "quantization_config") or {}
        packed = quant.get("format") == "pack-quantized"
        groups = (quant.get("config_groups") or {}) if packed else {}
        asymmetric = any((group.get("weights") or {}).get("symmetric") is False
                         for group in groups.values())
    except (OSError, ValueError, AttributeError):
        return  # not a packed checkpoint, or damaged: the loader's own checks say so
    if asymmetric:
        raise PrunelabError(
            f"{directory} is an asymmetric packed checkpoint, which transformers cannot load "
            "(it expects the zero point unpacked)",
            "load it in Python with prunelab.quant_export.load_compressed_tensors, or "
            "quantize again without --asymmetric")


def check_format(format: str, options: dict | None = None) -> None:
    """Refuse an unknown format, a missing library, or options the format cannot store;
    before any model is loaded."""
    check_format_name(format)
    if format != "compressed-tensors":
        return
    options = options or {}
    if _truthy(options.get("act_order")) and not _truthy(options.get("static_groups", True)):
        raise PrunelabError("act-order without static groups keeps scales in the order the "
                            "columns were quantized, which the compressed-tensors writer "
                            "cannot store",
                            "add --option static_groups=true, or save --format dequantized")
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise PrunelabError("--format compressed-tensors needs the compressed-tensors library",
                            INSTALL_HINT) from None


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def check_model_for_format(model: nn.Module, format: str) -> None:
    """Refuse layers the packed format cannot hold (it stores nn.Linear weights only)."""
    if format != "compressed-tensors":
        return
    for name, layer in arch.named_prunable_layers(model).items():
        if not isinstance(layer, nn.Linear):
            raise PrunelabError(
                f"{name} is a {type(layer).__name__}, which the "
                "compressed-tensors format does not store (it packs nn.Linear weights)",
                "save with --format dequantized")


def _scheme_args(records: dict[str, QuantizedWeight]) -> dict:
    """The one QuantizationArgs every quantized layer shares (or an error)."""
    kinds = {(r.bits, r.symmetric, r.per_channel, None if r.per_channel else r.group_size)
             for r in records.values()}
    if len(kinds) != 1:
        raise PrunelabError("the quantized layers do not share one bit width and grid",
                            "save with --format dequantized")
    if any(r.group_index is not None for r in records.values()):
        raise PrunelabError("act-order without static groups cannot be stored in the "
                            "compressed-tensors format", "save with --format dequantized")
    bits, symmetric, per_channel, group_size = kinds.pop()
    args = {"num_bits": bits, "type": "int", "symmetric": symmetric,
            "strategy": "channel" if per_channel else "group"}
    if not per_channel:
        args["group_size"] = group_size
    if any(r.act_order for r in records.values()):
        args["actorder"] = "static"  # static groups: scales in column order, no index
    return args


def _targets(model: nn.Module, names: list[str]) -> list[str]:
    """One regular expression naming exactly the quantized linears (block path, any index,
    their names inside a block), so the config stays short."""
    found = arch.find_blocks(model)
    prefix = found.path + "."
    inner = sorted({n[len(prefix):].split(".", 1)[1] for n in names})
    return ["re:^" + re.escape(found.path) + r"\.\d+\.(" + "|".join(map(re.escape, inner))
            + ")$"]


def write_compressed_tensors(model: nn.Module, records: dict[str, QuantizedWeight],
                             directory: Path) -> None:
    """Write `model` (whose quantized weights are the records' dequantized values) to
    `directory` as a pack-quantized checkpoint. The model itself is not changed."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,
                                                 QuantizationScheme, apply_quantization_config)

    if not records:
        raise PrunelabError("nothing was quantized, so there is nothing to pack",
                            "quantize with --method rtn or gptq (or sparsegpt --option bits=4)")
    check_model_for_format(model, "compressed-tensors")
    args = QuantizationArgs(**_scheme_args(records))
    config = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=_targets(model, list(records)),
                                                     weights=args)},
        format="pack-quantized", quantization_status="frozen")
    # the library rewrites modules in place; the copy is packed on the CPU, where the
    # quantization records are compared and the file is written
    twin = copy.deepcopy(model).cpu()
    modules = dict(twin.named_modules())
    for name, record in records.items():
        current = modules[name].weight.data
        # a bf16/fp16 model holds its dequantized value rounded to its dtype
        if not torch.equal(current, record.dequantize(current).to(current.dtype)):
            raise RuntimeError(f"{name}: the weight is not its quantization's dequantized "
                               "value (changed after quantizing?)")
    apply_quantization_config(twin, config, show_progress=False)
    offset = 2 ** (args.num_bits - 1)  # the library stores signed codes and zero points
    for name, record in records.items():
        module = modules[name]
        module.weight_scale.data = record.scales.to(torch.float32).clone()
        if not record.symmetric:
            module.weight_zero_point.data = (record.zeros.to(torch.int16) - offset).to(
                module.weight_zero_point.dtype)
    compressor = ModelCompressor.from_pretrained_model(twin, "pack-quantized")
    compressor.compress_model(twin)
    twin.save_pretrained(directory, safe_serialization=True)
    compressor.update_config(str(directory))
    del twin


def load_compressed_tensors(directory: str | Path, dtype: torch.dtype = torch.float32):
    """A model from a pack-quantized checkpoint, each quantized linear decompressed by the
    library (`PackedQuantizationCompressor.decompress`) to its float weight."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    raw = json.loads((directory / "config.json").read_text())
    quant = raw.get("quantization_config")
    if not quant or quant.get("format") != "pack-quantized":
        raise PrunelabError(f"{directory} is not a pack-quantized checkpoint",
                            "pass a directory written with --format compressed-tensors")
    config = AutoConfig.from_pretrained(directory)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    qconfig = QuantizationConfig.model_validate(
        {k: v for k, v in quant.items() if k in QuantizationConfig.model_fields})
    scheme = next(iter(qconfig.config_groups.values()))
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    packed = {key[:-len(".weight_packed")] for key in tensors if key.endswith(".weight_packed")}
    modules = dict(model.named_modules())
    plain = {}
    for key, value in tensors.items():
        owner = key.rsplit(".", 1)[0]
        if owner not in packed:
            plain[key] = value
    for owner in packed:
        local = {key[len(owner) + 1:]: value for key, value in tensors.items()
                 if key.rsplit(".", 1)[0] == owner}
        weight = compressor.decompress(local, scheme)["weight"]
        modules[owner].weight.data = weight.to(dtype)
    missing, unexpected = model.load_state_dict(plain, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in packed
               and k not in _tied_keys(model)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint mismatch: missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}")
    return model.eval()


def _tied_keys(model: nn.Module) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys = set(tied) if not isinstance(tied, dict) else set(tied)
    if getattr(model.config, "tie_word_embeddings", False):
        keys.add("lm_head.weight")
    return keys
