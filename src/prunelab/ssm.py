"""State-space mixers (transformers' Mamba and Mamba-2): their layout, and structural surgery.

The one description of how an SSM block differs from an attention block. A mixer is a module
holding `in_proj` and `out_proj` linears, a depthwise `conv1d` and an `A_log` parameter:
- Mamba-2 (`num_heads`, `head_dim`, `n_groups`): in_proj rows are [z | x | B | C | dt], of
  sizes inner, inner, groups·state, groups·state, heads; conv1d runs over [x | B | C]; A_log,
  D and dt_bias hold one value per head; the gated RMSNorm normalises each group's
  inner/groups channels; heads h of group g are g·H/G … (g+1)·H/G − 1 and share B_g and C_g.
- Mamba (`x_proj`, `dt_proj`): in_proj rows are [x | z]; conv1d runs over x; x_proj maps the
  inner channels to [dt | B | C] (time_step_rank, state, state); dt_proj maps dt back to the
  inner channels; A_log is [inner, state], D one value per channel. Its "heads" are single
  channels.

Removing a unit keeps every dependent slice consistent (rows of in_proj, conv channels,
A_log, D, dt_bias, the norm's weight, columns of out_proj, rows of dt_proj and columns of
x_proj), and updates the mixer's own size attributes, which its forward reads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from prunelab import arch
from prunelab.errors import PrunelabError

STRUCTURE_KEY = "prunelab_ssm_structure"  # per-layer shapes when layers differ


@dataclass
class MixerParts:
    mixer: nn.Module
    path: str  # inside the block, e.g. "mixer"
    family: str  # "mamba2" or "mamba"

    @property
    def inner(self) -> int:
        return self.mixer.out_proj.in_features

    @property
    def hidden(self) -> int:
        return self.mixer.out_proj.out_features

    @property
    def state(self) -> int:
        return int(self.mixer.ssm_state_size)

    @property
    def groups(self) -> int:
        return int(getattr(self.mixer, "n_groups", 1))

    @property
    def heads(self) -> int:
        """Mamba-2's heads; Mamba's inner channels (its unit of removal)."""
        return int(self.mixer.num_heads) if self.family == "mamba2" else self.inner

    @property
    def head_dim(self) -> int:
        return int(self.mixer.head_dim) if self.family == "mamba2" else 1


def _is_mixer(module: nn.Module) -> bool:
    return (isinstance(getattr(module, "A_log", None), nn.Parameter)
            and isinstance(getattr(module, "in_proj", None), nn.Linear)
            and isinstance(getattr(module, "out_proj", None), nn.Linear))


def find_mixer(block: nn.Module) -> tuple[str, nn.Module] | None:
    for path, module in block.named_modules():
        if _is_mixer(module):
            return path, module
    return None


def is_ssm(model: nn.Module) -> bool:
    """Whether the model's blocks hold state-space mixers."""
    try:
        blocks = arch.find_blocks(model).blocks
    except PrunelabError:
        return False
    return find_mixer(blocks[0]) is not None


def locate(block: nn.Module, where: str = "block") -> MixerParts:
    """The block's mixer, checked against the layout above; PrunelabError where it differs."""
    found = find_mixer(block)
    if found is None:
        raise PrunelabError(f"{where} ({type(block).__name__}) has no state-space mixer "
                            "(in_proj, out_proj, conv1d, A_log)",
                            "SSM structured pruning supports transformers' Mamba and Mamba-2")
    path, mixer = found
    family = "mamba" if isinstance(getattr(mixer, "x_proj", None), nn.Linear) else "mamba2"
    parts = MixerParts(mixer, path, family)
    try:
        _check_layout(parts)
    except (AttributeError, TypeError) as error:
        raise PrunelabError(f"the mixer of {where} ({type(mixer).__name__}) is not laid out "
                            f"as transformers' {family}: {error}",
                            "SSM structured pruning supports transformers' Mamba and Mamba-2 "
                            "mixers") from None
    return parts


