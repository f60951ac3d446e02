"""Routing each input to its task's pruned model: SEAP's inference step.

SEAP prunes one model per task from that task's own activations (`methods/seap.py`) and, at
inference, sends each input to the model of the task it belongs to, chosen by a classifier.
Here:

- The classifier reads the mean, over an input's tokens, of the hidden state leaving block
  `depth − 1` (the embeddings when depth is 0). SEAP's depth schedule leaves the first
  `keep_first` blocks whole (2 by default), so with depth ≤ keep_first every task model
  computes exactly the dense model's features: routing costs `depth` blocks of one forward,
  and no extra weights beyond the classifier. `RoutedModel` checks that the experts share
  those blocks.
- The classifier is a multinomial logistic regression on standardised features (L2 penalty,
  full-batch L-BFGS: deterministic), fitted on prompts of each task that the evaluation does
  not use (the held-out items of `task:FAMILY`, the same ones SEAP calibrates on). The SEAP
  reference trains its own classifier on hidden states; ours is the simplest that separates
  the suite's task families, and its accuracy on the evaluation prompts is reported.
- `RoutedModel` is an `nn.Module` the evaluation engine can score and generate with: each
  row of a batch goes to its expert, and the logits (or generated tokens) come back in the
  batch's order. `route_counts` records where inputs went.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from prunelab import arch
from prunelab.errors import PrunelabError


class _StopForward(Exception):
    """Raised by a hook once the routing features are computed: the rest is not needed."""


@torch.no_grad()
def trunk_features(model: nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None, depth: int) -> torch.Tensor:
    """[B, hidden] mean over attended tokens of the hidden state leaving block `depth − 1`
    (the embeddings' output when `depth` is 0); later blocks are not run."""
    captured: dict[str, torch.Tensor] = {}

    def grab(_module, _inputs, output):
        captured["hidden"] = arch.block_output(output) if depth else output
        raise _StopForward

    target = arch.find_blocks(model).blocks[depth - 1] if depth else model.get_input_embeddings()
    handle = target.register_forward_hook(grab)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    hidden = captured["hidden"].float()
    if attention_mask is None:
        return hidden.mean(1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@dataclass
class TaskRouter:
    """A linear classifier from trunk features to task labels."""

    labels: list[str]
    depth: int
    mean: torch.Tensor  # [hidden]
    scale: torch.Tensor  # [hidden]
    weight: torch.Tensor  # [labels, hidden]
    bias: torch.Tensor  # [labels]

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """The label index of each row of [B, hidden] features."""
        z = (features.float().to(self.mean.device) - self.mean) / self.scale
        return (z @ self.weight.T + self.bias).argmax(-1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "scale": self.scale, "weight": self.weight, "bias": self.bias}


def fit_router(features: Mapping[str, torch.Tensor], depth: int, *, l2: float = 1e-3,
               max_iter: int = 200) -> TaskRouter:
    """A multinomial logistic regression on standardised features, one [n, hidden] tensor
    per label, fitted by full-batch L-BFGS (deterministic for the same features)."""
    labels = list(features)
    if len(labels) < 2:
        raise PrunelabError("routing needs two or more tasks", "name at least two task families")
    empty = [label for label in labels if features[label].shape[0] == 0]
    if empty:
        raise PrunelabError(f"no routing prompts for {', '.join(empty)}",
                            "give each task held-out prompts (evaluate fewer items)")
    x = torch.cat([features[label].float() for label in labels])
    y = torch.cat([torch.full((features[label].shape[0],), i, dtype=torch.long)
                   for i, label in enumerate(labels)])
    mean, scale = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / scale
    weight = torch.zeros(len(labels), z.shape[1], requires_grad=True)
    bias = torch.zeros(len(labels), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-9,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(z @ weight.T + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return TaskRouter(labels, depth, mean, scale, weight.detach(), bias.detach())


class RoutedModel(nn.Module):
    """Task experts behind a router: each input row runs through the model of its task."""

    # Packed scoring puts several inputs in one row; a row must be one input to be routed.
    prunelab_no_packing = True

    def __init__(self, experts: Mapping[str, nn.Module], router: TaskRouter):
        super().__init__()
        missing = [label for label in router.labels if label not in experts]
        if missing:
            raise PrunelabError(f"the router sends inputs to {', '.join(missing)}, which has "
                                "no expert", "give an expert model for every router label")
        self.experts = nn.ModuleDict({label: experts[label] for label in router.labels})
        self.router = router
        self.route_counts: Counter[str] = Counter()
        self._check_shared_trunk()

    def _check_shared_trunk(self) -> None:
        if self.router.depth == 0:
            return
        first, *others = self.experts.values()
        for label, other in zip(list(self.experts)[1:], others):
            for i in range(self.router.depth):
                ours = arch.find_blocks(first).blocks[i].state_dict()
                theirs = arch.find_blocks(other).blocks[i].state_dict()
                if ours.keys() != theirs.keys() or any(
                        ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k])
                        for k in ours):
                    raise PrunelabError(
                        f"expert {label} differs from {self.router.labels[0]} in block {i}, "
                        f"which the routing features (depth {self.router.depth}) read",
                        "route on blocks every expert keeps whole (depth ≤ SEAP's keep_first)")

    @property
    def config(self):
        return next(iter(self.experts.values())).config

    def route(self, input_ids: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> list[str]:
        trunk = next(iter(self.experts.values()))
        features = trunk_features(trunk, input_ids, attention_mask, self.router.depth)
        chosen = [self.router.labels[i] for i in self.router.predict(features).tolist()]
        self.route_counts.update(chosen)
        return chosen

    def _groups(self, input_ids, attention_mask) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for row, label in enumerate(self.route(input_ids, attention_mask)):
            groups.setdefault(label, []).append(row)
        return groups

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        kwargs.pop("use_cache", None)
        logits = None
        for label, rows in self._groups(input_ids, attention_mask).items():
            index = torch.tensor(rows, device=input_ids.device)
            sub = {k: v.index_select(0, index) if torch.is_tensor(v) and v.shape[:1]
                   == input_ids.shape[:1] else v for k, v in kwargs.items()}
            out = self.experts[label](
                input_ids=input_ids.index_select(0, index), use_cache=False,
                attention_mask=None if attention_mask is None
                else attention_mask.index_select(0, index), **sub).logits
            if logits is None:
                logits = out.new_empty((input_ids.shape[0],) + tuple(out.shape[1:]))
            logits[index] = out
        return CausalLMOutputWithPast(logits=logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 stopping_criteria=None, pad_token_id: int | None = None,
                 generation_config=None, **kwargs) -> torch.Tensor:
        """Each row generated by its expert; rows are padded on the right to one width."""
        if pad_token_id is None and generation_config is not None:
            pad_token_id = generation_config.pad_token_id
        pieces: dict[int, torch.Tensor] = {}
        for label, rows in self._groups(input_ids, attention_mask).items():
            index = torch.tensor(rows, device=input_ids.device)
            out = self.experts[label].generate(
                input_ids=input_ids.index_select(0, index),
                attention_mask=None if attention_mask is None
                else attention_mask.index_select(0, index),
                # stopping criteria may keep per-row state: a fresh copy for each expert's rows
                stopping_criteria=copy.deepcopy(stopping_criteria),
                generation_config=generation_config, pad_token_id=pad_token_id, **kwargs)
            for row, sequence in zip(rows, out):
                pieces[row] = sequence
        width = max(p.shape[0] for p in pieces.values())
        result = torch.full((input_ids.shape[0], width), pad_token_id or 0,
                            dtype=input_ids.dtype, device=input_ids.device)
        for row, sequence in pieces.items():
            result[row, :sequence.shape[0]] = sequence
        return result


def routing_prompts(family: str, eval_limit: int, eval_seed: int = 0) -> list[str]:
    """The prompts (each item's query, no demonstrations) of `family`'s items that an
    evaluation of `eval_limit` items per level with `eval_seed` does not select."""
    from prunelab.tasks.calibration import held_out

    return [item.text if task.kind == "rolling" else task.template.query(item)
            for task, item in held_out(f"task:{family}?limit={eval_limit}&seed={eval_seed}")]


@torch.no_grad()
def prompt_features(loaded, prompts: Sequence[str], depth: int, *, batch_size: int = 16,
                    max_length: int = 512) -> torch.Tensor:
    """Trunk features of each prompt, in batches of right-padded token ids."""
    tok, model = loaded.tokenizer, loaded.model
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    rows = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tok(p, add_special_tokens=loaded.add_bos).input_ids[-max_length:]
                   for p in prompts[start:start + batch_size]]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, e in enumerate(encoded):
            ids[b, :len(e)] = torch.tensor(e)
            mask[b, :len(e)] = 1
        rows.append(trunk_features(model, ids.to(device), mask.to(device), depth).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, model.config.hidden_size)


def build_seap_router(loaded, families: Sequence[str], sparsity: float, *, eval_limit: int,
                      eval_seed: int = 0, n_samples: int = 32, seqlen: int = 256,
                      calibration_seed: int = 0, depth: int | None = None,
                      progress: bool = False, **options):
    """One SEAP model per task family, each calibrated on that family's held-out prompts,
    behind a router fitted on the same prompts. Returns (LoadedModel of a RoutedModel,
    {family: share of its held-out prompts the router sends home})."""
    from prunelab.compress import prune
    from prunelab.data.calibration import CalibrationConfig
    from prunelab.zoo.models import LoadedModel

    keep_first = int(options.get("keep_first", 2))
    depth = keep_first if depth is None else depth
    if depth > keep_first:
        raise PrunelabError(f"routing depth {depth} reads blocks SEAP prunes (keep_first="
                            f"{keep_first})", f"use a depth of at most {keep_first}")
    features = {f: prompt_features(loaded, routing_prompts(f, eval_limit, eval_seed), depth)
                for f in families}
    router = fit_router(features, depth)
    fitted = {f: float((router.predict(x) == router.labels.index(f)).float().mean())
              for f, x in features.items()}
    experts = {}
    for family in families:
        expert = LoadedModel(copy.deepcopy(loaded.model), loaded.tokenizer,
                             f"{loaded.name}+seap[{family}]")
        source = f"task:{family}?limit={eval_limit}&seed={eval_seed}"
        prune(expert, "seap", sparsity, calibration=CalibrationConfig(
            source=source, n_samples=n_samples, seqlen=seqlen, seed=calibration_seed),
              progress=progress, **options)
        experts[family] = expert.model
    routed = RoutedModel(experts, router)
    return LoadedModel(routed, loaded.tokenizer, f"{loaded.name}+seap-routed"), fitted
