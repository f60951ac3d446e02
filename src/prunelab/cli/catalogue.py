"""`prunelab models | methods | info | train-tiny`: what there is to prune with, how a model was
made, and a small model trained here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from prunelab.cli.common import app, size_line
from prunelab.tables import print_table


@app.command()
def models() -> None:
    """List the named models: size, architecture, whether cached."""
    from prunelab.zoo.models import DEQUANTIZED_CAVEAT, ZOO, is_cached, model_dir

    rows = [{"name": s.name, "architecture": s.architecture, "params": s.params,
             "download": f"{s.download_mb} MB", "cached": "yes" if is_cached(s.name) else "no",
             "weights": "dequantized GGUF*" if s.dequantized else "fp32",
             "licence": s.license, "what": s.description} for s in ZOO.values()]
    print_table(rows)
    _print_trained()
    typer.echo(f"\n* {DEQUANTIZED_CAVEAT}.")
    typer.echo(f"cache: {model_dir('x').parent}  (set PRUNELAB_HOME to move it)")
    typer.echo("Any local Hugging Face model directory works too.")


def _print_trained() -> None:
    from prunelab.training import trained_models

    trained = trained_models()
    if not trained:
        return
    typer.echo("\ntrained here (`prunelab train-tiny`; load them by name):")
    rows = []
    for t in trained:
        recipe, ppl = t.get("recipe") or {}, t.get("perplexity") or {}
        rows.append({"name": t["name"], "architecture": t.get("architecture", "?"),
                     "params": f"{t.get('parameters', 0) / 1e6:.1f}M",
                     "recipe": (f"{recipe.get('architecture')} h{recipe.get('hidden')} "
                                f"{t.get('steps_done', recipe.get('steps'))} steps x "
                                f"{recipe.get('batch')}x{recipe.get('seqlen')} tokens, "
                                f"lr {recipe.get('lr')}"),
                     "train loss": t.get("train_loss", "?"),
                     "perplexity": (f"{ppl['value']} ({Path(str(ppl['source'])).name})"
                                    if ppl else "not measured"),
                     "minutes": round(float(t.get("train_seconds", 0)) / 60, 1)})
    print_table(rows)


@app.command("train-tiny")
def train_tiny(
    architecture: str = typer.Argument(..., help="mamba2, mamba or llama"),
    name: str = typer.Option(..., help="the name it is kept under in the cache"),
    text: list[str] = typer.Option(["python-docstrings"], help="training text: a local file, "
                                   "a corpus name, or python-docstrings (the standard "
                                   "library's); repeat to join several"),
    steps: int = typer.Option(150, help="optimizer steps (the fixed budget: twins trained "
                              "with the same steps, batch, seqlen and seed see the same tokens)"),
    batch: int = typer.Option(4, help="windows per step"),
    seqlen: int = typer.Option(256, help="tokens per window"),
    hidden: int = typer.Option(256, help="model width"),
    layers: Optional[int] = typer.Option(None, help="blocks (default: 6 for Mamba, 3 for Llama, "
                                         "about the same size)"),
    lr: float = typer.Option(3e-3, help="peak learning rate"),
    seed: int = typer.Option(0, help="seeds the initial weights and the order of the text"),
    eval_source: Optional[str] = typer.Option(None, help="measure perplexity on this text "
                                              "after training"),
    max_minutes: Optional[float] = typer.Option(None, help="stop early after this many minutes "
                                                "(the steps done are recorded)"),
    overwrite: bool = typer.Option(False, help="replace a trained model of the same name"),
) -> None:
    """Train a small model from scratch (SmolLM2 tokenizer) and keep it in the cache."""
    from prunelab.data.sources import check_text_source
    from prunelab.training import DOCSTRINGS_SOURCE, TrainRecipe, check_name

    recipe = TrainRecipe(architecture=architecture, hidden=hidden, layers=layers, steps=steps,
                         batch=batch, seqlen=seqlen, lr=lr, seed=seed, sources=list(text),
                         eval_source=eval_source, max_minutes=max_minutes)
    recipe.check()
    check_name(name)
    for source in text:
        if source != DOCSTRINGS_SOURCE:
            check_text_source(source, "training")
    if eval_source is not None:
        check_text_source(eval_source, "text")
    from prunelab.training import train

    directory = train(recipe, name, overwrite=overwrite)
    typer.echo(f"trained {name}: {directory}")


@app.command()
def methods() -> None:
    """List the pruning methods and their options."""
    from prunelab.methods.base import list_methods, option_help

    for cls in list_methods():
        typer.echo(f"{cls.name:18} {cls.summary}")
        for name, kind, default, text in option_help(cls):
            typer.echo(f"{'':20}--option {name}=<{kind}> (default {default}): {text}")
    typer.echo("every method: --option only=attention|mlp|ssm|ssm_in|ssm_dt|ssm_out prunes only "
               "those kinds of layer of each block, comma-separated (default: all)")


@app.command()
def info(directory: Path = typer.Argument(..., help="a directory written by `prunelab prune`")
         ) -> None:
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
        typer.echo(size_line(size["before"], size["after"], data.get("weights_file_bytes")))
    if layers and _quantized_only(pruning):
        _print_quantized_layers(pruning, layers)
    elif layers:
        print_table([{"layer": r["name"], "shape": f"{r['rows']}x{r['cols']}",
                      "target": r["target_sparsity"], "achieved": r["achieved_sparsity"],
                      "zeros before": r["zeros_before"]} for r in layers])


def _quantized_only(pruning: dict) -> bool:
    """Quantized (rtn, gptq) and not pruned: its zeros are codes rounded to zero."""
    options = pruning.get("options") or {}
    return bool(options.get("bits")) and not pruning.get("sparsity") \
        and not pruning.get("pattern")


def _print_quantized_layers(pruning: dict, layers: list[dict]) -> None:
    options = pruning.get("options") or {}
    group = options.get("group_size")
    print_table([{"layer": r["name"], "shape": f"{r['rows']}x{r['cols']}",
                  "bits": (r.get("notes") or {}).get("bits", options.get("bits")),
                  "group": group if group else "per channel",
                  "zeros (rounding)": r["achieved_sparsity"]} for r in layers])
    typer.echo("quantized, not pruned: the zeros are weights whose code rounds to zero on "
               "the grid, not pruned weights")
