"""The `prunelab` command line: parse, call the Python API, print. No logic of its own.

One module per group of commands, each registering on the one app (`prunelab.cli.common`):
compress (prune, quantize, transfer, transfer-encoder), compact (pack, unpack), evaluate (ppl,
eval, divergence, refusal, tasks), study (study, demo, results, report), catalogue (models,
methods, info), route, and inference (speed, export-gguf). A new command is a function
decorated with `@app.command()` in one of them.
"""

from __future__ import annotations

import signal
import sys

import click
import typer

# Each module registers its commands on import; `prunelab --help` lists them in this order.
from prunelab.cli import compress, compact, evaluate, study, catalogue, route, inference  # noqa: F401,I001
from prunelab.cli.common import Interrupted, app
from prunelab.errors import PrunelabError

__all__ = ["app", "main"]

# typer 0.2x parses with its own copy of click, whose exceptions are not click's
_EXITS = (click.exceptions.Exit, typer.Exit)
_USAGE_ERRORS = (click.ClickException, *filter(None, [getattr(typer, "TyperException", None)]))
_ABORTS = (click.Abort, typer.Abort, KeyboardInterrupt)
INTERRUPTED = 130  # the shell's status for a process stopped by SIGINT (128 + 2)


def _terminated(signum, frame) -> None:
    # SIGTERM (a scheduler, `kill`) stops a command the way Ctrl-C does: through
    # KeyboardInterrupt, so that what is being written is abandoned atomically and a study
    # keeps its finished points.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Run the command line; exit with its status (0 returns)."""
    from prunelab.allocator import configure

    configure()  # before torch's first allocation: this process will hold big models
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread: signals stay with whoever handles them there
        previous = None
    try:
        code = _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if code:
        sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """The app's exit status (typer returns it, as 130 after a KeyboardInterrupt, instead of
    exiting when not in standalone mode); one line on stderr for every refusal."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="prunelab")
    except PrunelabError as exc:
        typer.echo(f"prunelab: error: {exc}", err=True)
        return PrunelabError.exit_code
    except Interrupted as exc:
        typer.echo(f"prunelab: {exc}", err=True)
        return Interrupted.exit_code
    except _EXITS as exc:
        return exc.exit_code
    except _USAGE_ERRORS as exc:
        # one line, like every other bad input (click's own answer is a usage block)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "prunelab"
        typer.echo(f"prunelab: error: {message.rstrip('.')}: see `{command} --help`", err=True)
        return 2
    except _ABORTS:
        code = INTERRUPTED
    if code == INTERRUPTED:  # typer turns a KeyboardInterrupt into this status
        typer.echo("prunelab: interrupted", err=True)
    return code if isinstance(code, int) else 0
