"""What every benchmark writes: machine facts, and results as JSON plus a markdown table."""

from __future__ import annotations

import json
import os
import platform
import statistics
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


def median_case(runs: list[dict[str, Any]], also: tuple[str, ...] = ()) -> dict[str, Any]:
    """The run of median makespan, with every run's makespan (``makespans_s``) and, for
    each key of ``also`` the median run has, the median over the runs that measured it."""
    median = sorted(runs, key=lambda x: x["makespan_s"])[len(runs) // 2]
    row = median | {"makespans_s": [x["makespan_s"] for x in runs]}
    for key in also:
        if key in median:
            values = [x[key] for x in runs if x.get(key) is not None]
            row[key] = statistics.median(values) if values else None
    return row


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
