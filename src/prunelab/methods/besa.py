"""BESA, blockwise parameter-efficient sparsity allocation (Xu et al., ICLR 2024;
OpenGVLab/LLMPrune-BESA).

Per decoder block, with the block's calibration inputs (the pruned blocks before it feed it,
as in Wanda):
- each linear's weights are ranked per row by their Wanda score |W_ij|·‖X_j‖₂;
- each row (or, with per_row=false, each layer) holds logits over candidate sparsities
  c_k = min_rate, min_rate + step, ..., max_rate; p = softmax(sigmoid(logits)) (the
  reference's default smoothing; softmax(logits) with sigmoid_smooth=false) gives an
  expected sparsity ŝ = Σ_k p_k c_k, the logits starting equal;
- the forward pass uses a hard mask (the int(C·ŝ) lowest-ranked weights of a row pruned) with
  the gradient of the soft mask P(kept at rank t) = 1 − Σ_k p_k [t < int(C·c_k)]
  (straight-through);
- loss = Σ ((Y − Ŷ)/‖Y_feature‖)² / hidden + β · ((ŝ_block − S)/S)², Y the dense block's
  output on the same inputs, ‖Y_feature‖ each output feature's norm over the step's tokens,
  ŝ_block the parameter-weighted mean; one window per step, `epochs` passes over them.
Finally the learned sparsities are shifted by one common amount, and the remainders of whole
weights given to the rows with the largest fractional parts, so the block prunes exactly as
many weights as uniform per-row pruning at S would: the model's sparsity is exact.

The reference optimises with Prodigy (d_coef 5, β 5 for LLaMA-7B); this one uses Adam at
`lr` (the reference's own `--normal-opt` alternative, lr 0.01). BESA is CPU-heavy: a forward
and backward pass of every block on every window, about three times Wanda's block passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunelab import arch
from prunelab.errors import PrunelabError
from prunelab.methods.base import (LayerDecision, MethodConfig, MethodCost, PruningMethod,
                                   register, working_copy)
from prunelab.methods.wanda import wanda_scores


@dataclass
class BESAConfig(MethodConfig):
    per_row: bool = field(default=True, metadata={
        "help": "learn a sparsity per row (the paper's main setting), else per layer"})
    min_rate: float = field(default=0.0, metadata={"help": "smallest candidate sparsity"})
    max_rate: float = field(default=1.0, metadata={"help": "largest candidate sparsity"})
    step: float = field(default=0.01, metadata={"help": "spacing of the candidate sparsities"})
    beta: float = field(default=5.0, metadata={"help": "weight of the sparsity penalty"})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the logits"})
    epochs: int = field(default=1, metadata={"help": "passes over the calibration windows"})
    windows_per_step: int = field(default=1, metadata={
        "help": "calibration windows per optimisation step"})
    sigmoid_smooth: bool = field(default=True, metadata={
        "help": "p = softmax(sigmoid(logits)) as the reference's default"})

    def validate(self) -> None:
        if not 0 <= self.min_rate < self.max_rate <= 1:
            raise PrunelabError(f"BESA candidates [{self.min_rate}, {self.max_rate}] are not "
                                "within [0, 1] with min_rate < max_rate",
                                "e.g. --option min_rate=0 --option max_rate=1")
        if not (self.step > 0 and self.step <= self.max_rate - self.min_rate):
            raise PrunelabError(f"BESA option step={self.step} does not fit in "
                                f"[{self.min_rate}, {self.max_rate}]", "e.g. --option step=0.01")
        for name in ("beta", "lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise PrunelabError(f"BESA option {name}={value} is not a non-negative number",
                                    f"e.g. --option {name}=" + ("5" if name == "beta" else "0.01"))
        if self.epochs < 1 or self.windows_per_step < 1:
            raise PrunelabError("BESA options epochs and windows_per_step must be at least 1",
                                "e.g. --option epochs=1 --option windows_per_step=1")

    def candidates(self) -> torch.Tensor:
        count = int(round((self.max_rate - self.min_rate) / self.step)) + 1
        rates = self.min_rate + self.step * torch.arange(count, dtype=torch.float64)
        return rates.clamp(max=self.max_rate).to(torch.float32)


class _Masked(nn.Module):
    """A parametrization: the weight times the mask the current step computed."""

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, weight):
        if self.mask is None:  # (registration calls it once, before any step)
            return weight
        return weight * self.mask.to(weight.dtype)


class _LayerAllocation:
    """One layer's ranks, logits and masks ([out, in] in the layer's own orientation)."""

    def __init__(self, weight: torch.Tensor, input_sq_sum: torch.Tensor,
                 candidates: torch.Tensor, per_row: bool):
        rows, cols = weight.shape
        device = weight.device
        order = torch.sort(wanda_scores(weight, input_sq_sum), dim=1, stable=True).indices
        self.rank = torch.empty_like(order)
        self.rank.scatter_(1, order,
                           torch.arange(cols, device=device).expand(rows, cols).contiguous())
        self.rows, self.cols = rows, cols
        self.candidates = candidates = candidates.to(device)
        units = rows if per_row else 1
        self.logits = torch.zeros(units, len(candidates), device=device, requires_grad=True)
        # A weight at rank t is pruned at candidate k when t < int(C·c_k): with the candidates
        # ascending, P(pruned) = Σ p_k over k ≥ first[t], the first candidate that prunes t.
        # `first_of_weight` maps each weight straight to that index (len(candidates): none).
        counts = (candidates * cols).to(torch.long)
        first = torch.searchsorted(counts, torch.arange(cols, device=device), right=True)
        self.first_of_weight = first[self.rank]

    def probabilities(self, smooth: bool) -> torch.Tensor:
        return (self.logits.sigmoid() if smooth else self.logits).softmax(dim=-1)

    def row_sparsity(self, p: torch.Tensor) -> torch.Tensor:
        return (p @ self.candidates).expand(self.rows)

    def keep_probability(self, p: torch.Tensor) -> torch.Tensor:
        """P(kept) of each weight [out, in]: 1 − Σ_k p_k [rank < int(C·c_k)]."""
        # tail[:, k] = Σ_{k' ≥ k} p_k' (and 0 past the last candidate)
        tail = torch.cat([p.flip(-1).cumsum(-1).flip(-1), p.new_zeros(p.shape[0], 1)], dim=-1)
        return 1 - tail.expand(self.rows, -1).gather(1, self.first_of_weight)

    def mask(self, smooth: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(straight-through keep mask [out, in], the layer's expected sparsity)."""
        p = self.probabilities(smooth)
        sparsity = self.row_sparsity(p)
        soft = self.keep_probability(p)
        hard = (self.rank >= (sparsity.detach() * self.cols).long().unsqueeze(1)).float()
        return hard - soft.detach() + soft, sparsity.mean()


