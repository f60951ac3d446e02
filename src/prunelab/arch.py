"""Architecture discovery: the one place that knows how Hugging Face models are laid out.

Instead of a copy of the pruning loop per model family (as the reference repos keep), we find
the structure generically:
- the decoder blocks are the largest `nn.ModuleList` of identical modules that hold linears;
- the prunable layers are the `nn.Linear` and GPT-2 `Conv1D` modules inside a block;
- the arguments a block needs (attention mask, position ids, rotary embeddings, ...) are
  captured from a real forward pass, per block, because some families (Gemma 3) give
  different blocks different masks and rotary tables.
Embeddings and the LM head sit outside the blocks, so they are never pruned.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunelab.checks import LAYER_KINDS, check_only  # noqa: F401  (re-exported)
from prunelab.errors import PrunelabError

PRUNABLE_TYPES = (nn.Linear, Conv1D)


@dataclass
class BlockList:
    path: str  # e.g. "model.layers"
    blocks: nn.ModuleList


def find_blocks(model: nn.Module) -> BlockList:
    best: BlockList | None = None
    best_params = 0
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not prunable_layers(module[0]):
            continue
        params = sum(p.numel() for p in module.parameters())
        if params > best_params:
            best, best_params = BlockList(path, module), params
    if best is None:
        raise PrunelabError(
            f"no repeated blocks with linear layers were found in {type(model).__name__}",
            "prunelab prunes transformer-style models whose blocks sit in an nn.ModuleList",
        )
    return best


def prunable_layers(block: nn.Module) -> dict[str, nn.Module]:
    """The prunable linear layers of a block, in module order, by their name inside the block
    (only those of one kind while `only_layers` is in effect)."""
    only = _ONLY.get()
    return {name: m for name, m in block.named_modules() if isinstance(m, PRUNABLE_TYPES)
            and (only is None or kind_selected(layer_kind(name), only))}


def named_prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every prunable layer of the model's blocks by its full module name
    ("model.layers.3.mlp.up_proj"), block by block in module order."""
    found = find_blocks(model)
    return {f"{found.path}.{i}.{name}": layer for i, block in enumerate(found.blocks)
            for name, layer in prunable_layers(block).items()}


_ONLY: ContextVar[str | None] = ContextVar("prunelab_only_layers", default=None)


# The linears of a state-space mixer (transformers' Mamba and Mamba-2 mixers, and the Mamba
# layers of hybrids), by their name inside it; what tells them from attention or an MLP.
SSM_LINEAR_KINDS = {"in_proj": "ssm_in", "x_proj": "ssm_dt", "dt_proj": "ssm_dt",
                    "out_proj": "ssm_out"}


def layer_kind(name: str) -> str:
    """"attention" for a layer inside a block's attention module (Llama/Gemma/Qwen `self_attn`,
    GPT-2 `attn`, GPT-NeoX `attention`, OPT's `out_proj` there too); "ssm_in", "ssm_dt" or
    "ssm_out" for a state-space mixer's projections (SSM_LINEAR_KINDS); else "mlp"
    (feed-forward: `mlp`, OPT's fc1/fc2)."""
    parts = name.lower().split(".")
    if any("attn" in p or "attention" in p for p in parts):
        return "attention"
    return SSM_LINEAR_KINDS.get(parts[-1], "mlp")


def indirect_inputs(block: nn.Module) -> dict[str, tuple[str, slice]]:
    """Layers whose forward the block never calls, by name: (the layer whose output holds
    their input, which features of it).

    transformers' Mamba mixer multiplies by `dt_proj.weight` itself (and adds its bias inside
    the scan), so hooks on dt_proj never fire; its input is the first `time_step_rank`
    features of x_proj's output.
    """
    found = {}
    for path, module in block.named_modules():
        rank = getattr(module, "time_step_rank", None)
        if (isinstance(getattr(module, "dt_proj", None), nn.Linear)
                and isinstance(getattr(module, "x_proj", None), nn.Linear)
                and isinstance(rank, int) and rank > 0):
            prefix = f"{path}." if path else ""
            found[f"{prefix}dt_proj"] = (f"{prefix}x_proj", slice(0, rank))
    return found


