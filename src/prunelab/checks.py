"""The checks of a run's arguments that need neither torch nor the model.

The command line runs them before it imports the heavy stack, so that a typo is refused in a
fraction of a second; the Python API runs the same functions first (`prunelab.api`), then the
checks that need the method's own code (`make_method`, `check_request`) or the loaded model.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass
from pathlib import Path

from prunelab import defaults
from prunelab.allocator import mmap_threshold_from_env
from prunelab.data.sources import TEXT_SOURCES, CalibrationConfig
from prunelab.errors import PrunelabError
from prunelab.method_catalogue import METHOD_CATALOGUE, check_options

# What `prunelab.data.corpora` accepts: a window must hold a token and the one it predicts.
MIN_SEQLEN = 2
# Which layers of a block a pruning run touches: all (None), "attention" or "mlp". Pruning
# attention only is how Hasan et al. (2024) pruned aligned chat models (Wanda, 10-30%).
LAYER_KINDS = ("attention", "mlp")
SUPPORTED_BITS = (2, 3, 4, 6, 8)  # what the quantizers (rtn, gptq, sparsegpt's joint mode) store
# How a quantized model is saved: fp32 weights, or packed integers (`prunelab.quant_export`).
CHECKPOINT_FORMATS = ("dequantized", "compressed-tensors")


@dataclass(frozen=True)
class NMPattern:
    """At most `n` non-zero weights in every group of `m` consecutive inputs of a row.

    This is the usual reading of "2:4" (NVIDIA's). Beware that the Wanda repository's
    `--sparsity_type N:M` passes the number of *zeroed* weights as N; for 2:4 both agree.
    """

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(pattern: str | None) -> NMPattern | None:
    """Parse "N:M"; None or "unstructured" means no pattern."""
    if pattern is None or pattern in ("", "unstructured"):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise PrunelabError(f"pattern {pattern!r} is not of the form N:M",
                            "write it like 2:4 (keep 2 of every 4 weights)")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise PrunelabError(f"pattern {pattern}: N must be at least 1 and below M",
                            "use e.g. 2:4, 4:8 or 1:8 (N kept out of every M)")
    return NMPattern(n, m)


def check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise PrunelabError(f"sparsity {sparsity} is outside [0, 1)",
                            "give a fraction such as 0.5 for 50%")
    return float(sparsity)


def check_only(kind: str | None) -> str | None:
    if kind is None or kind == "" or kind == "all":
        return None
    if kind not in LAYER_KINDS:
        raise PrunelabError(f"cannot prune only {kind!r} layers",
                            f"use one of {', '.join(LAYER_KINDS)} (or all)")
    return kind


def check_bits(bits: int, who: str) -> None:
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise PrunelabError(f"{who}: {bits} bits is not supported",
                            f"use one of {', '.join(map(str, SUPPORTED_BITS))} "
                            "(e.g. --option bits=4)")


def check_group_size(group_size: int | None, who: str) -> None:
    if group_size is not None and (isinstance(group_size, bool) or group_size < 1):
        raise PrunelabError(f"{who}: group size {group_size} is not a positive integer",
                            "use 32, 64, 128 or a divisor of the layer width, or none "
                            "for one grid per output channel")


def check_format_name(format: str) -> None:
    if format not in CHECKPOINT_FORMATS:
        raise PrunelabError(f"unknown checkpoint format {format!r}",
                            f"use one of {', '.join(CHECKPOINT_FORMATS)}")


def pattern_unsupported(method: str, supporting: list[str]) -> PrunelabError:
    return PrunelabError(f"method {method} does not support N:M patterns",
                         f"leave out --pattern, or choose one of {', '.join(supporting)}")


@dataclass(frozen=True)
class PruneRequest:
    """A pruning run's arguments as far as they can be checked without torch."""

    method: str
    options: dict  # as given, less `only` (the method converts them when it is made)
    sparsity: float
    pattern: NMPattern | None
    calibration: CalibrationConfig


def check_prune_request(method: str, sparsity: float | None = None,
                        pattern: str | None = None,
                        calibration: CalibrationConfig | str | Path | None = None,
                        options: dict | None = None, *, seed: int | None = None,
                        out: str | Path | None = None) -> PruneRequest:
    """Everything of `prunelab.api.check_prune_args` that needs no method code: the method's
    name and its options' names and types (from the catalogue), the pattern, the sparsity
    (derived from the pattern when not given), the calibration, the allocator setting and
    `out` (which must not exist yet)."""
    options = dict(options or {})
    check_only(options.pop("only", None))  # every method's: which layers (see `api.prune`)
    shape = METHOD_CATALOGUE.get(method)
    check_options(method, options, None if shape is None else shape.options, METHOD_CATALOGUE)
    nm = parse_pattern(pattern)
    if nm is not None and not shape.supports_nm:
        raise pattern_unsupported(method, [name for name, s in sorted(METHOD_CATALOGUE.items())
                                           if s.supports_nm])
    if shape.quantizes and (nm is not None or sparsity):
        raise PrunelabError(f"method {method} quantizes weights and prunes none",
                            "leave out --sparsity and --pattern (prune first with a method "
                            "that prunes, or use sparsegpt --option bits=4 for both at once)")
    if sparsity is None and shape.quantizes:
        sparsity = 0.0
    if sparsity is None:
        if nm is None:
            raise PrunelabError("no sparsity given", "pass --sparsity 0.5 or --pattern 2:4")
        sparsity = nm.sparsity
    sparsity = check_sparsity(sparsity)
    if nm is not None and abs(sparsity - nm.sparsity) > 1e-9:
        raise PrunelabError(f"sparsity {sparsity} disagrees with pattern {nm} "
                            f"(which removes {nm.sparsity:.3f})",
                            "leave out the sparsity when giving a pattern")
    calibration = check_calibration(calibration, seed)
    mmap_threshold_from_env()  # read again when pruning starts; a bad value should fail now
    check_new_dir(out)
    return PruneRequest(method, options, sparsity, nm, calibration)


def check_new_dir(out: str | Path | None) -> None:
    if out is not None and Path(out).exists():
        raise PrunelabError(f"output directory {out} already exists",
                            "choose a new --out, or remove the old one")


def check_calibration(calibration, seed: int | None = None) -> CalibrationConfig:
    """A CalibrationConfig (a source name or file gets the default sizes), checked; `seed`,
    when given, replaces its seed."""
    if calibration is None or isinstance(calibration, (str, Path)):
        calibration = (CalibrationConfig() if calibration is None
                       else CalibrationConfig(source=str(calibration)))
    if not isinstance(calibration, CalibrationConfig):
        raise PrunelabError(f"{calibration!r} is not a calibration source",
                            "pass a CalibrationConfig, a text source name or a file path")
    if seed is not None:
        calibration = CalibrationConfig(calibration.source, calibration.n_samples,
                                        calibration.seqlen, seed)
    if not isinstance(calibration.n_samples, int) or calibration.n_samples < 1:
        raise PrunelabError("calibration needs at least one sample",
                            "use --calib-samples 1 or more")
    if not isinstance(calibration.seqlen, int) or calibration.seqlen < MIN_SEQLEN:
        raise PrunelabError(f"sequence length {calibration.seqlen} is too short",
                            f"use --seqlen {MIN_SEQLEN} or more")
    if not isinstance(calibration.seed, int):
        raise PrunelabError(f"calibration seed {calibration.seed!r} is not an integer",
                            "use e.g. --seed 0")
    check_text_source(calibration.source, "calibration")
    return calibration


def check_perplexity_args(source: str = defaults.EVAL_SOURCE, seqlen: int = defaults.EVAL_SEQLEN,
                          n_windows: int | None = defaults.EVAL_WINDOWS,
                          batch_size: int = 4) -> None:
    """Check a perplexity measurement's arguments without the model (the CLI does, first)."""
    check_window_args(seqlen, n_windows, batch_size)
    check_text_source(str(source), "text")


def check_text_source(source: str, role: str) -> None:
    """A named corpus, or a local file that holds UTF-8 text (read through once, in pieces).

    `role` ("calibration", "text") names the source in the messages.
    """
    if source in TEXT_SOURCES:
        return
    if role == "calibration" and source.startswith("task:"):
        from prunelab.tasks.calibration import check  # also registers the "task:" source

        check(source)  # enough items left after the evaluation's
        return
    path = Path(source).expanduser()
    names = ", ".join(TEXT_SOURCES)
    if not path.exists():
        if path.suffix or os.sep in source or (os.altsep and os.altsep in source):
            raise PrunelabError(f"{role} file {source} does not exist",
                                f"check the path, or name a corpus: {names}")
        raise PrunelabError(f"unknown text source {source!r}",
                            f"use one of {names} or the path of a local text file")
    if not path.is_file():
        raise PrunelabError(f"{role} source {source} is not a file",
                            "pass a UTF-8 text file or a corpus name")
    decoder = codecs.getincrementaldecoder("utf-8")()
    has_text = False
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                has_text = bool(decoder.decode(chunk).strip()) or has_text
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise PrunelabError(f"{path} is not UTF-8 text", "pass a plain UTF-8 text file") from None
    except OSError as exc:
        raise PrunelabError(f"cannot read {path}: {exc.strerror}",
                            "check that the file is readable") from None
    if not has_text:
        raise PrunelabError(f"{role} file {path} is empty", "pass a file with some text in it")


def check_window_args(seqlen: int, n_windows: int | None, batch_size: int) -> None:
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < MIN_SEQLEN:
        raise PrunelabError(f"sequence length {seqlen} is too short",
                            f"use --seqlen {MIN_SEQLEN} or more")
    if n_windows is not None and (isinstance(n_windows, bool) or not isinstance(n_windows, int)
                                  or n_windows < 1):
        raise PrunelabError(f"{n_windows} windows is too few", "use --windows 1 or more")
    check_batch_size(batch_size)


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrunelabError(f"batch size {batch_size!r} is not a positive integer",
                            "use a batch size of 1 or more")