def exact_counts(sparsities: torch.Tensor, widths: torch.Tensor, total: int) -> torch.Tensor:
    """Whole weights to prune per row: width·(ŝ + δ) with one shift δ for all rows, rounded
    down, then one more for the rows of largest remainder, so that the counts sum to `total`."""
    sparsities, widths = sparsities.double(), widths.double()

    def pruned(shift: float) -> torch.Tensor:
        return (widths * (sparsities + shift)).clamp(min=torch.zeros_like(widths), max=widths)

    low, high = -1.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if float(pruned(middle).sum()) < total:
            low = middle
        else:
            high = middle
    exact = pruned(high)
    counts = exact.floor()
    missing = int(total - counts.sum())
    if missing > 0:
        room = counts < widths
        remainder = torch.where(room, exact - counts, torch.full_like(exact, -1.0))
        counts[torch.sort(remainder, descending=True, stable=True).indices[:missing]] += 1
    elif missing < 0:
        counts[torch.sort(torch.where(counts > 0, exact - counts, torch.full_like(exact, 2.0)),
                          stable=True).indices[:-missing]] -= 1
    return counts.long()


@register
class BESA(PruningMethod):
    name = "besa"
    cost = MethodCost(passes=8.3)  # each block run forward and back with its masks
    summary = ("learned per-row sparsity allocation within each block (straight-through masks "
               "on Wanda ranks, block output reconstruction); exact overall sparsity")
    Config = BESAConfig
    statistics = ("input_sq_sum",)
    needs_block_inputs = True
    supports_nm = False

    def check_request(self, sparsity, pattern):
        low, high = self.config.min_rate, self.config.max_rate
        if not low <= sparsity <= high:
            raise PrunelabError(f"BESA target sparsity {sparsity} is outside its candidate "
                                f"sparsities [{low}, {high}]",
                                "choose a sparsity inside, or set --option min_rate=... / "
                                "max_rate=...")

    def prune_block(self, block, layers, stats, targets, inputs=None):
        if inputs is None:
            raise RuntimeError("BESA needs the block's inputs (needs_block_inputs)")
        config = self.config
        for layer_target in targets.values():
            self.check_request(layer_target.sparsity, layer_target.pattern)
        names = list(layers)
        weights = {n: working_copy(layers[n]) for n in names}
        sizes = {n: w.numel() for n, w in weights.items()}
        target = sum(targets[n].sparsity * sizes[n] for n in names) / sum(sizes.values())
        candidates = config.candidates()
        allocations = {n: _LayerAllocation(weights[n], stats[n]["input_sq_sum"], candidates,
                                           config.per_row) for n in names}
        if target > 0:
            self._learn(block, layers, allocations, sizes, target, inputs)
        # Exact: as many pruned weights in the block as uniform per-row pruning would take.
        with torch.no_grad():
            row_sparsity = torch.cat([a.row_sparsity(a.probabilities(config.sigmoid_smooth))
                                      for a in allocations.values()])
            widths = torch.cat([torch.full((a.rows,), a.cols, device=row_sparsity.device)
                                 for a in allocations.values()])
            total = sum(a.rows * int(a.cols * targets[n].sparsity)
                        for n, a in allocations.items())
            counts = exact_counts(row_sparsity, widths, total).split(
                [a.rows for a in allocations.values()])
        for (name, allocation), count in zip(allocations.items(), counts):
            pruned = allocation.rank < count.unsqueeze(1)
            with torch.no_grad():
                learned = float(allocation.row_sparsity(
                    allocation.probabilities(config.sigmoid_smooth)).mean())
            yield name, LayerDecision(weights.pop(name), pruned,
                                      {"besa_learned_sparsity": round(learned, 4)})

    def _learn(self, block, layers, allocations, sizes, target, inputs) -> None:
        config = self.config
        total_size = sum(sizes.values())
        parameters = [p for p in block.parameters()]
        requires = [p.requires_grad for p in parameters]
        masked = {n: _Masked() for n in layers}
        optimizer = torch.optim.Adam([a.logits for a in allocations.values()], lr=config.lr)
        with torch.no_grad():  # the dense block's outputs: what the pruned block should give
            references = [inputs.forward(block, b) for b in range(len(inputs))]
        try:
            for p in parameters:
                p.requires_grad_(False)
            for n, layer in layers.items():
                parametrize.register_parametrization(layer, "weight", masked[n])
            with torch.enable_grad():
                for _ in range(config.epochs):
                    for b in range(len(inputs)):
                        size = inputs.batch_size(b)
                        for start in range(0, size, config.windows_per_step):
                            rows = slice(start, min(size, start + config.windows_per_step))
                            expected = 0.0
                            for n, allocation in allocations.items():
                                keep, sparsity = allocation.mask(config.sigmoid_smooth)
                                masked[n].mask = keep.t() if _transposed(layers[n]) else keep
                                expected = expected + sparsity * (sizes[n] / total_size)
                            output = inputs.forward(block, b, rows)
                            reference = references[b][rows]
                            flat = reference.reshape(-1, reference.shape[-1]).float()
                            scale = flat.norm(dim=0).clamp_min(1e-12)
                            error = (reference.float() - output.float()) / scale
                            loss = (error ** 2).sum() / reference.shape[-1] \
                                + config.beta * ((expected - target) / target) ** 2
                            optimizer.zero_grad()
                            loss.backward()
                            optimizer.step()
                            del output, error, loss
        finally:
            for n, layer in layers.items():
                if parametrize.is_parametrized(layer, "weight"):
                    parametrize.remove_parametrizations(layer, "weight",
                                                        leave_parametrized=False)
            for p, flag in zip(parameters, requires):
                p.requires_grad_(flag)


def _transposed(layer: nn.Module) -> bool:
    """Whether the layer stores its weight as [in, out] (GPT-2's Conv1D)."""
    return arch.as_out_in(layer, torch.empty(1, 2)).shape != (1, 2)