def kind_selected(kind: str, only: str) -> bool:
    """Whether a layer of `kind` is among the comma-separated kinds `only` ("ssm" is all
    three SSM kinds)."""
    chosen = only.split(",")
    return kind in chosen or (kind.startswith("ssm_") and "ssm" in chosen)


@contextmanager
def only_layers(kind: str | None) -> Iterator[None]:
    """Within this block, `prunable_layers` returns only layers of `kind` (None: all)."""
    token = _ONLY.set(check_only(kind))
    try:
        yield
    finally:
        _ONLY.reset(token)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as [out_features, in_features] (Conv1D stores it transposed)."""
    return as_out_in(layer, layer.weight.data)


def as_out_in(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like the layer's weight (its gradient, say) as [out, in]."""
    return tensor.t() if isinstance(layer, Conv1D) else tensor


def set_weight_matrix(layer: nn.Module, matrix: torch.Tensor) -> None:
    target = weight_matrix(layer)
    target.copy_(matrix.to(target.dtype))


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The input tensor of a linear layer's forward call."""
    return args[0] if args else kwargs["input"]


def block_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def to_device(obj, device):
    """A model's call arguments or a collated batch (tensors, nested in tuples, lists and
    dicts) on `device`; anything else is returned as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def block_output(output) -> torch.Tensor:
    """Blocks return a tensor in transformers 5 and a tuple in older versions."""
    return output[0] if isinstance(output, (tuple, list)) else output


class _StopForward(Exception):
    pass


@torch.no_grad()
def capture_block_calls(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor,
                        stop_after_first: bool, inputs: dict | None = None,
                        ) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """Run `model` on `input_ids` (and the other model `inputs`, such as an attention mask
    and position ids); return block 0's input and each block's call arguments.

    The returned arguments have the hidden-state input replaced by None, so they can be
    reused for any batch of the same shape. With `stop_after_first` the forward pass stops at
    block 0 and only block 0's arguments are returned.
    """
    calls: list[tuple[tuple, dict]] = []
    first_input: list[torch.Tensor] = []

    def pre_hook(module, args, kwargs):
        if not calls:
            first_input.append(block_hidden(args, kwargs))
        rest_args = (None,) + tuple(args[1:]) if args else ()
        rest_kwargs = {k: v for k, v in kwargs.items() if not (not args and k == "hidden_states")}
        rest_kwargs.pop("past_key_values", None)
        rest_kwargs.pop("past_key_value", None)
        rest_kwargs.pop("layer_past", None)
        calls.append((rest_args, rest_kwargs))
        if stop_after_first or len(calls) == len(blocks):
            raise _StopForward

    # Only the arguments are wanted, not the hidden states: block 0 runs for real (to learn
    # what a block returns) and the later blocks are stand-ins that hand their input on, so
    # the capture costs one block instead of a whole forward pass.
    first_output: list = []

    def stand_in(*args, **kwargs):
        hidden, returned = block_hidden(args, kwargs), first_output[0]
        if isinstance(returned, (tuple, list)):
            return type(returned)([hidden, *returned[1:]])
        return hidden

    handles = [b.register_forward_pre_hook(pre_hook, with_kwargs=True) for b in blocks]
    handles.append(blocks[0].register_forward_hook(lambda m, a, out: first_output.append(out)))
    for block in blocks[1:]:
        block.forward = stand_in
    try:
        # the windows are kept on the CPU; the embeddings may be on an accelerator
        model(input_ids=input_ids.to(model.get_input_embeddings().weight.device), use_cache=False,
              **(inputs or {}))
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
        for block in blocks[1:]:
            del block.forward  # the class's forward again
    if not first_input:
        raise PrunelabError(f"the blocks of {type(model).__name__} were never called",
                            "this model's forward does not run its decoder blocks in order")
    return first_input[0], calls


def call_block(block: nn.Module, hidden: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = call
    if args:
        return block_output(block(hidden, *args[1:], **kwargs))
    return block_output(block(hidden_states=hidden, **kwargs))
