"""The checks of a run's arguments that need neither torch nor the model.

The command line runs them before it imports the heavy stack, so that a typo is refused in a
fraction of a second; the Python API runs the same functions first (`prunelab.prune_request`), then the
checks that need the method's own code (`make_method`, `check_request`) or the loaded model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prunelab.errors import PrunelabError

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


def check_new_dir(out: str | Path | None) -> None:
    if out is not None and Path(out).exists():
        raise PrunelabError(f"output directory {out} already exists",
                            "choose a new --out, or remove the old one")
