"""`prunelab quantize`: weight quantization beside `prune`, through the same registry and engine.

`prunelab quantize MODEL --method gptq --bits 4 --group-size 64 --out DIR` is
`prunelab prune MODEL --method gptq --option bits=4 --option group_size=64 --out DIR` with the
quantization options spelled out, and a `--format` for the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prunelab.cli_common import PRUNE_PPL, option_pairs
from prunelab.errors import PrunelabError


def _group_size(text: str) -> str:
    """"none", "channel" or "-1" mean one grid per output channel."""
    return "none" if text.strip().lower() in ("none", "channel", "per-channel", "-1") else text


def register(app: typer.Typer) -> None:
    @app.command()
    def quantize(
        model: str = typer.Argument(..., help="zoo name (see `prunelab models`) or local "
                                    "model dir"),
        out: Path = typer.Option(..., "--out", help="directory to write the quantized model to"),
        method: str = typer.Option("gptq", help="rtn or gptq (see `prunelab methods`)"),
        bits: int = typer.Option(4, help="bits per weight: 8, 6, 4, 3 or 2"),
        group_size: str = typer.Option("128", help="input columns per grid (32, 64, 128, a "
                                       "divisor of the width), or none for per channel"),
        symmetric: bool = typer.Option(False, help="grid symmetric about zero (no zero point)"),
        act_order: bool = typer.Option(False, help="GPTQ: columns by decreasing diag(H), "
                                       "with static groups"),
        format: str = typer.Option("dequantized", "--format",
                                   help="dequantized (fp32 safetensors) or compressed-tensors "
                                        "(packed int, what vLLM reads)"),
        calib_source: str = typer.Option("squadshifts-new_wiki", help="calibration text"),
        calib_samples: int = typer.Option(128, help="number of calibration windows"),
        seqlen: int = typer.Option(512, help="tokens per calibration window"),
        seed: int = typer.Option(0, help="seed for drawing calibration windows"),
        option: Optional[list[str]] = typer.Option(None, help="other method option KEY=VALUE"),
        ppl: bool = typer.Option(True, help="measure perplexity (32 windows of 512) before "
                                 "and after"),
        trust_remote_code: bool = typer.Option(False, help="allow the model's own Python code"),
    ) -> None:
        """Quantize MODEL's weights (RTN or GPTQ) and save it."""
        from prunelab import api
        from prunelab.data.corpora import CalibrationConfig
        from prunelab.methods.registry import METHODS
        from prunelab.quant_export import check_format, check_model_for_format
        from prunelab.zoo.models import load_model

        options = {"bits": str(bits), "group_size": _group_size(group_size),
                   "symmetric": str(symmetric)}
        if act_order:
            options["act_order"] = "true"
        for key, value in option_pairs(option).items():
            if key in options:
                raise PrunelabError(f"--option {key} repeats a flag of `quantize`",
                                    f"give it once, as --{key.replace('_', '-')}")
            options[key] = value
        known = METHODS.get(method)
        if known is not None and not known.quantizes:
            raise PrunelabError(f"method {method} does not quantize",
                                "use --method rtn or gptq (prune, or prune and quantize with "
                                "sparsegpt --option bits=4, with `prunelab prune`)")
        calibration = CalibrationConfig(calib_source, calib_samples, seqlen, seed)
        args = api.check_prune_args(method, None, None, calibration, options, out=out)
        check_format(format, options)
        loaded = load_model(model, trust_remote_code=trust_remote_code)
        check_model_for_format(loaded.model, format)
        api.check_model_fit(loaded, args, calibration_text=True)
        before = api.dense_perplexity(loaded, *PRUNE_PPL, progress=True) if ppl else None
        result = api.prune(loaded, method, calibration=calibration, **options)
        after = api.perplexity(loaded, *PRUNE_PPL, progress=True) if ppl else None
        source, ppl_seqlen, windows = PRUNE_PPL
        extra = {"perplexity": {"source": source, "seqlen": ppl_seqlen, "windows": windows,
                                "dense": before.value, "quantized": after}} if ppl else None
        api.save(loaded, out, result, extra=extra, format=format)
        config = args.method.config
        grid = f"g{config.group_size}" if config.group_size else "per channel"
        typer.echo(f"{method} {config.bits}-bit {grid}"
                   f"{' symmetric' if config.symmetric else ''}: {len(result.quantized)} "
                   f"layers in {result.seconds:.1f} s")
        if ppl:
            cached = " (cached)" if before.cached else ""
            typer.echo(f"perplexity ({source}, {windows} x {ppl_seqlen}): dense "
                       f"{before.value:.2f}{cached} -> quantized {after:.2f}")
        typer.echo(f"saved to {out} ({format})")
