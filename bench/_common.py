"""What every benchmark writes: machine facts, and results as JSON plus a markdown table."""

from __future__ import annotations

import json
import os
import platform
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


def write_results(name: str, result: dict[str, Any], markdown: list[str]) -> None:
    """``bench/results/<name>.json`` and ``.md``; the JSON gets a timestamp and the name."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{name}.md").write_text("\n".join(markdown) + "\n")
