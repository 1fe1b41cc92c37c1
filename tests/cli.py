"""Run the real `deepedge` entry point in-process and capture what a user would see."""

from __future__ import annotations

import io
import signal
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

from deepedge.cli import main


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(*args: str) -> CliResult:
    """``deepedge ARGS`` through :func:`deepedge.cli.main`, with its error handling and exit
    codes; the signal handlers it installs are put back afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return CliResult(code, out.getvalue(), err.getvalue())
