"""The checks of a run's arguments that need neither torch nor the model.

The command line runs them before it imports the heavy stack, so that a typo is refused in a
fraction of a second; the Python API runs the same functions first (`prunelab.prune_request`), then the
checks that need the method's own code (`make_method`, `check_request`) or the loaded model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from prunelab.errors import PrunelabError

# Which layers of a block a pruning run touches: all (None), or some kinds, comma-separated.
# Pruning attention only is how Hasan et al. (2024) pruned aligned chat models (Wanda, 10-30%).
# A state-space mixer's linears are of three kinds (`prunelab.arch.layer_kind`): its input
# projection (ssm_in), Mamba's time-step projections x_proj and dt_proj (ssm_dt) and its output
# projection (ssm_out); "ssm" names all three, so `only=ssm` leaves a hybrid's MLPs alone and
# `only=ssm_in` is how Ghattas et al. (2025) ran Wanda on Mamba.
LAYER_KINDS = ("attention", "mlp", "ssm_in", "ssm_dt", "ssm_out", "ssm")
SUPPORTED_BITS = (2, 3, 4, 6, 8)  # what the quantizers (rtn, gptq, sparsegpt's joint mode) store
# How a compressed model is saved: fp32 weights, packed integers (`prunelab.quant_export`), or
# each pruned matrix as its kept weights and where they are (`prunelab.compact`).
CHECKPOINT_FORMATS = ("dequantized", "compressed-tensors", "compact")
# What `prunelab export-gguf` writes (`prunelab.gguf_export`): half precision, or llama.cpp's
# 8- and 4-bit block codes.
GGUF_TYPES = ("F16", "Q8_0", "Q4_0")
# The precisions a model can be loaded and run in (`--dtype`, a recipe's `dtype:`); the
# statistics methods gather (Hessians, Σx², norms) are float32 whatever the model's.
DTYPES = ("fp32", "bf16", "fp16")


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
    """None (every layer), or the kinds named, comma-separated, in a fixed order."""
    if kind is None or kind == "" or kind == "all":
        return None
    kinds = [k.strip() for k in str(kind).split(",")]
    unknown = [k for k in kinds if k not in LAYER_KINDS]
    if unknown or not kinds:
        raise PrunelabError(f"cannot prune only {unknown[0] if unknown else kind!r} layers",
                            f"use one or more of {', '.join(LAYER_KINDS)}, comma-separated "
                            "(or all)")
    return ",".join(k for k in LAYER_KINDS if k in kinds)


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


def check_dtype_name(name: str, flag: str = "--dtype") -> str:
    """`name` is one of DTYPES (whether the device can run it is `devices.check_dtype`'s)."""
    if name not in DTYPES:
        raise PrunelabError(f"{flag} {name!r} is not a precision prunelab runs in",
                            f"use one of {', '.join(DTYPES)}")
    return name


def check_format_name(format: str) -> None:
    if format not in CHECKPOINT_FORMATS:
        raise PrunelabError(f"unknown checkpoint format {format!r}",
                            f"use one of {', '.join(CHECKPOINT_FORMATS)}")


def check_gguf_type(type: str) -> str:
    """A GGUF type name in its canonical spelling (case is forgiven)."""
    canonical = {t.lower(): t for t in GGUF_TYPES}.get(str(type).strip().lower())
    if canonical is None:
        raise PrunelabError(f"unknown GGUF type {type!r}", f"use one of {', '.join(GGUF_TYPES)}")
    return canonical


def check_fraction(value: float, flag: str) -> float:
    """A share in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise PrunelabError(f"{flag} {value} is not in [0, 1]", f"give {flag} e.g. 0.9")
    return value


def pattern_unsupported(method: str, supporting: list[str]) -> PrunelabError:
    return PrunelabError(f"method {method} does not support N:M patterns",
                         f"leave out --pattern, or choose one of {', '.join(supporting)}")


def check_new_dir(out: str | Path | None, flag: str = "--out") -> None:
    """An output directory that must not exist yet, and can be made (see `check_output_dir`)."""
    if out is not None and Path(out).exists():
        raise PrunelabError(f"output directory {out} already exists",
                            f"choose a new {flag}, or remove the old one")
    check_output_dir(out, flag)


# Kernel file systems: writing there fails (or worse, does something) after the work is done.
_KERNEL_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_output_dir(path: str | Path | None, flag: str) -> None:
    """Refuse, before any work, an output directory that could not be written: one that is a
    file, lies through a file or in a kernel file system, or whose nearest existing folder is
    not writable. An existing directory is accepted (a run directory is resumed); nothing is
    created here."""
    if path is None:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise PrunelabError(f"{flag} {path} is a file, not a directory",
                            f"give {flag} a new path or an existing directory")
    _check_writable_place(target, target, flag)


def check_output_file(path: str | Path | None, flag: str, example: str = "results.jsonl"
                      ) -> None:
    """Refuse, before any work, an output file that could not be written: a directory (or a
    path ending in a separator), a path through a file or in a kernel file system, or one
    whose nearest existing folder is not writable. An existing file is replaced; nothing is
    created here."""
    if path is None:
        return
    text = str(path)
    target = Path(path)
    if text.endswith(("/", os.sep)) or target.is_dir():
        raise PrunelabError(f"{flag} {path} is a directory, not a file",
                            f"give {flag} a file name, e.g. {target / example}")
    if target.exists() and not target.is_file():
        raise PrunelabError(f"{flag} {path} is not a regular file",
                            f"give {flag} a path to a new or ordinary file")
    _check_writable_place(target, target.parent, flag)


def _check_writable_place(target: Path, folder: Path, flag: str) -> None:
    """`target` is outside /proc, /sys and /dev, and the nearest existing one of `folder` and
    its parents is a writable directory (the missing ones will be made there)."""
    try:
        resolved = Path(os.path.realpath(target))
    except OSError:  # a loop of links: let the walk below name the folder
        resolved = Path(os.path.abspath(target))
    for tree in _KERNEL_TREES:
        if resolved == tree or tree in resolved.parents:
            raise PrunelabError(f"{flag} {target} is inside {tree}, a kernel file system",
                                f"give {flag} a path on an ordinary disk")
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PrunelabError(f"{flag} {target} goes through {existing}, which is a file",
                            f"give {flag} a path whose folders are directories")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PrunelabError(f"{flag} {target}: cannot write in {existing} (permission denied)",
                            f"give {flag} a path in a folder you can write to")


# Compact checkpoints (`prunelab.compact`): how N:M matrices are stored, and the value dtypes
# `prunelab pack --dtype` converts to ("keep" stores the checkpoint's own).
COMPACT_LAYOUTS = ("prunelab", "compressed-tensors")
COMPACT_VALUE_DTYPES = ("keep", "fp32", "bf16", "fp16")
COMPACT_MAX_GROUP = 16  # the largest M of an N:M pattern the index layout stores
COMPACT_FILE = "compact.json"


def check_compact_layout(layout: str) -> None:
    if layout not in COMPACT_LAYOUTS:
        raise PrunelabError(f"unknown compact layout {layout!r}",
                            f"use one of {', '.join(COMPACT_LAYOUTS)}")


def check_value_dtype(dtype: str) -> None:
    if dtype not in COMPACT_VALUE_DTYPES:
        raise PrunelabError(f"unknown value dtype {dtype!r}",
                            f"use one of {', '.join(COMPACT_VALUE_DTYPES)}")


def check_compact_pattern(pattern: str | None) -> None:
    """Refuse an N:M pattern whose groups the compact index layout cannot hold."""
    parsed = parse_pattern(pattern)
    if parsed is not None and parsed.m > COMPACT_MAX_GROUP:
        raise PrunelabError(f"pattern {pattern}: the compact format stores N:M groups of at "
                            f"most {COMPACT_MAX_GROUP} weights",
                            "use M of 16 or less (e.g. 2:4, 4:8), or save --format dequantized")


def check_model_source_dir(directory: str | Path, *, compact: bool) -> None:
    """A model directory to pack (`compact=False`: a dense one) or unpack (`compact=True`),
    refused in one line before anything is read."""
    path = Path(directory)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise PrunelabError(f"{directory} is not a model directory (no config.json)",
                            "pass a directory written by `prunelab prune` or save_pretrained")
    packed = (path / COMPACT_FILE).is_file()
    if compact and not packed:
        raise PrunelabError(f"{directory} is not a compact checkpoint (no {COMPACT_FILE})",
                            "unpack a directory written by `prunelab pack` or "
                            "`prunelab prune --format compact`")
    if not compact and packed:
        raise PrunelabError(f"{directory} is already a compact checkpoint",
                            "it is packed: nothing to do (unpack it first to repack)")


def check_streamable_tasks(task_list) -> None:
    """Refuse tasks that generate text: each new token needs every block again, so a
    streamed model would be read once per generated token."""
    generating = [t.name for t in task_list if t.kind not in ("mc", "rolling")]
    if generating:
        raise PrunelabError(
            f"task {generating[0]} generates text, which cannot be streamed: every new token "
            "runs all the blocks again, so the weights would be read once per token",
            "stream only multiple-choice and log-likelihood tasks, or evaluate the "
            "generation tasks without --stream on a machine the model fits")
