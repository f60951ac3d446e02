"""Structured surgery: remove attention heads and MLP channels for real, and load the result.

A decoder block is pruned structurally through two parts that this module locates by their
linears' names, never by model family:
- the attention: a module with `q_proj`, `k_proj`, `v_proj` and `o_proj` linears (Llama,
  Mistral, Qwen2, Gemma 3). Head size, query heads and key/value heads are read from the
  layer (`head_dim`, or the config's) and the projections' shapes, never assumed;
- the MLP: a module with `gate_proj`, `up_proj` and `down_proj`.

Grouped-query attention: query head h reads key/value head h // g (g query heads per group,
transformers' `repeat_kv`), so a layer stays valid only if every kept group keeps the same
number of query heads, stored group after group. `shrink_attention` checks exactly that.

Saving. After surgery `write_config` tries the plain route first: when every layer has the
same shape and the config class can say so (head counts, intermediate size, and a bias flag
where compensation added a bias), the config's own fields are set and the directory loads
with plain `AutoModelForCausalLM.from_pretrained`. Otherwise (per-layer sizes, which no
Llama/Qwen2/Gemma 3 config can express, or a bias the class never builds, as Qwen2's
`o_proj`) the config keeps its original fields and gains `prunelab_structure`, the shape of
every layer; `load_pretrained` (5 steps: config, model, reshape, read, tie) loads it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelab import arch
from prunelab.errors import PrunelabError

ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
STRUCTURE_KEY = "prunelab_structure"  # the config field the documented loader reads
SUPPORTED = ("blocks whose attention has q_proj/k_proj/v_proj/o_proj and whose MLP has "
             "gate_proj/up_proj/down_proj (Llama, Mistral, Qwen2, Gemma 3)")


@dataclass(frozen=True)
class BlockParts:
    """The attention and MLP of one block, with their sizes as they are now."""

    attention: nn.Module
    attention_path: str  # inside the block, e.g. "self_attn"
    mlp: nn.Module
    mlp_path: str
    head_dim: int
    heads: int
    kv_heads: int
    hidden: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    @property
    def intermediate(self) -> int:
        return self.mlp.down_proj.in_features

    def linear_names(self) -> list[str]:
        """The block-relative names of the seven linears."""
        return ([f"{self.attention_path}.{n}" for n in ATTENTION_LINEARS]
                + [f"{self.mlp_path}.{n}" for n in MLP_LINEARS])


def _find_with(block: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for path, module in block.named_modules():
        if all(isinstance(getattr(module, n, None), nn.Linear) for n in names):
            return path, module
    return None


def locate(block: nn.Module, config=None, where: str = "block") -> BlockParts:
    """The attention and MLP of `block`; PrunelabError when they cannot be found."""
    attention = _find_with(block, ATTENTION_LINEARS)
    mlp = _find_with(block, MLP_LINEARS)
    if attention is None:
        from prunelab import ssm

        if ssm.find_mixer(block) is not None:
            raise PrunelabError(f"{where} ({type(block).__name__}) is a state-space block: it "
                                "has no attention heads or MLP channels to remove",
                                "use ssm-flap (SSM heads or state dimensions) or an "
                                "unstructured method (magnitude, wanda, sparsegpt)")
    if attention is None or mlp is None:
        missing = "attention heads" if attention is None else "MLP channels"
        raise PrunelabError(f"cannot locate the {missing} of {where} ({type(block).__name__})",
                            f"structured pruning supports {SUPPORTED}")
    (attn_path, attn), (mlp_path, mlp_module) = attention, mlp
    head_dim = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    if not head_dim and config is not None:
        head_dim = config.hidden_size // config.num_attention_heads
    q, k, v, o = (getattr(attn, n) for n in ATTENTION_LINEARS)
    if (not isinstance(head_dim, int) or head_dim <= 0 or q.out_features % head_dim
            or k.out_features % head_dim or k.out_features != v.out_features
            or o.in_features != q.out_features or k.out_features == 0
            or (q.out_features // head_dim) % (k.out_features // head_dim)):
        raise PrunelabError(f"cannot locate the attention heads of {where}: projections "
                            f"{q.out_features}/{k.out_features}/{v.out_features} do not split "
                            f"into heads of {head_dim}",
                            f"structured pruning supports {SUPPORTED}")
    return BlockParts(attn, attn_path, mlp_module, mlp_path, head_dim,
                      q.out_features // head_dim, k.out_features // head_dim, q.in_features)


def model_parts(model: nn.Module) -> list[BlockParts]:
    """Every block's parts, in order; PrunelabError (before any work) where one is missing."""
    found = arch.find_blocks(model)
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    return [locate(block, config, f"{found.path}.{i}") for i, block in enumerate(found.blocks)]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A linear holding exactly these tensors (same dtype and device)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                      device="meta")
    layer.weight = nn.Parameter(weight.detach().clone().contiguous())
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone().to(weight.dtype).contiguous())
    return layer


