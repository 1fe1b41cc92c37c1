"""``examples/byo_model.py`` end to end: a user's MLP, loss and optimiser, defined in the
script's ``__main__``, trained by ``deepedge.fit`` on a real 2-device emulated cluster
through the run controller and the same training agents as every job."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.root, pytest.mark.timeout(300)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byo_model.py"


def test_the_byo_example_trains_a_users_model_and_protects_the_lc_app(tmp_path) -> None:
    out = tmp_path / "run"
    # the autouse fixture put DEEPEDGE_KB in os.environ: the child profiles into it
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(out), "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,  # the example's code must reach the agents from anywhere
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    # a model this small may not pay for the slow board: the plan says so, with why
    assert re.search(r"plan proportional: (orin|nano) \d+", text), text
    before = float(re.search(r"eval before: loss [\d.]+, accuracy ([\d.]+)", text)[1])
    after = float(re.search(r"eval after:  loss [\d.]+, accuracy ([\d.]+)", text)[1])
    assert before < 0.3 and after > 0.85, text  # 10 classes: it learned
    assert re.search(r"LC app cam: p95 \S+ ms vs deadline 200 ms", text), text
    report = json.loads((out / "report.json").read_text())
    assert report["state"] == "done"
    assert report["job"]["custom"]["model"]["pickled"]  # __main__ code went by value
    assert report["job"]["custom"]["optimizer_name"] == "adamw"
    plan = report["plan"]
    assert sum(plan["local_batches"].values()) == 128
    assert set(plan["local_batches"]) | {e["device"] for e in plan["excluded"]} == {"orin", "nano"}
    assert (out / "byo-model.pt").is_file()
