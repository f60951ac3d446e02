"""The block-by-block runner that every pruning method shares.

Sequential calibration, as in the Wanda and SparseGPT papers:
1. run the model on the calibration windows up to the first block and keep its inputs;
2. for each block: accumulate the statistics the method names (`method.statistics`) with
   forward hooks while the block runs on those inputs, let the method decide the block
   (`prune_block`), write its decisions, then run the *pruned* block to produce the next
   block's inputs.
Only one block's statistics are held at a time. Methods that need no data (magnitude) skip
the forward passes entirely.

Before that, once: the method's `plan` sees every prunable matrix and, if it names
`planning_statistics`, those statistics from a pass over the dense model (block by block
with unpruned blocks, and a forward and backward pass of the whole model for gradient
statistics). It may return per-layer targets.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab import arch
from prunelab.allocator import release_free_heap
from prunelab.errors import PrunelabError
from prunelab.methods.base import (LayerDecision, LayerStats, LayerTarget, PlanContext,
                                   PruningMethod)
from prunelab.methods.masks import NMPattern, check_pattern_fits, check_sparsity, zero_where
from prunelab.methods.quant import QuantizedWeight
from prunelab.methods.statistics import Accumulator, accumulator


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
    def numel_before(self) -> int:
        """The weight's size before pruning (larger than `numel` when rows or columns were
        removed: structured pruning)."""
        shape = self.notes.get("shape_before")
        return int(shape[0]) * int(shape[1]) if shape else self.numel

    @property
    def removed(self) -> int:
        """Weights gone: zeros in the matrix plus entries removed with their rows/columns."""
        return self.zeros_after + self.numel_before - self.numel

    @property
    def achieved_sparsity(self) -> float:
        return self.removed / self.numel_before if self.numel_before else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "achieved_sparsity": round(self.achieved_sparsity, 6)}


class PruneRecords(list):
    """What `prune_blocks` returns: its LayerRecords in order (a plain list, as before), and
    `masks`, each layer's pruned positions (bool, on the CPU) when asked to keep them, and
    `quantized`, each quantized layer's grid (on the CPU; its codes too where the weight's
    dtype cannot hold them, see `QuantizedWeight.grid_only`)."""

    def __init__(self, records: Iterable[LayerRecord] = (),
                 masks: dict[str, torch.Tensor] | None = None):
        super().__init__(records)
        self.masks: dict[str, torch.Tensor] = masks if masks is not None else {}
        self.quantized: dict[str, QuantizedWeight] = {}


class BlockInputs:
    """One block's calibration inputs, batch by batch, for a method that runs the block itself
    (`PruningMethod.needs_block_inputs`): e.g. to optimise masks against the block's output.

    `forward` runs under whatever grad mode the caller chose; the inputs are the engine's and
    must not be modified.
    """

    def __init__(self, runner: BlockRunner, index: int):
        self._runner = runner
        self._index = index

    def __len__(self) -> int:
        return len(self._runner.inputs)

    def batch_size(self, batch: int) -> int:
        return self._runner.inputs[batch].shape[0]

    def forward(self, block: nn.Module, batch: int, rows: slice | None = None) -> torch.Tensor:
        """The block's output on batch `batch` (or on its windows `rows`: the block's other
        arguments that are per window are sliced alike)."""
        hidden, call = self._runner.inputs[batch], self._runner.calls[batch][self._index]
        if rows is not None:
            size = hidden.shape[0]
            hidden = hidden[rows]
            call = _slice_windows(call, size, rows)
        return arch.call_block(block, hidden, call)


def _slice_windows(obj, size: int, rows: slice):
    """Tensors whose first dimension is the batch's window count, sliced to `rows`."""
    if isinstance(obj, torch.Tensor):
        return obj[rows] if obj.dim() > 0 and obj.shape[0] == size and size > 1 else obj
    if isinstance(obj, tuple):
        return tuple(_slice_windows(o, size, rows) for o in obj)
    if isinstance(obj, list):
        return [_slice_windows(o, size, rows) for o in obj]
    if isinstance(obj, dict):
        return {k: _slice_windows(v, size, rows) for k, v in obj.items()}
    return obj