def _rows(layer: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    bias = layer.bias[rows] if layer.bias is not None else None
    return _linear(layer.weight[rows], bias)


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)


def check_grouping(keep_heads: torch.Tensor, keep_kv: torch.Tensor, group_size: int,
                   where: str) -> int:
    """The new group size, if keeping these query and key/value heads is a split that
    grouped-query attention can express; PrunelabError otherwise."""
    keep_heads, keep_kv = keep_heads.tolist(), keep_kv.tolist()
    if not keep_heads or not keep_kv:
        raise PrunelabError(f"this would remove every attention head of {where}",
                            "remove fewer heads (lower the heads ratio or the target)")
    per_group = {kv: [h for h in keep_heads if h // group_size == kv] for kv in keep_kv}
    sizes = {len(hs) for hs in per_group.values()}
    stray = [h for h in keep_heads if h // group_size not in per_group]
    ordered = [h for kv in keep_kv for h in per_group[kv]] == keep_heads
    if len(sizes) != 1 or 0 in sizes or stray or not ordered or keep_kv != sorted(keep_kv):
        raise PrunelabError(f"keeping query heads {keep_heads} with key/value heads {keep_kv} "
                            f"in {where} is a split grouped-query attention cannot express",
                            "keep the same number of query heads in every kept group "
                            "(gqa=query), or remove whole groups (gqa=group)")
    return sizes.pop()


def shrink_attention(parts: BlockParts, keep_heads: torch.Tensor, keep_kv: torch.Tensor,
                     extra_bias: torch.Tensor | None = None, where: str = "block") -> None:
    """Keep only these query heads (ascending, group after group) and key/value heads;
    `extra_bias` is added to the output projection's bias (created if there is none)."""
    keep_heads = keep_heads.to(torch.long).cpu()
    keep_kv = keep_kv.to(torch.long).cpu()
    new_group = check_grouping(keep_heads, keep_kv, parts.group_size, where)
    attn, hd = parts.attention, parts.head_dim
    q_rows, kv_rows = _head_rows(keep_heads, hd), _head_rows(keep_kv, hd)
    device = attn.q_proj.weight.device
    attn.q_proj = _rows(attn.q_proj, q_rows.to(device))
    attn.k_proj = _rows(attn.k_proj, kv_rows.to(device))
    attn.v_proj = _rows(attn.v_proj, kv_rows.to(device))
    attn.o_proj = _columns(attn.o_proj, q_rows.to(device), extra_bias)
    attn.num_key_value_groups = new_group  # read by repeat_kv and sdpa's enable_gqa


def shrink_mlp(parts: BlockParts, keep: torch.Tensor,
               extra_bias: torch.Tensor | None = None, where: str = "block") -> None:
    """Keep only these intermediate channels; `extra_bias` is added to the down
    projection's bias (created if there is none)."""
    if keep.numel() == 0:
        raise PrunelabError(f"this would remove every MLP channel of {where}",
                            "remove fewer channels (lower the channels ratio or the target)")
    mlp = parts.mlp
    keep = keep.to(torch.long).to(mlp.down_proj.weight.device)
    mlp.gate_proj = _rows(mlp.gate_proj, keep)
    mlp.up_proj = _rows(mlp.up_proj, keep)
    mlp.down_proj = _columns(mlp.down_proj, keep, extra_bias)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = int(keep.numel())


def _columns(layer: nn.Linear, keep: torch.Tensor, extra_bias: torch.Tensor | None) -> nn.Linear:
    bias = layer.bias
    if extra_bias is not None:
        extra = extra_bias.to(layer.weight.device, torch.float32)
        bias = extra if bias is None else bias.to(torch.float32) + extra
    return _linear(layer.weight[:, keep], bias)


def removed_mean_contribution(layer: nn.Linear, removed: torch.Tensor,
                              mean: torch.Tensor) -> torch.Tensor:
    """FLAP's bias compensation: W[:, removed] · mean[removed], what the removed input
    channels added to the output on average."""
    weight = layer.weight.to(torch.float32)
    removed = removed.to(weight.device)
    return weight[:, removed] @ mean.to(weight.device, torch.float32)[removed]


# ---------------------------------------------------------------- the config and the loader

def layer_shapes(model: nn.Module) -> list[dict]:
    """Each block's head counts, intermediate size and which of its linears carry a bias."""
    shapes = []
    for parts, block in zip(model_parts(model), arch.find_blocks(model).blocks):
        biased = [n for n in parts.linear_names() if block.get_submodule(n).bias is not None]
        shapes.append({"heads": parts.heads, "kv_heads": parts.kv_heads,
                       "intermediate": parts.intermediate, "bias": biased})
    return shapes


def _meta_shapes(config) -> dict[str, tuple]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}


def write_config(model: nn.Module) -> str:
    """Make `model.config` describe the model's present shapes; return "plain" when plain
    `from_pretrained` will rebuild it, "loader" when `load_pretrained` is needed."""
    config = model.config
    shapes = layer_shapes(model)
    parts = model_parts(model)
    if hasattr(config, STRUCTURE_KEY):
        delattr(config, STRUCTURE_KEY)
    first = shapes[0]
    uniform = all({**s, "bias": None} == {**first, "bias": None} for s in shapes)
    if uniform:
        candidate = copy.deepcopy(config)
        candidate.head_dim = parts[0].head_dim  # explicit: it no longer follows from heads
        candidate.num_attention_heads = first["heads"]
        candidate.num_key_value_heads = first["kv_heads"]
        candidate.intermediate_size = first["intermediate"]
        biased = {n.split(".")[-1] for s in shapes for n in s["bias"]}
        if biased & set(ATTENTION_LINEARS) and hasattr(candidate, "attention_bias"):
            candidate.attention_bias = True
        if biased & set(MLP_LINEARS) and hasattr(candidate, "mlp_bias"):
            candidate.mlp_bias = True
        if _adopt(model, candidate):
            for key in ("head_dim", "num_attention_heads", "num_key_value_heads",
                        "intermediate_size", "attention_bias", "mlp_bias"):
                if hasattr(candidate, key):
                    setattr(config, key, getattr(candidate, key))
            return "plain"
    setattr(config, STRUCTURE_KEY, {"version": 1, "layers": layer_shapes(model)})
    return "loader"


def _adopt(model: nn.Module, candidate) -> bool:
    """Whether `candidate` rebuilds the model's shapes, once the zero biases it adds to
    block linears are added here too (they are then added, and True returned)."""
    try:  # the config class may refuse the new sizes (Gemma 3 wants heads to divide hidden)
        validate = getattr(candidate, "validate", None)
        if validate is not None:
            validate()
        expected = _meta_shapes(candidate)
    except Exception:  # noqa: BLE001 (huggingface_hub's validation error is a bare Exception)
        return False
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    extra = set(expected) - set(ours)
    if set(ours) - set(expected) or any(expected[k] != ours[k] for k in ours):
        return False
    found = arch.find_blocks(model)
    if not all(k.startswith(found.path + ".") and k.endswith(".bias") for k in extra):
        return False
    for key in extra:
        layer = model.get_submodule(key[: -len(".bias")])
        if not isinstance(layer, nn.Linear) or (layer.out_features,) != expected[key]:
            return False
    for key in extra:
        layer = model.get_submodule(key[: -len(".bias")])
        layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype,
                                              device=layer.weight.device))
    return True


