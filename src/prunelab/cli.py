"""The `prunelab` command line: parse, call the Python API, print. No logic of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer

from prunelab.cli_common import PRUNE_PPL, option_pairs
from prunelab.errors import PrunelabError
from prunelab.tables import print_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune pre-trained language models and measure what they lose.")




@app.command()
def prune(
    model: str = typer.Argument(..., help="zoo name (see `prunelab models`) or local model dir"),
    out: Path = typer.Option(..., "--out", help="directory to write the pruned model to"),
    method: str = typer.Option("wanda", help="pruning method (see `prunelab methods`)"),
    sparsity: Optional[float] = typer.Option(None, help="fraction to remove, in [0, 1)"),
    pattern: Optional[str] = typer.Option(None, help="N:M pattern, e.g. 2:4 (keep 2 of 4)"),
    calib_source: str = typer.Option("squadshifts-new_wiki", help="calibration text: name or file"),
    calib_samples: int = typer.Option(128, help="number of calibration windows"),
    seqlen: int = typer.Option(512, help="tokens per calibration window"),
    seed: int = typer.Option(0, help="seed for drawing calibration windows"),
    option: Optional[list[str]] = typer.Option(None, help="method option KEY=VALUE (repeatable)"),
    ppl: bool = typer.Option(True, help="measure perplexity (32 windows of 512) before and after"),
    trust_remote_code: bool = typer.Option(False, help="allow the model's own Python code"),
) -> None:
    """Prune MODEL and save it (safetensors + prunelab.json)."""
    from prunelab import api
    from prunelab.data.corpora import CalibrationConfig
    from prunelab.zoo.models import load_model

    options = option_pairs(option)
    calibration = CalibrationConfig(calib_source, calib_samples, seqlen, seed)
    args = api.check_prune_args(method, sparsity, pattern, calibration, options, out=out)
    loaded = load_model(model, trust_remote_code=trust_remote_code)
    api.check_model_fit(loaded, args, calibration_text=True)
    before = api.dense_perplexity(loaded, *PRUNE_PPL, progress=True) if ppl else None
    result = api.prune(loaded, method, sparsity, pattern=pattern, calibration=calibration,
                       **options)
    after = api.perplexity(loaded, *PRUNE_PPL, progress=True) if ppl else None
    source, ppl_seqlen, windows = PRUNE_PPL
    extra = {"perplexity": {"source": source, "seqlen": ppl_seqlen, "windows": windows,
                            "dense": before.value, "pruned": after}} if ppl else None
    api.save(loaded, out, result, extra=extra)
    typer.echo(f"{method} {result.pattern or f'{result.sparsity:.0%}'}: achieved sparsity "
               f"{result.overall_sparsity:.4f} over {len(result.layers)} layers "
               f"in {result.seconds:.1f} s")
    if result.model_size:
        typer.echo(_size_line(result.model_size["before"], result.model_size["after"], None))
    if ppl:
        cached = " (cached)" if before.cached else ""
        typer.echo(f"perplexity ({source}, {windows} x {ppl_seqlen}): dense {before.value:.2f}"
                   f"{cached} -> pruned {after:.2f}")
    typer.echo(f"saved to {out}")


@app.command()
def ppl(
    model: str = typer.Argument(..., help="zoo name or local model directory"),
    source: str = typer.Option("squad-dev", help="text: name or local file"),
    seqlen: int = typer.Option(512, help="tokens per window"),
    windows: int = typer.Option(32, help="number of non-overlapping windows"),
    trust_remote_code: bool = typer.Option(False, help="allow the model's own Python code"),
) -> None:
    """Perplexity of MODEL on non-overlapping windows of a text."""
    from prunelab import api
    from prunelab.zoo.models import load_model

    api.check_perplexity_args(source, seqlen, windows)
    loaded = load_model(model, trust_remote_code=trust_remote_code)
    value, cached = api.dense_perplexity(loaded, source, seqlen, windows, progress=True)
    typer.echo(f"perplexity {value:.3f}{' (cached)' if cached else ''}  "
               f"({source}, {windows} windows x {seqlen} tokens)")


@app.command()
def models() -> None:
    """List the named models: size, architecture, whether cached."""
    from prunelab.zoo.models import DEQUANTIZED_CAVEAT, ZOO, is_cached, model_dir

    rows = [{"name": s.name, "architecture": s.architecture, "params": s.params,
             "download": f"{s.download_mb} MB", "cached": "yes" if is_cached(s.name) else "no",
             "weights": "dequantized GGUF*" if s.dequantized else "fp32",
             "licence": s.license, "what": s.description} for s in ZOO.values()]
    print_table(rows)
    typer.echo(f"\n* {DEQUANTIZED_CAVEAT}.")
    typer.echo(f"cache: {model_dir('x').parent}  (set PRUNELAB_HOME to move it)")
    typer.echo("Any local Hugging Face model directory works too.")


@app.command()
def methods() -> None:
    """List the pruning methods and their options."""
    from prunelab.methods.base import list_methods, option_help

    for cls in list_methods():
        typer.echo(f"{cls.name:18} {cls.summary}")
        for name, kind, default, text in option_help(cls):
            typer.echo(f"{'':20}--option {name}=<{kind}> (default {default}): {text}")
    typer.echo("every method: --option only=attention|mlp prunes only that kind of layer of "
               "each block (default: all)")


@app.command()
def info(directory: Path = typer.Argument(..., help="a directory written by `prunelab prune`")) -> None:
    """Print how a pruned model was made (its prunelab.json)."""
    from prunelab.api import read_provenance

    data = read_provenance(directory)
    pruning = data.get("pruning") or {}
    layers = pruning.pop("layers", [])
    typer.echo(json.dumps(data, indent=2))
    storage = data.get("storage")
    if storage:
        disk, fp32, bf16 = (storage[k] for k in ("safetensors_bytes", "fp32_bytes", "bf16_bytes"))
        typer.echo(f"size on disk {disk / 1e6:.1f} MB ({storage['format']}): "
                   f"{disk / fp32:.3f} x fp32 ({fp32 / 1e6:.1f} MB), "
                   f"{disk / bf16:.3f} x bf16 ({bf16 / 1e6:.1f} MB)")
    size = pruning.get("model_size")
    if size:
        typer.echo(_size_line(size["before"], size["after"], data.get("weights_file_bytes")))
    if layers:
        print_table([{"layer": r["name"], "shape": f"{r['rows']}x{r['cols']}",
                      "target": r["target_sparsity"], "achieved": r["achieved_sparsity"],
                      "zeros before": r["zeros_before"]} for r in layers])


def _size_line(before: dict, after: dict, file_bytes: int | None) -> str:
    """Parameters and bytes before and after pruning, in one line."""
    def share(key):
        return f"{1 - after[key] / before[key]:.1%} less" if before[key] else "n/a"
    line = (f"parameters {before['parameters']:,} -> {after['parameters']:,} "
            f"({share('parameters')}); bytes {before['bytes']:,} -> {after['bytes']:,} "
            f"({share('bytes')})")
    return line + (f"; weights file {file_bytes:,} bytes" if file_bytes else "")


def _register_optional() -> None:
    # Commands that live beside their subsystem register themselves here.
    for module in ("prunelab.evaluate.cli", "prunelab.cli_study", "prunelab.cli_quant",
                   "prunelab.recover.cli", "prunelab.cli_divergence", "prunelab.cli_refusal",
                   "prunelab.cli_route"):
        try:
            register = __import__(module, fromlist=["register"]).register
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        register(app)


_register_optional()


# typer 0.2x parses with its own copy of click, whose exceptions are not click's
_EXITS = (click.exceptions.Exit, typer.Exit)
_USAGE_ERRORS = (click.ClickException, *filter(None, [getattr(typer, "TyperException", None)]))
_ABORTS = (click.Abort, typer.Abort, KeyboardInterrupt)


def main(argv: list[str] | None = None) -> None:
    from prunelab.allocator import configure

    configure()  # before torch's first allocation: this process will hold big models
    try:
        app(args=argv, standalone_mode=False, prog_name="prunelab")
    except PrunelabError as exc:
        typer.echo(f"prunelab: error: {exc}", err=True)
        sys.exit(PrunelabError.exit_code)
    except _EXITS as exc:
        sys.exit(exc.exit_code)
    except _USAGE_ERRORS as exc:
        # one line, like every other bad input (click's own answer is a usage block)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "prunelab"
        typer.echo(f"prunelab: error: {message.rstrip('.')}: see `{command} --help`", err=True)
        sys.exit(2)
    except _ABORTS:
        typer.echo("prunelab: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
