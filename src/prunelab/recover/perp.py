"""Cheap retraining after pruning (PERP, Zimmer et al. 2023): train only a small subset of
parameters (biases, normalisation parameters, the output head) and/or low-rank adapters on
the pruned linears. MaskLoRA multiplies the adapter's update by the pruning mask, so merging
it keeps the model exactly as sparse as before; merging a plain LoRA fills the zeros in.

The adapters are a few lines of our own rather than `peft`'s: MaskLoRA needs the mask inside
the adapter's forward and merge, which peft's LoRA layer does not offer."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from prunelab.errors import PrunelabError

SUBSETS = ("biases", "norms", "head", "all")


def check_subsets(subsets: Iterable[str]) -> list[str]:
    chosen = list(subsets)
    for subset in chosen:
        if subset not in SUBSETS:
            raise PrunelabError(f"unknown trainable subset {subset!r}",
                                f"use any of {', '.join(SUBSETS)}, joined by '+'")
    return chosen


def _is_norm(module: nn.Module) -> bool:
    return (isinstance(module, (nn.LayerNorm, nn.GroupNorm))
            or "norm" in type(module).__name__.lower())


def select_trainable(model: nn.Module, subsets: Iterable[str]) -> int:
    """Freeze every parameter except those of the chosen subsets; returns how many train.
    `head` is the output head (the LM head, or a classifier); a head tied to the input
    embeddings trains them too, since they are one tensor."""
    chosen = set(check_subsets(subsets))
    for p in model.parameters():
        p.requires_grad_("all" in chosen)
    if "all" in chosen:
        return sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if "norms" in chosen and _is_norm(module):
            for p in module.parameters(recurse=False):
                p.requires_grad_(True)
        if "biases" in chosen and isinstance(getattr(module, "bias", None), nn.Parameter):
            module.bias.requires_grad_(True)
    if "head" in chosen:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for attribute in ("classifier", "score"):  # sequence-classification heads
            if head is None:
                head = getattr(model, attribute, None)
        if head is None:
            raise PrunelabError("this model has no output head to train",
                                "leave 'head' out of the trainable subsets")
        for p in head.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class LoRALinear(nn.Module):
    """y = base(x) + scale · x (B A ⊙ M)ᵀ: a rank-`rank` update of a frozen linear layer,
    with M = 1[W ≠ 0] for MaskLoRA (`masked`), else M = 1. B starts at zero, so the model is
    unchanged before training."""

    def __init__(self, base: nn.Linear, rank: int = 16, alpha: float = 32.0,
                 masked: bool = False):
        super().__init__()
        if rank < 1:
            raise PrunelabError(f"LoRA rank {rank}", "give a rank of 1 or more")
        self.base, self.scale, self.masked = base, alpha / rank, masked
        base.weight.requires_grad_(False)
        out_features, in_features = base.weight.shape
        where = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, **where))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **where))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        if masked:
            self.register_buffer("keep", base.weight.detach() != 0, persistent=False)

    def update(self) -> torch.Tensor:
        delta = self.lora_b @ self.lora_a * self.scale
        return delta * self.keep if self.masked else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.masked:
            return self.base(x) + nn.functional.linear(x, self.update())
        return self.base(x) + nn.functional.linear(x @ self.lora_a.T, self.lora_b) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        self.base.weight += self.update()
        return self.base


def add_adapters(model: nn.Module, layer_names: Iterable[str], *, rank: int = 16,
                 alpha: float = 32.0, masked: bool = False) -> int:
    """Wrap the named linear layers in (Mask)LoRA adapters; returns the adapter parameters."""
    modules = dict(model.named_modules())
    count = 0
    for name in layer_names:
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise PrunelabError(f"{name} is not a linear layer of this model",
                                "give the names of its linear layers")
        parent_name, _, child = name.rpartition(".")
        adapter = LoRALinear(layer, rank, alpha, masked)
        setattr(modules[parent_name] if parent_name else model, child, adapter)
        count += adapter.lora_a.numel() + adapter.lora_b.numel()
    return count


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its linear layer and put the plain layer back."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
            merged += 1
    return merged