def needs_loader(config) -> bool:
    from prunelab import ssm

    return (getattr(config, STRUCTURE_KEY, None) is not None
            or getattr(config, ssm.STRUCTURE_KEY, None) is not None)


def apply_layout(model: nn.Module, layers: list[dict]) -> None:
    """Give every block the recorded shapes (new, uninitialised linears)."""
    found = arch.find_blocks(model)
    if len(layers) != len(found.blocks):
        raise PrunelabError(f"{STRUCTURE_KEY} lists {len(layers)} layers but the model has "
                            f"{len(found.blocks)}", "the directory's config.json was edited")
    for block, parts, shape in zip(found.blocks, model_parts(model), layers):
        hd, hidden = parts.head_dim, parts.hidden
        sizes = {"q_proj": (shape["heads"] * hd, hidden),
                 "k_proj": (shape["kv_heads"] * hd, hidden),
                 "v_proj": (shape["kv_heads"] * hd, hidden),
                 "o_proj": (hidden, shape["heads"] * hd),
                 "gate_proj": (shape["intermediate"], hidden),
                 "up_proj": (shape["intermediate"], hidden),
                 "down_proj": (hidden, shape["intermediate"])}
        for name in parts.linear_names():
            owner_path, _, leaf = name.rpartition(".")
            owner = block.get_submodule(owner_path)
            old = getattr(owner, leaf)
            out_features, in_features = sizes[leaf]
            setattr(owner, leaf, nn.Linear(in_features, out_features, bias=name in shape["bias"],
                                           dtype=old.weight.dtype, device=old.weight.device))
        parts.attention.num_key_value_groups = shape["heads"] // shape["kv_heads"]
        if hasattr(parts.mlp, "intermediate_size"):
            parts.mlp.intermediate_size = shape["intermediate"]


