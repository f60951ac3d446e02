"""`prunelab speed | export-gguf`: what a pruned model buys at inference, and the model in the
form llama.cpp runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prunelab.checks import GGUF_TYPES, check_fraction, check_gguf_type, check_output_file
from prunelab.cli.common import app
from prunelab.errors import PrunelabError


def _at_least(value: int, least: int, flag: str) -> None:
    if value < least:
        raise PrunelabError(f"{flag} {value} is below {least}", f"give {flag} {least} or more")


@app.command()
def speed(
    directory: Path = typer.Argument(..., help="a directory written by `prunelab prune`"),
    sparse_runtime: bool = typer.Option(False, "--sparse-runtime", help="also run the pruned "
                                        "linears with sparse kernels (CPU: CSR for layers "
                                        "with at least --min-sparsity zeros; CUDA: 2:4 "
                                        "semi-structured) and compare"),
    min_sparsity: Optional[float] = typer.Option(None, help="CPU sparse runtime: a linear with "
                                                 "at least this share of zeros runs sparse "
                                                 "(default: the measured crossover, 0.9)"),
    prefill_tokens: int = typer.Option(512, help="prompt length timed for prefill"),
    decode_tokens: int = typer.Option(32, help="single-token steps timed for decode"),
    repeats: int = typer.Option(3, help="timed repeats (median), dense and sparse alternating"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's)"),
    device: Optional[str] = typer.Option(None, help="cpu (default) or cuda"),
    record: bool = typer.Option(True, help="write the result into DIRECTORY's prunelab.json "
                                "(key \"inference\")"),
) -> None:
    """Tokens per second of prefill and decode, dense math against the sparse runtime."""
    from prunelab.zoo.provenance import read_provenance_file

    if min_sparsity is not None:
        check_fraction(min_sparsity, "--min-sparsity")
    _at_least(prefill_tokens, 2, "--prefill-tokens")
    _at_least(decode_tokens, 1, "--decode-tokens")
    _at_least(repeats, 1, "--repeats")
    if threads is not None:
        _at_least(threads, 1, "--threads")
    read_provenance_file(directory)  # one line when it is not a saved model
    from prunelab.sparse_runtime import CPU_MIN_SPARSITY, measure_directory

    result = measure_directory(directory, sparse=sparse_runtime, min_sparsity=min_sparsity,
                               prefill_tokens=prefill_tokens, decode_tokens=decode_tokens,
                               repeats=repeats, threads=threads, device=device, record=record)
    typer.echo(f"{result.device}, {result.threads} thread(s), {result.dtype}, median of "
               f"{result.repeats}")
    for kind, tokens in (("prefill", prefill_tokens), ("decode", decode_tokens)):
        dense = getattr(result, f"{kind}_tokens_per_s_dense")
        line = f"{kind} ({tokens} tokens): dense {dense:.1f} tokens/s"
        if sparse_runtime:
            sparse = getattr(result, f"{kind}_tokens_per_s_sparse")
            line += f", sparse runtime {sparse:.1f} tokens/s ({result.speedup(kind):.2f}x)"
        typer.echo(line)
    if sparse_runtime:
        threshold = CPU_MIN_SPARSITY if min_sparsity is None else min_sparsity
        rule = "2:4" if result.device.startswith("cuda") else f">= {threshold:.0%} zeros"
        typer.echo(f"sparse layers ({rule}) {result.sparse_layers}, dense "
                   f"{result.dense_layers}; logits max |difference| "
                   f"{result.max_abs_logit_difference:.2e} (match)")
    if record:
        typer.echo(f"recorded under \"inference\" in {directory / 'prunelab.json'}")


@app.command("export-gguf")
def export_gguf(
    directory: Path = typer.Argument(..., help="a saved Llama or Qwen2 model directory (e.g. "
                                     "from `prunelab prune --out`)"),
    type: str = typer.Option("F16", "--type", help=f"{', '.join(GGUF_TYPES)}: half precision "
                             "(zeros kept exactly), or llama.cpp's 8- / 4-bit block codes"),
    out: Optional[Path] = typer.Option(None, "--out", help="GGUF file to write (default: "
                                       "<DIRECTORY>.<TYPE>.gguf beside the directory)"),
) -> None:
    """Write a saved model as one GGUF file for llama.cpp, ollama and LM Studio."""
    type = check_gguf_type(type)
    check_output_file(out, "--out", "model.gguf")
    from prunelab.gguf_export import check_exportable, default_output

    check_exportable(directory, type)
    target = out if out is not None else default_output(directory, type)
    check_output_file(target, "--out", "model.gguf")
    from prunelab.gguf_export import export_gguf as export

    result = export(directory, type, target)
    typer.echo(f"wrote {result.path} ({result.type}, {result.architecture}, {result.tensors} "
               f"tensors, {result.file_bytes / 1e6:.1f} MB)")
    typer.echo(f"pruned zeros kept exactly: {result.zeros_kept:,} of {result.pruned_zeros:,} "
               f"({result.zeros_kept_share:.4%}); nonzero weights coded to zero: "
               f"{result.new_zeros:,} of {result.weights - result.pruned_zeros:,}")
