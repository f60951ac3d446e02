"""Running the CLI inside the test process, and the shape every bad-input answer must have."""

import contextlib
import io
from typing import NamedTuple

from prunelab.cli import main


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run(*args) -> Result:
    """Run the CLI in this process (a subprocess per case would re-import torch each time)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def assert_user_error(result: Result, fragment: str) -> None:
    """One line on stderr naming the problem (containing `fragment`), exit 2, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


def foreground_signals() -> None:
    """`preexec_fn` for a child that must take Ctrl-C as a terminal's foreground job does: a
    shell hands the jobs it starts in the background (`cmd &`, some CI runners) SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
