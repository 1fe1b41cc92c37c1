"""What every benchmark writes: machine facts, and results as JSON plus a markdown table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine(emulation: str) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "emulation": emulation,
    }


def git_commit() -> str:
    """The commit the benchmark ran at, marked when the tree had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    # the benchmark's own outputs (results, plots) are not changes to what it measured
    changed = git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    return head + (" (with uncommitted changes)" if changed else "")


def write_results(name: str, result: dict[str, Any], markdown: list[str]) -> None:
    """``bench/results/<name>.json`` and ``.md``; both say when and at which commit."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    when, commit = time.strftime("%Y-%m-%dT%H:%M:%S%z"), result.get("commit") or git_commit()
    result = {"benchmark": name, "when": when, **result, "commit": commit}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    footer = ["", f"Measured {when} at commit {commit}."]
    (RESULTS / f"{name}.md").write_text("\n".join([*markdown, *footer]) + "\n")