class BlockSource(Protocol):
    """Where the blocks' weights come from when they are not all in memory
    (`prunelab.streaming`): the engine asks for a block before it runs it and hands it back
    when it is done with it, so that only the block at hand holds real tensors."""

    def load(self, index: int) -> None:
        """Give block `index` its weights (nothing when it has them already)."""

    def release(self, index: int, compressed: bool) -> None:
        """Block `index` is done with: `compressed` after its final decisions (write it out),
        else after a pass over the dense block (drop it)."""

    def plan_weights(self) -> Mapping[str, torch.Tensor]:
        """Every prunable weight by full layer name, as [out, in], read when looked up."""


def _split_statistics(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(statistics read from tokens, statistics read from weight gradients)."""
    tokens = [n for n in names if accumulator(n).reads != "weight_grad"]
    grads = [n for n in names if accumulator(n).reads == "weight_grad"]
    return tokens, grads


class _Collector:
    """Accumulates the named statistics from forward hooks; input statistics are shared by
    every layer that reads the same tensor.

    q/k/v read one normalised hidden state, as do gate/up: their ‖X‖² (or X Xᵀ) are equal, so
    they are computed once and the layers share the result (methods treat stats as read-only).
    For SparseGPT that removes a quarter of the Hessian arithmetic and memory of a Llama block.
    """

    def __init__(self, names: Sequence[str], layers: dict[str, nn.Module], device):
        kinds = [accumulator(n) for n in names]
        self.input_kinds = [k for k in kinds if k.reads == "input"]
        self.output_kinds = [k for k in kinds if k.reads == "output"]
        self.device = device
        shapes = {name: arch.weight_matrix(m).shape for name, m in layers.items()}
        self.widths = {name: shape[1] for name, shape in shapes.items()}
        self.out_widths = {name: shape[0] for name, shape in shapes.items()}
        self.owner: dict[str, str] = {}  # layer -> the layer whose accumulators it shares
        self.inputs: dict[str, list[Accumulator]] = {}  # by owner
        self.outputs: dict[str, list[Accumulator]] = {}  # by layer
        self.n_tokens: dict[str, int] = {}  # by owner
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
                self._accumulate_input(name, x.detach())
            if self.output_kinds:
                self._accumulate_output(name, output.detach())
        return on_forward

    def end_batch(self) -> None:
        self._last = None

    def _accumulate_input(self, name: str, x: torch.Tensor) -> None:
        self.n_tokens[name] = self.n_tokens.get(name, 0) + math.prod(x.shape[:-1])
        if not self.input_kinds:
            self.inputs.setdefault(name, [])
            return
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if name not in self.inputs:
            self.inputs[name] = [k(self.widths[name], self.device) for k in self.input_kinds]
        for acc in self.inputs[name]:
            acc.update(x)

    def _accumulate_output(self, name: str, y: torch.Tensor) -> None:
        y = y.reshape(-1, y.shape[-1]).to(torch.float32)
        if name not in self.outputs:
            self.outputs[name] = [k(self.out_widths[name], self.device) for k in self.output_kinds]
        for acc in self.outputs[name]:
            acc.update(y)

    def stats(self) -> dict[str, LayerStats]:
        for name in self.widths:
            if name not in self.owner:  # never called on these inputs: empty statistics
                self.owner[name] = name
                self._accumulate_input(name, torch.zeros(0, self.widths[name], device=self.device))
            if self.output_kinds and name not in self.outputs:
                self._accumulate_output(name, torch.zeros(0, self.out_widths[name],
                                                          device=self.device))
        by_owner = {owner: {acc.name: acc.result() for acc in accs}
                    for owner, accs in self.inputs.items()}
        outputs = {name: {acc.name: acc.result() for acc in accs}
                   for name, accs in self.outputs.items()}
        return {name: LayerStats(self.n_tokens[owner], {**by_owner[owner], **outputs.get(name, {})})
                for name, owner in self.owner.items()}


class EnoughSeen(Exception):
    """Raised by a statistics hook once every layer it watches has read its input: the rest
    of the block's forward would compute nothing the statistics need."""


class BlockRunner:
    """Holds the current inputs of a block for every calibration batch, and runs blocks."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, windows: torch.Tensor,
                 batch_size: int, device):
        self.blocks = blocks
        self.device = device
        # Every batch's block input is a slice of one buffer, and block outputs are copied
        # back into it. Held as many separate tensors, these long-lived inputs end up
        # scattered through the allocator's heap between each forward's transients, and the
        # heap cannot shrink around them.
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
            self.calls.append(arch.to_device(calls_by_size[size], device))

    def run(self, index: int, advance: bool,
            after_batch: Callable[[], None] | None = None) -> None:
        """Run block `index` on every batch. With `advance`, each batch's output replaces its
        input as soon as it exists (the next block's inputs; only one set is ever held).
        Without it, a hook may end a batch's forward early by raising `EnoughSeen`."""
        block = self.blocks[index]
        with torch.no_grad():
            for hidden, calls in zip(self.inputs, self.calls):
                try:
                    out = arch.call_block(block, hidden, calls[index])
                except EnoughSeen:
                    if advance:
                        raise
                    out = None
                if advance:
                    if out.shape != hidden.shape:
                        raise RuntimeError(f"block {index} changed the hidden-state shape "
                                           f"from {tuple(hidden.shape)} to {tuple(out.shape)}")
                    hidden.copy_(out)  # this batch's input is spent: its slot takes the output
                del hidden, out
                if after_batch is not None:
                    after_batch()


def _input_groups(runner: BlockRunner, index: int,
                  layers: dict[str, nn.Module]) -> tuple[list[list[str]], bool]:
    """Group a block's layers by the tensor they read (q/k/v; o; gate/up; down), in call order,
    and say whether every layer ran exactly once in the block's forward.

    Found from one forward of the first batch, so no per-family table is needed.
    """
    seen: dict[str, tuple] = {}
    calls: dict[str, int] = {}
    # Hold every input alive until the forward ends: once freed, the allocator may hand the
    # same address to the next input (the MLP's norm output reusing attention's), which would
    # merge two groups.
    alive: list[torch.Tensor] = []

    def make_hook(name):
        def hook(module, args, kwargs, output):
            x = arch.layer_input(args, kwargs)
            alive.append(x)
            seen.setdefault(name, (x.data_ptr(), tuple(x.shape)))
            calls[name] = calls.get(name, 0) + 1
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
    once = not missing and all(count == 1 for count in calls.values())
    return list(groups.values()) + ([missing] if missing else []), once


def _collect(runner: BlockRunner, index: int, layers: dict[str, nn.Module],
             names: Sequence[str], device, stop_early: bool = False,
             calls: dict[str, int] | None = None) -> dict[str, LayerStats]:
    """The statistics `names` of `layers` over every calibration batch of block `index`.

    With `stop_early` (every layer of the block is known to run once per forward), a batch's
    forward ends as soon as the last of `layers` has read its input: before that layer's own
    product when the statistics are of inputs only. A q/k/v group needs only the input norm,
    so sequential groups cost a fraction of a block forward each, and a whole block's
    statistics skip its last projection (the MLP's down projection). `calls`, when given,
    counts each layer's calls in the first batch's forward.
    """
    collector = _Collector(names, layers, device)
    block = runner.blocks[index]
    indirect = arch.indirect_inputs(block)
    seen: set[str] = set()
    first_batch = [True]

    def watched(name: str):
        hook = collector.hook(name)

        def on_call(module, args, kwargs, output=None):
            hook(module, args, kwargs, output)
            if calls is not None and first_batch[0]:
                calls[name] = calls.get(name, 0) + 1
            if stop_early:
                seen.add(name)
                if len(seen) == len(layers):
                    raise EnoughSeen
        return on_call

    def end_batch() -> None:
        seen.clear()
        first_batch[0] = False
        collector.end_batch()

    def register(name: str, layer: nn.Module):
        if name in indirect:
            return block.get_submodule(indirect[name][0]).register_forward_hook(
                _fed_from(watched(name), layer, indirect[name][1]), with_kwargs=True)
        if collector.output_kinds:
            return layer.register_forward_hook(watched(name), with_kwargs=True)
        return layer.register_forward_pre_hook(watched(name), with_kwargs=True)

    handles = [register(n, m) for n, m in layers.items()]
    try:
        runner.run(index, advance=False, after_batch=end_batch)
    finally:
        for h in handles:
            h.remove()
    return collector.stats()


def _fed_from(hook, layer: nn.Module, features: slice):
    """A forward hook for the layer that produces `layer`'s input (`arch.indirect_inputs`):
    it hands `hook` that output's `features` as the input, and the product with `layer`'s
    weight as the output, as if `layer` had been called."""
    def on_source(module, args, kwargs, output):
        x = output[..., features]
        hook(layer, (x,), {}, torch.nn.functional.linear(x, arch.weight_matrix(layer)))
    return on_source


def _available_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device` (host RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def backward_bytes(model: nn.Module, seqlen: int, accumulated_layers: int = 1) -> int:
    """A rough estimate of what one window's forward and backward pass needs beyond the model:
    `accumulated_layers` fp32 copies of the prunable weights (gradient accumulators), one
    layer's gradient at a time, and the activations kept for the backward pass (per block
    about 16 hidden-wide and 4 intermediate-wide vectors per token, plus the attention
    scores, and three copies of the logits), in fp32."""
    found = arch.find_blocks(model)
    shapes = [arch.weight_matrix(m).shape for b in found.blocks
              for m in arch.prunable_layers(b).values()]
    prunable = sum(r * c for r, c in shapes)
    largest = max((r * c for r, c in shapes), default=0)
    config = model.config
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 0
    inter = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) \
        or 4 * hidden
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1) or 1
    vocab = getattr(config, "vocab_size", 0) or 0
    per_block = seqlen * (16 * hidden + 4 * inter + 2 * heads * seqlen)
    activations = len(found.blocks) * per_block + 3 * seqlen * vocab
    return 4 * (accumulated_layers * prunable + largest + activations)


def check_gradient_memory(model: nn.Module, seqlen: int, accumulated_layers: int = 1,
                          device: torch.device | None = None) -> None:
    """Refuse, before any work, a gradient pass that cannot fit one window's backward pass."""
    device = device or next(model.parameters()).device
    need, free = backward_bytes(model, seqlen, accumulated_layers), _available_bytes(device)
    if need > free:
        raise PrunelabError(
            f"gradients need about {need / 1e9:.2f} GB for one backward pass of {seqlen} "
            f"tokens, but only {free / 1e9:.2f} GB is free on {device}",
            "use shorter calibration windows (--seqlen), free memory, or a method that needs "
            "no gradients")


def gather_gradients(model: nn.Module, windows: torch.Tensor, names: Sequence[str], *,
                     batch_size: int = 1, progress: bool = False) -> dict[str, LayerStats]:
    """Accumulate weight-gradient statistics of every prunable layer over the calibration
    windows, by full layer name.

    Each batch gets one forward and backward pass of the whole model (where it is) with the
    language-modelling loss; each accumulator sees that batch's gradient [out, in]. With
    batch_size 1 every window's gradient is accumulated on its own, as GBLM does. Only the
    prunable weights require gradients meanwhile, and each one's gradient is handed to its
    accumulators and dropped as soon as the backward pass has computed it, so at most one
    layer's gradient exists at a time. Nothing is updated, and `requires_grad` is restored
    after. A backward pass that cannot fit is refused (PrunelabError) before the first one.
    """
    layers = arch.named_prunable_layers(model)
    kinds = [accumulator(n) for n in names]
    if any(k.reads != "weight_grad" for k in kinds):
        raise ValueError(f"gather_gradients accumulates weight gradients only, not {list(names)}")
    home = next(model.parameters()).device
    check_gradient_memory(model, windows.shape[1] * batch_size, len(kinds), home)
    accumulators = {name: [k(tuple(arch.weight_matrix(m).shape), home) for k in kinds]
                    for name, m in layers.items()}

    def hand_over(name: str, layer: nn.Module):
        def on_gradient(weight: torch.Tensor) -> None:
            grad = arch.as_out_in(layer, weight.grad).to(torch.float32)
            for acc in accumulators[name]:
                acc.update(grad)
            weight.grad = None
        return on_gradient

    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    handles = []
    try:
        for p in params:
            p.requires_grad_(False)
        for name, m in layers.items():
            m.weight.requires_grad_(True)
            handles.append(m.weight.register_post_accumulate_grad_hook(hand_over(name, m)))
        with torch.enable_grad():
            for batch in tqdm(windows.split(batch_size), desc="gradients", unit="batch",
                              disable=not progress, file=sys.stderr, dynamic_ncols=True):
                batch = batch.to(home)
                try:
                    model(input_ids=batch, labels=batch).loss.backward()
                except (torch.OutOfMemoryError, RuntimeError) as error:
                    if not _is_out_of_memory(error):
                        raise
                    raise PrunelabError(
                        f"out of memory in the backward pass of {batch.shape[1]} tokens",
                        "use shorter calibration windows (--seqlen), free memory, or a "
                        "method that needs no gradients") from None
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, requires):
            p.requires_grad_(flag)
            p.grad = None
        model.config.use_cache = use_cache
    n_tokens = windows.numel()
    return {name: LayerStats(n_tokens, {acc.name: acc.result() for acc in accs})
            for name, accs in accumulators.items()}


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text \
        or "can't allocate memory" in text or "not enough memory" in text


def check_method_fit(model: nn.Module, method: PruningMethod, sparsity: float | None,
                     pattern: NMPattern | None) -> None:
    """Every check of a request on this model, before any work: the N:M pattern fits each
    layer's width, then the method's own checks of the request and of the model."""
    check_pattern(model, method, pattern)
    method.check_request(sparsity, pattern)
    method.check_model(model, sparsity, pattern)


def check_pattern(model: nn.Module, method: PruningMethod, pattern: NMPattern | None) -> None:
    """Refuse an N:M pattern that some layer's input width cannot hold, before any work."""
    if pattern is None or not method.supports_nm:
        return
    for name, layer in arch.named_prunable_layers(model).items():
        check_pattern_fits(pattern, arch.weight_matrix(layer).shape[1], name)


def _dense_statistics(model: nn.Module, blocks: nn.ModuleList, prefix: str,
                      names: Sequence[str], windows: torch.Tensor, batch_size: int, device,
                      progress: bool, source: BlockSource | None = None) -> dict[str, LayerStats]:
    """The named statistics of every layer on the dense model, by full layer name."""
    token_names, grad_names = _split_statistics(names)
    gathered: dict[str, LayerStats] = {}
    if token_names:
        if source is not None:
            source.load(0)  # the runner's capture runs block 0
        runner = BlockRunner(model, blocks, windows, batch_size, device)
        for index in tqdm(range(len(blocks)), desc="planning pass", unit="block",
                          disable=not progress, file=sys.stderr, dynamic_ncols=True):
            block = blocks[index]
            if source is not None:
                source.load(index)
            home = next(block.parameters()).device
            block.to(device)
            stats = _collect(runner, index, arch.prunable_layers(block), token_names, device)
            gathered.update({f"{prefix}.{index}.{n}": s for n, s in stats.items()})
            if index + 1 < len(blocks):
                runner.run(index, advance=True)  # the dense block's output: nothing is pruned
            block.to(home)
            if source is not None:
                source.release(index, compressed=False)
        del runner
    if grad_names:
        grads = gather_gradients(model, windows, grad_names, batch_size=1, progress=progress)
        for name, stats in grads.items():
            before = gathered.get(name)
            gathered[name] = LayerStats(before.n_tokens if before else stats.n_tokens,
                                        {**(before or {}), **stats})
    return gathered


def _targets(names: Iterable[str], sparsity: float, pattern: NMPattern | None,
             plan: Mapping[str, LayerTarget | float] | None) -> dict[str, LayerTarget]:
    targets = {name: LayerTarget(name, sparsity, pattern) for name in names}
    for name, planned in (plan or {}).items():
        if name not in targets:
            raise ValueError(f"the plan names {name!r}, which is not a prunable layer")
        if not isinstance(planned, LayerTarget):
            planned = LayerTarget(name, float(planned), pattern)
        try:
            check_sparsity(planned.sparsity)
        except PrunelabError as error:
            raise PrunelabError(f"planned sparsity of {name}: {error.problem}", error.fix) from None
        targets[name] = planned
    return targets


def prune_blocks(model: nn.Module, method: PruningMethod, sparsity: float,
                 pattern: NMPattern | None, windows: torch.Tensor | None, *,
                 batch_size: int = 8, device: str | torch.device | None = None,
                 progress: bool = True, keep_masks: bool = False,
                 source: BlockSource | None = None, keep_quantized: bool = True) -> PruneRecords:
    """Prune every prunable layer of every block of `model` in place; return per-layer records
    (and, with `keep_masks`, each layer's pruned mask in `.masks`; with `keep_quantized`,
    each quantized layer's grid in `.quantized`).

    With a `source`, the blocks hold no weights until the engine loads them from it, one at
    a time, and each block is handed back to it once decided (`prunelab.streaming`)."""
    found = arch.find_blocks(model)
    blocks, prefix = found.blocks, found.path
    device = torch.device(device) if device is not None else next(model.parameters()).device
    all_layers = arch.named_prunable_layers(model)
    check_method_fit(model, method, sparsity, pattern)
    weights = (source.plan_weights() if source is not None
               else {n: arch.weight_matrix(m) for n, m in all_layers.items()})
    _, misplaced = _split_statistics(method.statistics)
    if misplaced:
        raise ValueError(f"{method.name}: gradient statistics {misplaced} come from the dense "
                         f"model before pruning; name them in planning_statistics")
    _split_statistics(method.planning_statistics)  # unknown names fail here, before any work
    if method.needs_calibration and windows is None:
        raise PrunelabError(f"method {method.name} needs calibration data",
                            "pass calibration windows (prunelab.compress.prune draws them from its source)")

    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    records = PruneRecords()
    bar = None
    try:
        planning = (_dense_statistics(model, blocks, prefix, method.planning_statistics,
                                      windows, batch_size, device, progress, source)
                    if method.planning_statistics else {})
        plan = method.plan(PlanContext(weights, sparsity, pattern, planning,
                                       tuple(windows.shape) if windows is not None else None))
        del planning
        targets = _targets(all_layers, sparsity, pattern, plan)
        uses_runner = bool(method.statistics or method.needs_block_inputs)
        if source is not None and uses_runner:
            source.load(0)  # the runner's capture runs block 0
        runner = (BlockRunner(model, blocks, windows, batch_size, device)
                  if uses_runner else None)
        doing = "quantizing" if method.quantizes else "pruning"
        bar = tqdm(range(len(blocks)), desc=f"{doing} ({method.name})", unit="block",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        # Whether every layer of a kind of block runs once per forward, learned from the
        # first block of the kind: the later ones' statistics then stop early.
        once_by_kind: dict[tuple, bool] = {}
        for index in bar:
            block = blocks[index]
            if source is not None:
                source.load(index)
            home = next(block.parameters()).device
            block.to(device)  # on an accelerator, only this block is on-loaded
            once, calls = False, None
            if runner is not None and method.sequential_groups():
                groups, once = _input_groups(runner, index, arch.prunable_layers(block))
            else:
                groups = [list(arch.prunable_layers(block))]
                kind = (type(block), tuple(groups[0]))
                once = once_by_kind.get(kind, False)
                if kind not in once_by_kind:
                    calls = {}
            for group in groups:
                # Looked up afresh: an earlier group's step may have replaced modules.
                current = arch.prunable_layers(block)
                gone = [n for n in group if n not in current]
                if gone:
                    raise RuntimeError(f"{method.name} removed {prefix}.{index}.{gone[0]}; "
                                       "replace it by a smaller layer instead")
                layers = {n: current[n] for n in group}
                stats = (_collect(runner, index, layers, method.statistics, device,
                                  stop_early=once, calls=calls)
                         if runner is not None else {n: LayerStats() for n in layers})
                if calls is not None:
                    once_by_kind[kind] = (len(calls) == len(layers)
                                          and all(c == 1 for c in calls.values()))
                block_targets = {n: targets[f"{prefix}.{index}.{n}"] for n in layers}
                inputs = BlockInputs(runner, index) if method.needs_block_inputs else None
                records.extend(_prune_group(method, block, layers, stats, block_targets,
                                            records.masks if keep_masks else None,
                                            records.quantized if keep_quantized else None,
                                            inputs))
            if runner is not None and index + 1 < len(blocks):
                runner.run(index, advance=True)
            block.to(home)
            if source is not None:
                source.release(index, compressed=True)
        method.finish(model)
    finally:
        if bar is not None:
            bar.close()
        model.config.use_cache = use_cache
    return records


def _prune_group(method: PruningMethod, block: nn.Module, layers: dict[str, nn.Module],
                 stats: dict[str, LayerStats], targets: dict[str, LayerTarget],
                 masks: dict[str, torch.Tensor] | None,
                 quantized: dict[str, QuantizedWeight] | None = None,
                 inputs: BlockInputs | None = None) -> list[LayerRecord]:
    """Let the method decide these layers of `block`, write its decisions, record each layer."""
    zeros_before = {n: _zeros(arch.weight_matrix(m)) for n, m in layers.items()}
    shapes_before = {n: tuple(arch.weight_matrix(m).shape) for n, m in layers.items()}
    notes: dict[str, dict] = {}
    decisions = (method.prune_block(block, layers, stats, targets) if inputs is None
                 else method.prune_block(block, layers, stats, targets, inputs=inputs))
    for name, decision in (decisions.items() if isinstance(decisions, Mapping) else decisions):
        if name not in layers:
            raise RuntimeError(f"{method.name} decided {name!r}, which is not among the "
                               f"layers it was given ({', '.join(layers)})")
        _write(arch.prunable_layers(block).get(name), decision, targets[name].name)
        notes[name] = decision.notes
        if masks is not None and decision.pruned is not None:
            masks[targets[name].name] = decision.pruned.detach().to("cpu", torch.bool, copy=True)
        kept_record = quantized is not None and decision.quantized is not None
        if kept_record:
            weight_dtype = layers[name].weight.dtype
            quantized[targets[name].name] = decision.quantized.to("cpu").grid_only(weight_dtype)
        del decision
        if kept_record:
            # A grid is small and kept to the end: allocated among this layer's freed
            # temporaries, such records stop glibc's heap from shrinking around them, and the
            # peak then differs from one identical run to the next (findings/peers.md).
            release_free_heap()
    after = arch.prunable_layers(block)
    records = []
    for name in layers:
        if name not in after:
            raise RuntimeError(f"{method.name} removed {targets[name].name}; replace it by a "
                               f"smaller layer instead, so the block still runs")
        weight = arch.weight_matrix(after[name])
        rows, cols = weight.shape
        note = notes.get(name, {})
        if (rows, cols) != shapes_before[name]:
            note = {**note, "shape_before": list(shapes_before[name])}
        records.append(LayerRecord(targets[name].name, rows, cols, targets[name].sparsity,
                                   zeros_before[name], _zeros(weight), note))
    return records


def _zeros(weight: torch.Tensor) -> int:
    """How many entries are zero, in one counting pass (`(weight == 0).sum()` would first
    build a boolean matrix of the weight's size; every layer is counted before and after)."""
    return weight.numel() - int(torch.count_nonzero(weight))


def _write(layer: nn.Module | None, decision: LayerDecision, full_name: str) -> None:
    current = arch.weight_matrix(layer) if layer is not None else None
    if current is None or tuple(decision.weight.shape) != tuple(current.shape):
        raise RuntimeError(f"the decision for {full_name} has shape "
                           f"{tuple(decision.weight.shape)}, but the layer is "
                           f"{None if current is None else tuple(current.shape)}; a method "
                           f"that changes shapes replaces the module and returns no decision")
    if decision.pruned is None:  # quantized (or otherwise rewritten) weights, no mask
        arch.set_weight_matrix(layer, decision.weight)
        return
    arch.set_weight_matrix(layer, zero_where(decision.weight, decision.pruned))
