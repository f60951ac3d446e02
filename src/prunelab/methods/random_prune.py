"""The random baseline: prune weights chosen uniformly at random, seeded.

Each layer draws from its own generator, seeded by the `seed` option and the layer's full
name, so a layer's mask does not depend on which layers were pruned before it. Per row (the
same counts as Wanda) by default, per matrix with `per_row=false`; N:M keeps N random
weights of every group.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from prunelab.methods import masks
from prunelab.methods.base import LayerDecision, MethodConfig, PruningMethod, register


@dataclass
class RandomConfig(MethodConfig):
    mask_seed: int = field(default=0, metadata={"help": "seed of the random masks"})
    per_row: bool = field(default=True, metadata={
        "help": "prune the same number in every row (else per matrix)"})


@register
class RandomPruning(PruningMethod):
    name = "random"
    summary = "uniformly random weights, seeded (a baseline)"
    Config = RandomConfig

    def prune_layer(self, weight, stats, target):
        generator = torch.Generator().manual_seed(
            self.config.mask_seed * 1_000_003 + zlib.crc32(target.name.encode()))
        scores = torch.rand(weight.shape, generator=generator).to(weight.device)
        return LayerDecision(weight, masks.select(scores, target.sparsity, target.pattern,
                                                  per_row=self.config.per_row))
