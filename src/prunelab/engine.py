"""The block-by-block runner that every pruning method shares.

Sequential calibration, as in the Wanda and SparseGPT papers:
1. run the model on the calibration windows up to the first block and keep its inputs;
2. for each block: collect each linear layer's input statistic with forward hooks while the
   block runs on those inputs, let the method decide and apply each layer's mask (and weight
   update), then run the *pruned* block to produce the next block's inputs.
Only one block's statistics are held at a time. Methods that need no data (magnitude) skip
the forward passes entirely.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab import arch
from prunelab.methods.base import LayerStats, LayerTarget, PruningMethod, Statistic
from prunelab.methods.masks import NMPattern, check_pattern_fits


@dataclass
class LayerRecord:
    name: str
    rows: int
    cols: int
    target_sparsity: float
    zeros_before: int
    zeros_after: int
    notes: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def achieved_sparsity(self) -> float:
        return self.zeros_after / self.numel

    def to_dict(self) -> dict:
        return {**asdict(self), "achieved_sparsity": round(self.achieved_sparsity, 6)}


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


class _Collector:
    """Accumulates one input statistic from forward hooks, shared by every layer that reads the
    same tensor.

    q/k/v read one normalised hidden state, as do gate/up: their ‖X‖² (or X Xᵀ) are equal, so
    they are computed once and the layers share the result (methods treat stats as read-only).
    For SparseGPT that removes a quarter of the Hessian arithmetic and memory of a Llama block.
    """

    def __init__(self, statistic: Statistic, layers: dict[str, nn.Module], device):
        self.statistic = statistic
        self.device = device
        self.widths = {name: arch.weight_matrix(m).shape[1] for name, m in layers.items()}
        self.owner: dict[str, str] = {}  # layer -> the layer whose total it shares
        self.totals: dict[str, torch.Tensor] = {}
        self.n_tokens: dict[str, int] = {}
        # The previous hook's input and its owner. Holding the reference keeps the tensor
        # alive, so an `is` match cannot be a new tensor at a recycled address.
        self._last: tuple[torch.Tensor, str] | None = None

    def hook(self, name: str):
        def on_forward(module, args, kwargs, output):
            x = arch.layer_input(args, kwargs)  # (not detached: .detach() makes a new object)
            shares = self._last is not None and x is self._last[0]
            owner = self._last[1] if shares else name
            if self.owner.setdefault(name, owner) != owner:
                raise RuntimeError(f"{name} read a different input than on the first batch")
            self._last = (x, owner)
            if owner == name:
                self._accumulate(name, x.detach())
        return on_forward

    def end_batch(self) -> None:
        self._last = None

    def _accumulate(self, name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.n_tokens[name] = self.n_tokens.get(name, 0) + x.shape[0]
        if name not in self.totals:
            width = self.widths[name]
            shape = (width,) if self.statistic is Statistic.INPUT_SQ_SUM else (width, width)
            self.totals[name] = torch.zeros(shape, dtype=torch.float32, device=self.device)
        if self.statistic is Statistic.INPUT_SQ_SUM:
            self.totals[name] += (x * x).sum(dim=0)
        else:
            self.totals[name].addmm_(x.t(), x)

    def stats(self) -> dict[str, LayerStats]:
        for name in self.widths:
            if name not in self.owner:  # never called on these inputs: empty statistics
                self.owner[name] = name
                self._accumulate(name, torch.zeros(0, self.widths[name], device=self.device))
        by_owner: dict[str, LayerStats] = {}
        for owner, total in self.totals.items():
            n = self.n_tokens[owner]
            if self.statistic is Statistic.INPUT_SQ_SUM:
                by_owner[owner] = LayerStats(n, input_sq_sum=total)
            else:
                # The SparseGPT paper's scaling, H = (2/N) Σ x xᵀ (the mask does not depend on it).
                by_owner[owner] = LayerStats(n, hessian=total.mul_(2.0 / max(n, 1)))
        return {name: by_owner[owner] for name, owner in self.owner.items()}


class BlockRunner:
    """Holds the current inputs of a block for every calibration batch, and runs blocks."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, windows: torch.Tensor,
                 batch_size: int, device):
        self.blocks = blocks
        self.device = device
        # Every batch's block input is a slice of one buffer, and block outputs are copied
        # back into it. Held as many separate tensors, these long-lived inputs end up
        # scattered through the allocator's heap between each forward's transients, and the
        # heap cannot shrink around them: on smollm2-135m that cost 0.15-0.25 GB of peak RSS.
        buffer: torch.Tensor | None = None
        self.inputs: list[torch.Tensor] = []
        self.calls: list[list[tuple[tuple, dict]]] = []  # per batch: per block (args, kwargs)
        calls_by_size: dict[int, list] = {}
        start = 0
        for batch in windows.split(batch_size):
            size = batch.shape[0]
            # The first batch of each size captures the arguments every block receives (masks
            # and rotary tables can differ by block); later batches stop at block 0.
            first, calls = arch.capture_block_calls(model, blocks, batch,
                                                    stop_after_first=size in calls_by_size)
            calls_by_size.setdefault(size, calls)
            if buffer is None:
                buffer = torch.empty((len(windows), *first.shape[1:]), dtype=first.dtype,
                                     device=device)
            self.inputs.append(buffer[start:start + size])
            self.inputs[-1].copy_(first)
            start += size
            del first
            self.calls.append(_to_device(calls_by_size[size], device))

    def run(self, index: int, advance: bool,
            after_batch: Callable[[], None] | None = None) -> None:
        """Run block `index` on every batch. With `advance`, each batch's output replaces its
        input as soon as it exists (the next block's inputs; only one set is ever held)."""
        block = self.blocks[index]
        with torch.no_grad():
            for hidden, calls in zip(self.inputs, self.calls):
                out = arch.call_block(block, hidden, calls[index])
                if advance:
                    if out.shape != hidden.shape:
                        raise RuntimeError(f"block {index} changed the hidden-state shape "
                                           f"from {tuple(hidden.shape)} to {tuple(out.shape)}")
                    hidden.copy_(out)  # this batch's input is spent: its slot takes the output
                del hidden, out
                if after_batch is not None:
                    after_batch()


