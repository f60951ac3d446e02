"""What the engine accumulates from calibration data, one registered accumulator per statistic.

A method names the statistics it needs (`statistics = ("input_sq_sum",)`); the engine builds
one accumulator per name for each layer, feeds it what it reads, and hands the method
`result()` under that name. What an accumulator reads:
- "input": the layer's input, as [tokens, in_features] float32, one call per batch;
- "output": the layer's output, as [tokens, out_features] float32, one call per batch;
- "weight_grad": the gradient of the language-modelling loss with respect to the layer's
  weight, as [out, in] float32, one call per backward pass of the dense model.
Layers that read the same input tensor (q/k/v; gate/up) share one accumulator of each input
statistic, so results must be treated as read-only.

A new statistic is one small class here (or in a method's own file) with `@register_statistic`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

import torch

Reads = Literal["input", "output", "weight_grad"]
READS: tuple[str, ...] = ("input", "output", "weight_grad")


class Accumulator:
    """Accumulates one statistic of one layer. `width` is the feature size of what it reads
    (for "weight_grad", the weight's shape)."""

    name: ClassVar[str]
    reads: ClassVar[Reads] = "input"

    def __init__(self, width: int | tuple[int, ...], device: torch.device | str):
        self.width = width
        self.device = device

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        """The statistic. Called once, after the last update (it may reuse its buffers)."""
        raise NotImplementedError


STATISTICS: dict[str, type[Accumulator]] = {}


def register_statistic(cls: type[Accumulator]) -> type[Accumulator]:
    if cls.reads not in READS:
        raise ValueError(f"statistic {cls.name} reads {cls.reads!r}; choose one of {READS}")
    STATISTICS[cls.name] = cls
    return cls


def accumulator(name: str) -> type[Accumulator]:
    """The accumulator class registered under `name`."""
    try:
        return STATISTICS[name]
    except KeyError:
        raise ValueError(f"no statistic {name!r}; registered: {', '.join(sorted(STATISTICS))}") \
            from None


@register_statistic
class InputSqSum(Accumulator):
    """Σ over tokens of x_j², one value per input feature (Wanda's ‖X_j‖²)."""

    name = "input_sq_sum"

    def __init__(self, width, device):
        super().__init__(width, device)
        self.total = torch.zeros(width, dtype=torch.float32, device=device)

    def update(self, x):
        self.total += (x * x).sum(dim=0)

    def result(self):
        return self.total


@register_statistic
class Hessian(Accumulator):
    """H = (2/N) Σ x xᵀ over tokens, [in, in]: the SparseGPT/GPTQ paper's scaling."""

    name = "hessian"

    def __init__(self, width, device):
        super().__init__(width, device)
        self.total = torch.zeros((width, width), dtype=torch.float32, device=device)
        self.n_tokens = 0

    def update(self, x):
        self.n_tokens += x.shape[0]
        self.total.addmm_(x.t(), x)

    def result(self):
        # (the scale does not change SparseGPT's mask, only the dampening's reference size)
        return self.total.mul_(2.0 / max(self.n_tokens, 1))


class MeanVar(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor  # unbiased (divided by N − 1), as torch.var


class _MeanVar(Accumulator):
    """Per-feature mean and variance, merged batch by batch with Chan et al.'s update, which
    stays accurate where a running Σx² − (Σx)²/N would cancel (features with a large mean)."""

    def __init__(self, width, device):
        super().__init__(width, device)
        self.n_tokens = 0
        self.mean = torch.zeros(width, dtype=torch.float32, device=device)
        self.sq_dev = torch.zeros(width, dtype=torch.float32, device=device)  # Σ (x − mean)²

    def update(self, x):
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(dim=0)
        batch_sq_dev = ((x - batch_mean) ** 2).sum(dim=0)
        total = self.n_tokens + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.sq_dev += batch_sq_dev + delta * delta * (self.n_tokens * n / total)
        self.n_tokens = total

    def result(self):
        return MeanVar(self.mean, self.sq_dev / max(self.n_tokens - 1, 1))


@register_statistic
class InputMeanVar(_MeanVar):
    """Mean and variance of each input feature over tokens (FLAP's fluctuation metric)."""

    name = "input_mean_var"


@register_statistic
class OutputSqSum(InputSqSum):
    """Σ over tokens of y_i², one value per output feature."""

    name = "output_sq_sum"
    reads = "output"


@register_statistic
class GradSqSum(Accumulator):
    """Σ over backward passes of g², per weight [out, in] (GBLM's accumulated gradient).

    GBLM squares 100·g to keep fp16 gradients from underflowing; in fp32 that is a constant
    factor a method may apply itself.
    """

    name = "grad_sq_sum"
    reads = "weight_grad"

    def __init__(self, width, device):
        super().__init__(width, device)
        self.total = torch.zeros(width, dtype=torch.float32, device=device)

    def update(self, x):
        self.total += x * x

    def result(self):
        return self.total
