"""Compressing a loaded model with a registered method: the arguments checked, calibration
drawn, the engine run over the blocks, and a record of what was done.

`prune` and `quantize` here are what `prunelab.prune` / `prunelab.quantize` are; the engine
(`prunelab.engine`) does the block loop, the methods (`prunelab.methods`) the math.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

from prunelab import arch, defaults
from prunelab.allocator import compact_heap, release_free_heap
from prunelab.checks import pattern_unsupported
from prunelab.prune_request import check_prune_request
from prunelab.data.checks import check_batch_size
from prunelab.data.calibration import CalibrationConfig
from prunelab.data.corpora import calibration_windows, check_seqlen_fits, tokens_digest
from prunelab.devices import resolve_device
from prunelab.engine import (LayerRecord, check_gradient_memory, check_method_fit,
                             prune_blocks)
from prunelab.methods.base import PruningMethod, make_method
from prunelab.methods.masks import NMPattern
from prunelab.methods.statistics import accumulator
from prunelab.structure import model_size
from prunelab.tasks import calibration as _task_calibration  # noqa: F401 (registers "task:")
from prunelab.zoo.models import LoadedModel


@dataclass
class PruneResult:
    method: str
    options: dict
    sparsity: float
    pattern: str | None
    calibration: dict | None
    layers: list[LayerRecord] = field(default_factory=list)
    seconds: float = 0.0
    # With `prune(..., keep_masks=True)`: full layer name -> bool mask (True = pruned), on the
    # CPU, for what comes after pruning (sparse fine-tuning keeps exactly these zeros).
    masks: dict = field(default_factory=dict, repr=False)
    # Quantized layers: full layer name -> QuantizedWeight (scales and zero points on the CPU;
    # the codes are read off the layer's weight, `codes_for`), what a packed checkpoint is
    # written from (`save(..., format=...)`).
    quantized: dict = field(default_factory=dict, repr=False)

    # Whole-model parameters and bytes before and after ({"before": {...}, "after": {...}}),
    # each shared tensor counted once: what structured pruning really saves.
    model_size: dict = field(default_factory=dict)

    @property
    def overall_sparsity(self) -> float:
        """The share of the prunable weights removed: zeroed, or gone with their rows and
        columns (structured pruning)."""
        total = sum(r.numel_before for r in self.layers)
        return sum(r.removed for r in self.layers) / total if total else 0.0

    @property
    def zeros_before(self) -> int:
        return sum(r.zeros_before for r in self.layers)

    def to_dict(self) -> dict:
        return {
            "method": self.method, "options": self.options, "sparsity": self.sparsity,
            "pattern": self.pattern, "calibration": self.calibration,
            "overall_sparsity": round(self.overall_sparsity, 6),
            "prunable_weights": sum(r.numel_before for r in self.layers),
            **({"model_size": self.model_size} if self.model_size else {}),
            "zeros_before_pruning": self.zeros_before,
            "seconds": round(self.seconds, 2),
            "layers": [r.to_dict() for r in self.layers],
        }


@dataclass(frozen=True)
class PruneArgs:
    """The arguments of a pruning run, checked and converted (see `check_prune_args`)."""

    method: PruningMethod
    sparsity: float
    pattern: NMPattern | None
    calibration: CalibrationConfig


def check_prune_args(method: str = defaults.PRUNE_METHOD, sparsity: float | None = None,
                     pattern: str | None = None,
                     calibration: CalibrationConfig | str | Path | None = None,
                     options: dict | None = None, *, seed: int | None = None,
                     out: str | Path | None = None) -> PruneArgs:
    """Check every argument of a pruning run that can be checked without the model.

    Called first by `prune` and by the CLI before it loads anything, so that a typo costs
    nothing. Raises PrunelabError; returns the method (with converted options), the sparsity
    (derived from the pattern when not given), the parsed pattern and the calibration config
    (`seed`, when given, replaces its seed). `out`, when given, must not exist yet.
    """
    request = check_prune_request(method, sparsity, pattern, calibration, options, seed=seed,
                                  out=out)
    chosen = make_method(method, request.options)
    if request.pattern is not None and not chosen.supports_nm:  # a wrapper's base cannot
        from prunelab.methods.base import list_methods

        raise pattern_unsupported(method, [m.name for m in list_methods() if m.supports_nm])
    chosen.check_request(request.sparsity, request.pattern)
    return PruneArgs(method=chosen, sparsity=request.sparsity, pattern=request.pattern,
                     calibration=request.calibration)


def check_model_fit(loaded: LoadedModel, args: PruneArgs, *,
                    calibration_text: bool = False) -> None:
    """The checks that need the loaded model: every layer's width holds the N:M pattern, the
    calibration windows fit the context, and (with `calibration_text`) the text fills them.

    Cheap next to a perplexity measurement, so the CLI runs them right after loading.
    `calibration_text` tokenizes the calibration text; `prune` leaves it off because it
    draws the windows itself, inside its heap-compaction block (prunelab.allocator).
    """
    check_method_fit(loaded.model, args.method, args.sparsity, args.pattern)
    if not args.method.needs_calibration:
        return
    grads = [n for n in args.method.planning_statistics if accumulator(n).reads == "weight_grad"]
    if grads:
        check_gradient_memory(loaded.model, args.calibration.seqlen, len(grads))
    if calibration_text:
        calibration_windows(loaded, args.calibration)  # tokens stay cached for the run
    else:
        check_seqlen_fits(loaded, args.calibration.seqlen)


def prune(loaded: LoadedModel, method: str = defaults.PRUNE_METHOD,
          sparsity: float | None = None, *, pattern: str | None = None,
          calibration: CalibrationConfig | str | None = None, seed: int | None = None,
          batch_size: int | None = None, device: str | None = None,
          progress: bool = True, keep_masks: bool = False, **options) -> PruneResult:
    """Prune `loaded.model` in place with a registered method; return what was done.

    `sparsity` is the fraction of each prunable matrix to remove; with an N:M `pattern`
    ("2:4" keeps 2 of every 4) it may be left out, as it follows from the pattern.
    `calibration` is a CalibrationConfig, or a text source name / file path with the default
    sizes. Method options (e.g. `percdamp=0.02` for SparseGPT) are passed as keywords.
    `batch_size` counts calibration windows per forward pass (default: `prune_batch_size`).
    `keep_masks` keeps each layer's pruned mask in `result.masks`. The option `only`
    ("attention", "mlp", "ssm", "ssm_in", "ssm_dt", "ssm_out", or several comma-separated),
    accepted by every method, prunes only those kinds of layer.
    """
    options = dict(options)
    only = arch.check_only(options.pop("only", None))
    args = check_prune_args(method, sparsity, pattern, calibration, options, seed=seed)
    if batch_size is not None:
        check_batch_size(batch_size)
    resolve_device(device)
    check_model_fit(loaded, args)
    chosen, sparsity, nm, calibration = args.method, args.sparsity, args.pattern, args.calibration
    if batch_size is None:
        batch_size = prune_batch_size(calibration.seqlen,
                                      device or next(loaded.model.parameters()).device)

    windows, calib_record = None, None
    with compact_heap():  # fragmentation would otherwise add 0.1-0.2 GB (prunelab.allocator)
        if chosen.needs_calibration:
            windows = calibration_windows(loaded, calibration)
            release_free_heap()  # what the tokenizer freed (prunelab.allocator)
            calib_record = {**calibration.to_dict(), "tokens_sha256": tokens_digest(windows),
                            "bos": loaded.add_bos}
        start = time.perf_counter()
        size_before = model_size(loaded.model)
        with arch.only_layers(only):
            records = prune_blocks(loaded.model, chosen, sparsity, nm, windows,
                                   batch_size=batch_size, device=device, progress=progress,
                                   keep_masks=keep_masks)
    return PruneResult(method=method, options={**_plain(chosen.config),
                                               **({"only": only} if only else {})},
                       sparsity=sparsity,
                       pattern=str(nm) if nm else None, calibration=calib_record,
                       layers=list(records), seconds=time.perf_counter() - start,
                       masks=records.masks, quantized=records.quantized,
                       model_size={"before": size_before, "after": model_size(loaded.model)})


def quantize(loaded: LoadedModel, method: str = defaults.QUANT_METHOD,
             bits: int = defaults.QUANT_BITS,
             group_size: int | None = defaults.QUANT_GROUP_SIZE, symmetric: bool = False, *,
             calibration: CalibrationConfig | str | None = None, seed: int | None = None,
             batch_size: int | None = None, device: str | None = None,
             progress: bool = True, **options) -> PruneResult:
    """Quantize the weights of `loaded.model` in place with a registered quantizer (rtn, gptq);
    `prune` with the quantization options spelled out. The model keeps the dequantized float
    weights; `result.quantized` holds each layer's grid (scales, zero points; its codes are
    read back off the weight, `QuantizedWeight.codes_for`), which
    `save(..., format="compressed-tensors")` packs."""
    return prune(loaded, method, None, calibration=calibration, seed=seed,
                 batch_size=batch_size, device=device, progress=progress, bits=bits,
                 group_size=group_size, symmetric=symmetric, **options)


def prune_batch_size(seqlen: int, device) -> int:
    """Calibration windows per forward pass while pruning, where the caller names none: on
    the CPU as many as make `defaults.PRUNE_CPU_TOKENS_PER_FORWARD` tokens (at least one),
    elsewhere `defaults.PRUNE_BATCH_SIZE`. The statistics sum over every window either way;
    only their float rounding depends on the split."""
    import torch

    if torch.device(device).type == "cpu":
        return max(1, defaults.PRUNE_CPU_TOKENS_PER_FORWARD // seqlen)
    return defaults.PRUNE_BATCH_SIZE


def _plain(config) -> dict:
    return asdict(config) if is_dataclass(config) else {}
