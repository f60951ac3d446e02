"""What the command groups share: the typer app they register on, and small helpers.

Nothing here imports torch: `prunelab --help` and every refusal of a bad argument are answered
before the heavy stack loads. Commands import the API inside their bodies.
"""

from __future__ import annotations

import typer

from prunelab import defaults
from prunelab.checks import check_dtype_name
from prunelab.errors import PrunelabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune pre-trained language models and measure what they lose.")

# Where `prune` and `quantize` measure perplexity before and after: text, tokens per window,
# windows.
COMPRESS_PPL = (defaults.EVAL_SOURCE, defaults.EVAL_SEQLEN, defaults.EVAL_WINDOWS)
PPL_HELP = (f"measure perplexity ({defaults.EVAL_WINDOWS} windows of {defaults.EVAL_SEQLEN}) "
            "before and after")
TRUST_HELP = "allow the model's own Python code"
DTYPE_HELP = ("precision to load and compute in: fp32, bf16 or fp16 (statistics stay fp32; a "
              "saved model keeps it)")
DEVICE_HELP = "run the model there, e.g. cuda (default: the CPU)"
PRUNE_DEVICE_HELP = ("compute there, e.g. cuda: one block at a time on it, the model in host "
                     "memory (default: the CPU)")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a command; `main` prints the message and exits 130."""

    exit_code = 130


def option_pairs(pairs: list[str] | None) -> dict[str, str]:
    """`--option KEY=VALUE` pairs as a mapping (values are converted by each method's config)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PrunelabError(f"--option {pair!r} is not KEY=VALUE",
                                "write e.g. --option percdamp=0.02")
        options[key.strip()] = value.strip()
    return options


def size_line(before: dict, after: dict, file_bytes: int | None) -> str:
    """Parameters and bytes before and after pruning, in one line."""
    def share(key):
        return f"{1 - after[key] / before[key]:.1%} less" if before[key] else "n/a"
    line = (f"parameters {before['parameters']:,} -> {after['parameters']:,} "
            f"({share('parameters')}); bytes {before['bytes']:,} -> {after['bytes']:,} "
            f"({share('bytes')})")
    return line + (f"; weights file {file_bytes:,} bytes" if file_bytes else "")


def placement(device: str | None, dtype: str):
    """The checked (torch device or None, torch dtype) of a command's --device and --dtype:
    the name first, torch-free, then what the device can do, all before any model loads."""
    check_dtype_name(dtype)
    from prunelab.devices import resolve_placement

    return resolve_placement(device, dtype)


def load_placed(model: str, where, dtype, trust_remote_code: bool = False):
    """`model` loaded in `dtype` and moved to `where` (None: left on the CPU)."""
    from prunelab.zoo.models import load_model

    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    if where is not None:
        loaded.model.to(where)
    return loaded