def _input_groups(runner: BlockRunner, index: int, layers: dict[str, nn.Module]) -> list[list[str]]:
    """Group a block's layers by the tensor they read (q/k/v; o; gate/up; down), in call order.

    Found from one forward of the first batch, so no per-family table is needed.
    """
    seen: dict[str, tuple] = {}
    # Hold every input alive until the forward ends: once freed, the allocator may hand the
    # same address to the next input (the MLP's norm output reusing attention's), which would
    # merge two groups.
    alive: list[torch.Tensor] = []

    def make_hook(name):
        def hook(module, args, kwargs, output):
            x = arch.layer_input(args, kwargs)
            alive.append(x)
            seen.setdefault(name, (x.data_ptr(), tuple(x.shape)))
        return hook

    handles = [m.register_forward_hook(make_hook(n), with_kwargs=True) for n, m in layers.items()]
    try:
        with torch.no_grad():
            arch.call_block(runner.blocks[index], runner.inputs[0], runner.calls[0][index])
    finally:
        for h in handles:
            h.remove()
        alive.clear()
    groups: dict[tuple, list[str]] = {}
    for name in seen:  # dict order is call order
        groups.setdefault(seen[name], []).append(name)
    missing = [n for n in layers if n not in seen]
    return list(groups.values()) + ([missing] if missing else [])


def check_pattern(model: nn.Module, method: PruningMethod, pattern: NMPattern | None) -> None:
    """Refuse an N:M pattern that some layer's input width cannot hold, before any work."""
    if pattern is None or not method.supports_nm:
        return
    found = arch.find_blocks(model)
    for i, block in enumerate(found.blocks):
        for name, layer in arch.prunable_layers(block).items():
            check_pattern_fits(pattern, arch.weight_matrix(layer).shape[1], f"{found.path}.{i}.{name}")


def prune_blocks(model: nn.Module, method: PruningMethod, sparsity: float,
                 pattern: NMPattern | None, windows: torch.Tensor | None, *,
                 batch_size: int = 8, device: str | torch.device | None = None,
                 progress: bool = True,
                 layer_sparsity: Callable[[str], float] | None = None) -> list[LayerRecord]:
    """Prune every prunable layer of every block of `model` in place; return per-layer records."""
    found = arch.find_blocks(model)
    blocks, prefix = found.blocks, found.path
    device = torch.device(device) if device is not None else next(model.parameters()).device
    all_layers = {f"{prefix}.{i}.{name}": layer for i, block in enumerate(blocks)
                  for name, layer in arch.prunable_layers(block).items()}
    check_pattern(model, method, pattern)
    method.prepare({n: arch.weight_matrix(m) for n, m in all_layers.items()}, sparsity, pattern)

    needs_data = method.statistic is not Statistic.NONE
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    runner = BlockRunner(model, blocks, windows, batch_size, device) if needs_data else None
    records: list[LayerRecord] = []
    bar = tqdm(range(len(blocks)), desc=f"pruning ({method.name})", unit="block",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for index in bar:
            block = blocks[index]
            home = next(block.parameters()).device
            block.to(device)  # on an accelerator, only this block is on-loaded
            layers = arch.prunable_layers(block)
            if needs_data and method.sequential_groups():
                groups = _input_groups(runner, index, layers)
            else:
                groups = [list(layers)]
            for group in groups:
                stats = _collect(runner, index, {n: layers[n] for n in group}, method.statistic,
                                 device) if needs_data else {}
                for name in group:
                    full = f"{prefix}.{index}.{name}"
                    target = LayerTarget(full, layer_sparsity(full) if layer_sparsity else sparsity,
                                         pattern)
                    records.append(_apply(method, layers[name], stats.pop(name, LayerStats()),
                                          target))
            if needs_data and index + 1 < len(blocks):
                runner.run(index, advance=True)
            block.to(home)
    finally:
        bar.close()
        model.config.use_cache = use_cache
    return records


def _collect(runner: BlockRunner, index: int, layers: dict[str, nn.Module],
             statistic: Statistic, device) -> dict[str, LayerStats]:
    collector = _Collector(statistic, layers, device)
    handles = [m.register_forward_hook(collector.hook(n), with_kwargs=True)
               for n, m in layers.items()]
    try:
        runner.run(index, advance=False, after_batch=collector.end_batch)
    finally:
        for h in handles:
            h.remove()
    return collector.stats()


def _apply(method: PruningMethod, layer: nn.Module, stats: LayerStats,
           target: LayerTarget) -> LayerRecord:
    weight = arch.weight_matrix(layer)
    zeros_before = int((weight == 0).sum())
    # A contiguous fp32 copy: methods are free to compute on it without touching the model.
    decision = method.prune_layer(weight.to(torch.float32, copy=True).contiguous(), stats, target)
    new_weight = decision.weight.to(torch.float32).clone()
    new_weight[decision.pruned] = 0
    arch.set_weight_matrix(layer, new_weight)
    rows, cols = weight.shape
    return LayerRecord(target.name, rows, cols, target.sparsity, zeros_before,
                       int((arch.weight_matrix(layer) == 0).sum()), decision.notes)