def _check_layout(parts: MixerParts) -> None:
    m, inner, state = parts.mixer, parts.inner, parts.state
    if not isinstance(m.conv1d, nn.Conv1d):
        raise TypeError("conv1d is not a depthwise nn.Conv1d")
    if parts.family == "mamba2":
        heads, groups, hd = int(m.num_heads), int(m.n_groups), int(m.head_dim)
        expected = {"in_proj rows": (m.in_proj.out_features, 2 * inner + 2 * groups * state + heads),
                    "heads x head_dim": (heads * hd, inner),
                    "conv channels": (m.conv1d.out_channels, inner + 2 * groups * state),
                    "A_log": (m.A_log.numel(), heads), "D": (m.D.numel(), heads),
                    "dt_bias": (m.dt_bias.numel(), heads), "norm": (m.norm.weight.numel(), inner),
                    "heads per group": (heads % groups, 0)}
    else:
        rank = int(m.time_step_rank)
        expected = {"in_proj rows": (m.in_proj.out_features, 2 * inner),
                    "conv channels": (m.conv1d.out_channels, inner),
                    "x_proj": (tuple(m.x_proj.weight.shape), (rank + 2 * state, inner)),
                    "dt_proj": (tuple(m.dt_proj.weight.shape), (inner, rank)),
                    "A_log": (tuple(m.A_log.shape), (inner, state)), "D": (m.D.numel(), inner)}
    wrong = [f"{k} {a} (expected {b})" for k, (a, b) in expected.items() if a != b]
    if wrong:
        raise TypeError(", ".join(wrong))


def model_mixers(model: nn.Module) -> list[MixerParts]:
    found = arch.find_blocks(model)
    return [locate(block, f"{found.path}.{i}") for i, block in enumerate(found.blocks)]


# ---------------------------------------------------------------- surgery

def _param(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone().contiguous())


def _linear(layer: nn.Linear, rows: torch.Tensor | None = None,
            columns: torch.Tensor | None = None) -> nn.Linear:
    weight, bias = layer.weight, layer.bias
    if rows is not None:
        weight = weight[rows.to(weight.device)]
        bias = bias[rows.to(weight.device)] if bias is not None else None
    if columns is not None:
        weight = weight[:, columns.to(weight.device)]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = _param(weight)
    if bias is not None:
        new.bias = _param(bias)
    return new


def _conv(conv: nn.Conv1d, channels: torch.Tensor) -> nn.Conv1d:
    channels = channels.to(conv.weight.device)
    new = nn.Conv1d(len(channels), len(channels), conv.kernel_size[0], groups=len(channels),
                    padding=conv.padding[0], bias=conv.bias is not None, device="meta")
    new.weight = _param(conv.weight[channels])
    if conv.bias is not None:
        new.bias = _param(conv.bias[channels])
    return new


def _units_rows(units: torch.Tensor, size: int) -> torch.Tensor:
    return (units[:, None] * size + torch.arange(size)).reshape(-1)


