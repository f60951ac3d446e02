"""The Junk DNA paper's four transfer settings, as invariants held around every optimiser step.

Given a pre-trained model and a pruning mask (True = the weight pruning removes):

- `dense`: nothing is pruned; every weight trains (the 100% of "% of Dense Transfer").
- `sparse`: pruned weights are zeroed before training and stay exactly zero through every
  step, the last included: their gradients are zeroed before each step, so Adam's moments
  never move them, and they are zeroed again after it (which also covers weight decay).
- `sparse-to-dense`: pruned weights are zeroed once; then all weights train and may regrow.
- `freeze`: nothing is zeroed; the weights pruning would remove keep their pre-trained
  values bit for bit (gradients zeroed before each step, values restored after it, since
  decoupled weight decay would otherwise shrink them); the rest train.

The paper's own loop skipped re-applying the mask after the final step; here `after_step`
runs after every step, so no step is exempt.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunelab.arch import as_out_in
from prunelab.errors import PrunelabError

SETTINGS = ("dense", "sparse", "sparse-to-dense", "freeze")


def check_setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise PrunelabError(f"unknown transfer setting {setting!r}",
                            f"use one of {', '.join(SETTINGS)}")
    return setting


def parameter_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]
                    ) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """Each layer mask (by layer name, [out, in] as the engine keeps them) on its weight
    parameter, in the parameter's own layout (Conv1D stores [in, out])."""
    modules = dict(model.named_modules())
    out = {}
    for name, mask in masks.items():
        layer = modules.get(name)
        if layer is None or not isinstance(getattr(layer, "weight", None), nn.Parameter):
            raise PrunelabError(f"the mask names layer {name!r}, which this model does not have",
                                "use masks made for this model (same architecture and names)")
        mask = as_out_in(layer, mask.to(torch.bool))
        if tuple(mask.shape) != tuple(layer.weight.shape):
            raise PrunelabError(
                f"the mask of {name} has shape {tuple(mask.shape)}, its weight "
                f"{tuple(layer.weight.shape)}", "use masks made for this model")
        out[f"{name}.weight"] = (layer.weight, mask.to(layer.weight.device))
    return out


class TransferSetting:
    """Holds one setting's invariant on a model's masked weights through training.

    Call `start()` once before training, `before_step()` after the backward pass and before
    the optimiser step (and before gradient clipping, so clipping sees the gradients that
    will be applied), and `after_step()` right after every optimiser step.

    The per-step work multiplies by 0/1 tensors in the weight's dtype (`keep`): on CPU that
    is about twenty times faster than `masked_fill_` with a boolean mask, at the memory of
    one more copy of the masked weights (AdamW already keeps two). `freeze` also keeps the
    frozen values in place of zeros (`frozen`), so restoring them is one multiply-add:
    w · keep + frozen gives a trained weight back unchanged (× 1, + 0) and a frozen one its
    pre-trained value exactly (0 + v)."""

    def __init__(self, setting: str, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        self.setting = check_setting(setting)
        self.masked = parameter_masks(model, masks) if setting != "dense" else {}
        self._keep: dict[str, torch.Tensor] = {}
        self._frozen: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def start(self) -> None:
        for name, (weight, mask) in self.masked.items():
            if self.setting in ("sparse", "sparse-to-dense"):
                weight.masked_fill_(mask, 0.0)
            if self.setting in ("sparse", "freeze"):
                self._keep[name] = (~mask).to(weight.dtype)
            if self.setting == "freeze":
                self._frozen[name] = weight * mask.to(weight.dtype)

    @torch.no_grad()
    def before_step(self) -> None:
        for name, (weight, _) in self.masked.items():
            if name in self._keep and weight.grad is not None:
                weight.grad.mul_(self._keep[name])

    @torch.no_grad()
    def after_step(self) -> None:
        for name, (weight, _) in self.masked.items():
            if self.setting == "sparse":
                weight.mul_(self._keep[name])
            elif self.setting == "freeze":
                weight.mul_(self._keep[name]).add_(self._frozen[name])

    def held_trainable(self) -> int:
        """How many entries of trainable weights the setting holds (at zero for sparse, at
        their pre-trained values for freeze): trainable parameters that never change."""
        if self.setting not in ("sparse", "freeze"):
            return 0
        return sum(int(mask.sum()) for weight, mask in self.masked.values()
                   if weight.requires_grad)

    def summary(self) -> dict:
        """How many weights the setting holds, and how many of them are nonzero now."""
        held = sum(int(mask.sum()) for _, mask in self.masked.values())
        nonzero = sum(int((weight.detach()[mask] != 0).sum())
                      for weight, mask in self.masked.values())
        return {"setting": self.setting, "masked_weights": held, "masked_nonzero": nonzero}


def masks_from_directory(model: nn.Module, directory) -> dict[str, torch.Tensor]:
    """The masks of a pruned model directory (`prunelab prune --out`): every zero of its
    prunable layers' weights, by layer name, checked against `model`'s shapes. Weights with
    no zero at all are refused (no mask to keep); `check_mask_source` checks the directory's
    record before the model loads."""
    from pathlib import Path

    from safetensors import safe_open

    from prunelab.arch import named_prunable_layers
    from prunelab.recover.mask_source import check_mask_has_zeros

    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise PrunelabError(f"{directory} holds no .safetensors weights",
                            "give a directory written by `prunelab prune --out`")
    wanted = named_prunable_layers(model)
    masks = {}
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                name = key.removesuffix(".weight")
                if key.endswith(".weight") and name in wanted:
                    weight = weights.get_tensor(key)
                    if tuple(weight.shape) != tuple(wanted[name].weight.shape):
                        raise PrunelabError(
                            f"{directory}: {key} has shape {tuple(weight.shape)}, the model's "
                            f"{tuple(wanted[name].weight.shape)}",
                            "use a directory pruned from this model")
                    masks[name] = as_out_in(wanted[name], weight == 0)
    missing = sorted(set(wanted) - set(masks))
    if missing:
        raise PrunelabError(f"{directory} lacks the weights of {len(missing)} prunable layers "
                            f"(e.g. {missing[0]})", "use a directory pruned from this model")
    check_mask_has_zeros(directory, masks)
    return masks