def load_pretrained(directory: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a structurally pruned directory whose config carries `prunelab_structure`.

    The documented loader: build the model from its config, give each block the recorded
    shapes, read the safetensors files, tie the embeddings where the config ties them.
    (Directories without that field load with plain `from_pretrained`.)
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    layout = getattr(config, STRUCTURE_KEY, None)
    if layout is not None:
        apply_layout(model, layout["layers"])
    from prunelab import ssm

    ssm_layout = getattr(config, ssm.STRUCTURE_KEY, None)
    if ssm_layout is not None:
        ssm.apply_layout(model, ssm_layout["layers"])
    state: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded_ptrs]
    if unexpected or untied:
        raise PrunelabError(f"{directory} does not match its {STRUCTURE_KEY}: "
                            f"missing {untied[:3]}, unexpected {list(unexpected)[:3]}",
                            "re-save the model with prunelab")
    return model.to(dtype).eval()


def model_size(model: nn.Module) -> dict:
    """Parameters and their bytes, each shared tensor counted once (tied embeddings)."""
    seen, params, nbytes = set(), 0, 0
    for p in model.parameters():  # (parameters() already skips repeats of one tensor)
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        params += p.numel()
        nbytes += p.numel() * p.element_size()
    return {"parameters": params, "bytes": nbytes}