def check_heads_per_group(parts: MixerParts, keep: torch.Tensor, where: str) -> None:
    """Mamba-2 heads share their group's B and C: every group must keep as many heads."""
    if keep.numel() == 0:
        raise PrunelabError(f"this would remove every SSM head of {where}",
                            "remove a smaller share of heads (lower --sparsity)")
    per_group = parts.heads // parts.groups
    counts = torch.bincount(keep // per_group, minlength=parts.groups)
    if parts.family == "mamba2" and len(set(counts.tolist())) != 1:
        raise PrunelabError(f"keeping heads {keep.tolist()} of {where} leaves its {parts.groups} "
                            f"groups unequal ({counts.tolist()} heads)",
                            "remove the same number of heads from every group")


def shrink_heads(parts: MixerParts, keep: torch.Tensor, where: str = "block") -> None:
    """Keep only these heads (Mamba-2) or inner channels (Mamba), ascending."""
    keep = torch.sort(keep.to(torch.long).cpu()).values
    check_heads_per_group(parts, keep, where)
    m, inner, hd = parts.mixer, parts.inner, parts.head_dim
    channels = _units_rows(keep, hd)
    new_inner = len(channels)
    out_cols = channels
    if parts.family == "mamba2":
        bc = 2 * parts.groups * parts.state
        m.in_proj = _linear(m.in_proj, rows=torch.cat([
            channels, inner + channels, 2 * inner + torch.arange(bc), 2 * inner + bc + keep]))
        m.conv1d = _conv(m.conv1d, torch.cat([channels, inner + torch.arange(bc)]))
        for name in ("A_log", "D", "dt_bias"):
            setattr(m, name, _param(getattr(m, name)[keep.to(getattr(m, name).device)]))
        m.norm.weight = _param(m.norm.weight[channels.to(m.norm.weight.device)])
        m.norm.group_size = new_inner // parts.groups
        m.num_heads = len(keep)
        m.conv_dim = new_inner + bc
    else:
        m.in_proj = _linear(m.in_proj, rows=torch.cat([channels, inner + channels]))
        m.conv1d = _conv(m.conv1d, channels)
        m.x_proj = _linear(m.x_proj, columns=channels)
        m.dt_proj = _linear(m.dt_proj, rows=channels)
        m.A_log = _param(m.A_log[channels.to(m.A_log.device)])
        m.D = _param(m.D[channels.to(m.D.device)])
    m.out_proj = _linear(m.out_proj, columns=out_cols)
    m.intermediate_size = new_inner


def shrink_state(parts: MixerParts, keep: torch.Tensor, where: str = "block") -> None:
    """Keep only these state dimensions (of B and C, in every group), ascending."""
    keep = torch.sort(keep.to(torch.long).cpu()).values
    if keep.numel() == 0:
        raise PrunelabError(f"this would remove every state dimension of {where}",
                            "remove a smaller share of state dimensions (lower --sparsity)")
    m, inner, n = parts.mixer, parts.inner, parts.state
    if parts.family == "mamba2":
        g = parts.groups
        b = torch.cat([i * n + keep for i in range(g)])
        c = g * n + b
        m.in_proj = _linear(m.in_proj, rows=torch.cat([
            torch.arange(2 * inner), 2 * inner + b, 2 * inner + c,
            2 * inner + 2 * g * n + torch.arange(parts.heads)]))
        m.conv1d = _conv(m.conv1d, torch.cat([torch.arange(inner), inner + b, inner + c]))
        m.conv_dim = inner + 2 * g * len(keep)
    else:
        rank = int(m.time_step_rank)
        m.x_proj = _linear(m.x_proj, rows=torch.cat([torch.arange(rank), rank + keep,
                                                    rank + n + keep]))
        m.A_log = _param(m.A_log[:, keep.to(m.A_log.device)])
    m.ssm_state_size = len(keep)


# ---------------------------------------------------------------- the config and the loader

def layer_shapes(model: nn.Module) -> list[dict]:
    return [{"heads": p.heads, "state": p.state} for p in model_mixers(model)]


def _set_sizes(config, heads: int, state: int, parts: MixerParts) -> None:
    inner = heads * parts.head_dim
    if inner % parts.hidden:  # the configs hold a whole-number expansion only
        raise ValueError(f"inner width {inner} is not a multiple of {parts.hidden}")
    config.expand = inner // parts.hidden
    config.state_size = state
    if parts.family == "mamba2":
        config.num_heads = heads
    if hasattr(config, "intermediate_size"):
        config.intermediate_size = inner


def _meta_shapes(config) -> dict[str, tuple]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}


def write_config(model: nn.Module) -> str:
    """Make `model.config` describe the mixers' present sizes: "plain" when every layer has
    the same and plain `from_pretrained` rebuilds them, else "loader" (the per-layer shapes
    go into the config for `prunelab.structure.load_pretrained`)."""
    config, mixers = model.config, model_mixers(model)
    shapes = layer_shapes(model)
    if hasattr(config, STRUCTURE_KEY):
        delattr(config, STRUCTURE_KEY)
    if all(s == shapes[0] for s in shapes):
        candidate = copy.deepcopy(config)
        try:
            _set_sizes(candidate, shapes[0]["heads"], shapes[0]["state"], mixers[0])
            expected = _meta_shapes(candidate)
        except Exception:  # noqa: BLE001 (a config class may refuse the new sizes)
            expected = None
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if expected == ours:
            _set_sizes(config, shapes[0]["heads"], shapes[0]["state"], mixers[0])
            return "plain"
    setattr(config, STRUCTURE_KEY, {"version": 1, "layers": shapes})
    return "loader"


def apply_layout(model: nn.Module, layers: list[dict]) -> None:
    """Give every mixer the recorded sizes (its own tensors, to be overwritten by a load)."""
    found = arch.find_blocks(model)
    if len(layers) != len(found.blocks):
        raise PrunelabError(f"{STRUCTURE_KEY} lists {len(layers)} layers but the model has "
                            f"{len(found.blocks)}", "the directory's config.json was edited")
    for i, (parts, shape) in enumerate(zip(model_mixers(model), layers)):
        where = f"{found.path}.{i}"
        per_group = parts.heads // parts.groups
        keep = torch.cat([g * per_group + torch.arange(shape["heads"] // parts.groups)
                          for g in range(parts.groups)])
        shrink_heads(parts, keep, where)
        shrink_state(parts, torch.arange(shape["state"]), where)
