"""The public Python API: prune, perplexity, save. (`load_model` lives in `prunelab.zoo`.)

    import prunelab
    m = prunelab.load_model("smollm2-135m")
    result = prunelab.prune(m, method="wanda", sparsity=0.5)
    print(prunelab.perplexity(m), result.overall_sparsity)
    prunelab.save(m, "out/wanda50", result)
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import torch

import prunelab
from prunelab import arch, ppl_cache
from prunelab.allocator import compact_heap, release_free_heap
from prunelab.checks import MIN_SEQLEN, check_perplexity_args, check_prune_request  # noqa: F401
from prunelab.checks import check_batch_size as _check_batch_size
from prunelab.checks import check_calibration as _calibration_config  # noqa: F401
from prunelab.checks import check_text_source as _check_text_source  # noqa: F401
from prunelab.checks import check_window_args as _check_window_args
from prunelab.checks import pattern_unsupported
from prunelab.data.corpora import (DEFAULT_EVAL_SOURCE, CalibrationConfig, calibration_windows,
                                   eval_windows, tokens_digest)
from prunelab.data.corpora import _check_seqlen as check_seqlen
from prunelab.engine import (LayerRecord, check_gradient_memory, check_method_fit,
                             prune_blocks)
from prunelab.errors import PrunelabError
from prunelab.evaluate.perplexity import perplexity_of_windows
from prunelab.methods.base import PruningMethod, make_method
from prunelab.methods.masks import NMPattern
from prunelab.methods.statistics import accumulator
from prunelab.paths import atomic_dir
from prunelab.structure import model_size
from prunelab.zoo.models import LoadedModel

PROVENANCE_FILE = "prunelab.json"


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
    # Quantized layers: full layer name -> QuantizedWeight (codes, scales, zero points, on the
    # CPU), what a packed checkpoint is written from (`save(..., format=...)`).
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


def check_prune_args(method: str = "wanda", sparsity: float | None = None,
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
        check_seqlen(loaded, args.calibration.seqlen)


def prune(loaded: LoadedModel, method: str = "wanda", sparsity: float | None = None, *,
          pattern: str | None = None, calibration: CalibrationConfig | str | None = None,
          seed: int | None = None, batch_size: int = 8, device: str | None = None,
          progress: bool = True, keep_masks: bool = False, **options) -> PruneResult:
    """Prune `loaded.model` in place with a registered method; return what was done.

    `sparsity` is the fraction of each prunable matrix to remove; with an N:M `pattern`
    ("2:4" keeps 2 of every 4) it may be left out, as it follows from the pattern.
    `calibration` is a CalibrationConfig, or a text source name / file path with the default
    sizes. Method options (e.g. `percdamp=0.02` for SparseGPT) are passed as keywords.
    `keep_masks` keeps each layer's pruned mask in `result.masks`. The option `only`
    ("attention" or "mlp"), accepted by every method, prunes only that kind of layer.
    """
    options = dict(options)
    only = arch.check_only(options.pop("only", None))
    args = check_prune_args(method, sparsity, pattern, calibration, options, seed=seed)
    _check_batch_size(batch_size)
    resolve_device(device)
    check_model_fit(loaded, args)
    chosen, sparsity, nm, calibration = args.method, args.sparsity, args.pattern, args.calibration

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


def quantize(loaded: LoadedModel, method: str = "gptq", bits: int = 4,
             group_size: int | None = 128, symmetric: bool = False, *,
             calibration: CalibrationConfig | str | None = None, seed: int | None = None,
             batch_size: int = 8, device: str | None = None, progress: bool = True,
             **options) -> PruneResult:
    """Quantize the weights of `loaded.model` in place with a registered quantizer (rtn, gptq);
    `prune` with the quantization options spelled out. The model keeps the dequantized float
    weights; `result.quantized` holds each layer's codes, scales and zero points, which
    `save(..., format="compressed-tensors")` packs."""
    return prune(loaded, method, None, calibration=calibration, seed=seed,
                 batch_size=batch_size, device=device, progress=progress, bits=bits,
                 group_size=group_size, symmetric=symmetric, **options)


def perplexity(loaded: LoadedModel, source: str = DEFAULT_EVAL_SOURCE, seqlen: int = 512,
               n_windows: int | None = 32, batch_size: int = 4, progress: bool = False) -> float:
    """Perplexity on `n_windows` consecutive non-overlapping windows of `seqlen` tokens."""
    _check_window_args(seqlen, n_windows, batch_size)  # the text is checked as it is read
    windows = eval_windows(loaded, source, seqlen, n_windows)
    return perplexity_of_windows(loaded.model, windows, batch_size, progress)


class Measured(NamedTuple):
    value: float
    cached: bool  # True when the value was read from the cache, not measured now


def dense_perplexity(loaded: LoadedModel, source: str = DEFAULT_EVAL_SOURCE, seqlen: int = 512,
                     n_windows: int | None = 32, batch_size: int = 4,
                     progress: bool = False) -> Measured:
    """`perplexity` of a model exactly as loaded from its directory, remembered in the cache.

    The cache entry is keyed by the directory's files and the windows (`prunelab.ppl_cache`),
    not by the weights in memory: call this only before changing the model (pruning it, or
    loading other weights into it), as the CLI does for the "dense" number. A model with no
    directory (built in memory, or from a hub id) is measured every time.
    """
    _check_window_args(seqlen, n_windows, batch_size)
    windows = eval_windows(loaded, source, seqlen, n_windows)
    key = ppl_cache.cache_key(loaded, windows)
    if key is not None and (value := ppl_cache.lookup(key)) is not None:
        return Measured(value, cached=True)
    value = perplexity_of_windows(loaded.model, windows, batch_size, progress)
    if key is not None:
        ppl_cache.store(key, value, {"model": loaded.name, "source": str(source),
                                     "seqlen": seqlen, "windows": int(windows.shape[0]),
                                     "windows_sha256": tokens_digest(windows)})
    return Measured(value, cached=False)


def _check_device(device) -> None:
    if device is None:
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunelabError(f"{device!r} is not a torch device", "use e.g. cpu or cuda:0") from None


def resolve_device(device: str | None) -> torch.device | None:
    """`device` as a torch.device (None stays None); one line when it is not a device or
    torch cannot use it here."""
    if device is None:
        return None
    _check_device(device)
    found = torch.device(device)
    if found.type == "cuda" and not torch.cuda.is_available():
        raise PrunelabError(f"device {device} was asked for, but torch sees no CUDA GPU here",
                            "leave --device out to run on the CPU")
    return found


def versions() -> dict:
    import transformers

    return {"prunelab": prunelab.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def save(loaded: LoadedModel, out_dir: str | Path, result: PruneResult | None = None,
         overwrite: bool = False, extra: dict | None = None,
         format: str = "dequantized") -> Path:
    """Write `save_pretrained` output (safetensors) plus prunelab.json, atomically.

    With `format="compressed-tensors"` the quantized layers of `result` are written packed
    (`prunelab.quant_export`); prunelab.json records the size on disk either way."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise PrunelabError(f"output directory {out} already exists",
                            "choose a new --out, or remove the old one")
    if format != "dequantized":
        from prunelab.quant_export import check_format, check_model_for_format

        check_format(format)
        check_model_for_format(loaded.model, format)
    provenance = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": loaded.name, "dequantized": loaded.dequantized,
                  **({"zoo": loaded.info["zoo"]} if "zoo" in loaded.info else {})},
        "pruning": result.to_dict() if result else None,
        "versions": versions(),
        **(extra or {}),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if format == "compressed-tensors":
            from prunelab.quant_export import write_compressed_tensors

            write_compressed_tensors(loaded.model, result.quantized if result else {}, tmp)
        else:
            loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        provenance["storage"] = storage_record(loaded.model, tmp, format)
        provenance["weights_file_bytes"] = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out


def storage_record(model, directory: Path, format: str) -> dict:
    """Bytes of the saved weights beside what the same parameters take in fp32 and bf16."""
    on_disk = sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))
    parameters = sum(p.numel() for p in model.parameters())
    return {"format": format, "safetensors_bytes": on_disk, "parameters": parameters,
            "fp32_bytes": 4 * parameters, "bf16_bytes": 2 * parameters}


def read_provenance(directory: str | Path) -> dict:
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        raise PrunelabError(f"{directory} has no {PROVENANCE_FILE}",
                            "pass a directory written by `prunelab prune --out`")
    return json.loads(path.read_text())


def _plain(config) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(config) if is_dataclass(config) else {}
