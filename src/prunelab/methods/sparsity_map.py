"""User-given per-layer sparsities: a YAML or JSON map of layer → sparsity, then a base method.

Keys are full layer names as `prunelab prune` records them ("model.layers.3.mlp.down_proj")
or block indices (3, or "3"), which set every prunable layer of that block; a full name
overrides its block's entry. Layers not listed keep the requested sparsity. The map must
average, weighted by parameter count, to the requested sparsity (within 0.001), so that a
result labelled "50%" is 50%; otherwise it is refused before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prunelab.errors import PrunelabError
from prunelab.methods.base import MethodCost, register
from prunelab.methods.wrapping import WrappingConfig, WrappingMethod, layer_blocks

MEAN_TOLERANCE = 0.001


def read_sparsity_map(path: str) -> dict[str | int, float]:
    """The map in `path` (YAML or JSON), its values checked to be sparsities in [0, 1)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise PrunelabError(f"sparsity map {path} does not exist",
                            "give --option file=PATH of a YAML or JSON map layer -> sparsity")
    try:
        text = file.read_text()
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        raise PrunelabError(f"sparsity map {path} cannot be read: "
                            f"{str(error).splitlines()[0]}",
                            "write a YAML or JSON map of layer name or block index to sparsity"
                            ) from None
    if not isinstance(data, dict) or not data:
        raise PrunelabError(f"sparsity map {path} is not a non-empty map",
                            "write e.g. {\"0\": 0.4, \"model.layers.1.mlp.up_proj\": 0.6}")
    checked: dict[str | int, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise PrunelabError(f"sparsity map {path}: {key}: {value!r} is not a sparsity in "
                                "[0, 1)", "give each layer a fraction such as 0.5")
        if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
            key = int(key)
        checked[key] = float(value)
    return checked


@dataclass
class SparsityMapConfig(WrappingConfig):
    file: str = field(default="", metadata={
        "help": "YAML or JSON map: full layer name or block index -> sparsity"})

    def validate(self) -> None:
        if not self.file:
            raise PrunelabError("method sparsity-map needs a map of layer sparsities",
                                "give --option file=PATH (YAML or JSON: layer -> sparsity)")
        read_sparsity_map(self.file)


def resolve_map(entries: dict[str | int, float], weights, sparsity: float,
                source: str) -> dict[str, float]:
    """Every layer's sparsity, by full name; refuses unknown layers and a wrong mean."""
    blocks = layer_blocks(weights)
    known_blocks = sorted(set(blocks.values()))
    unknown = [str(k) for k in entries
               if (isinstance(k, int) and k not in known_blocks)
               or (isinstance(k, str) and k not in weights)]
    if unknown:
        example = next(iter(weights))
        raise PrunelabError(f"sparsity map {source} names {', '.join(unknown[:3])}, which the "
                            f"model does not have", f"use full layer names such as {example} "
                            f"or block indices {known_blocks[0]}..{known_blocks[-1]}")
    result = {}
    for name in weights:
        result[name] = entries.get(name, entries.get(blocks[name], sparsity))
    total = sum(w.numel() for w in weights.values())
    mean = sum(result[n] * w.numel() for n, w in weights.items()) / total
    if abs(mean - sparsity) > MEAN_TOLERANCE:
        raise PrunelabError(f"sparsity map {source} averages {mean:.4f} (weighted by layer "
                            f"size), but sparsity {sparsity} was asked",
                            f"pass --sparsity {mean:.4f}, or change the map")
    return result


@register
class SparsityMap(WrappingMethod):
    name = "sparsity-map"
    cost = MethodCost(passes=0.0)  # its base does all the work
    summary = "per-layer sparsities from a YAML/JSON map (file=...), then a base method"
    Config = SparsityMapConfig
    supports_nm = False
    sets_layer_sparsities = True

    def __init__(self, config):
        super().__init__(config)
        self.entries = read_sparsity_map(config.file)

    def check_model(self, model, sparsity=None, pattern=None):
        from prunelab import arch

        super().check_model(model, sparsity, pattern)
        weights = {name: arch.weight_matrix(layer)
                   for name, layer in arch.named_prunable_layers(model).items()}
        resolve_map(self.entries, weights, sparsity, self.config.file)

    def plan(self, context):
        self.base_plan(context, own_targets=True)
        return resolve_map(self.entries, context.weights, context.sparsity, self.config.file)
