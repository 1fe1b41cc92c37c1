"""Start a launched rank at the trainer's CPU priority, then become the user's command.

Run by file path (``python -S .../_rank.py ARGV...``), not as ``-m deepedge...``: the
package's ``__init__`` imports pydantic, and a rank should pay for nothing but an
interpreter start before its own script. The scheduling class and niceness survive
``exec`` and are inherited by every thread and child the script starts, so an unmodified
script yields its device's CPU to the LC apps there exactly as deepedge's own trainers do
(:mod:`deepedge.train.priority`, loaded here by path for the same reason).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def _yield_cpu() -> str:
    path = Path(__file__).resolve().parent.parent / "train" / "priority.py"
    spec = importlib.util.spec_from_file_location("_deepedge_priority", path)
    if spec is None or spec.loader is None:
        return f"unchanged: cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.yield_cpu_to_lc_apps())


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: _rank.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    how = _yield_cpu()
    if os.environ.get("DEEPEDGE_RANK_BANNER", "1") == "1":
        print(
            f"[deepedge] rank {os.environ.get('RANK', '?')} on device "
            f"{os.environ.get('DEEPEDGE_DEVICE', '?')}: CPU priority {how}",
            file=sys.stderr,
            flush=True,
        )
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        print(f"[deepedge] cannot run {argv[0]}: {err}", file=sys.stderr, flush=True)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
