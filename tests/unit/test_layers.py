"""Layering: the planner is a pure library; importing it must not start torch, cgroups,
sockets or the interference lab (they cost seconds under a small CPU quota, and a planner
has to run where none of them exist)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deepedge.api import STRESSOR_KINDS

HEAVY = ("torch", "deepedge.train", "deepedge.cluster", "deepedge.interference", "sklearn")


@pytest.mark.parametrize(
    "module", ["deepedge.plan", "deepedge.plan.deadline", "deepedge.plan.exact", "deepedge.api"]
)
def test_planner_imports_nothing_heavy(module: str) -> None:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], f"importing {module} loads {heavy}"


def test_stressor_worker_knows_the_same_kinds() -> None:
    # the worker imports nothing from deepedge (it starts under a tiny CPU quota), so it
    # keeps its own copy of the kinds
    from deepedge.interference.stressor_worker import KINDS

    assert tuple(KINDS) == STRESSOR_KINDS
