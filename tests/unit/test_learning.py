"""Learning from training runs: each LC app's latency under a plan becomes a model row."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from deepedge.apps import RequestRecord, latency_summary
from deepedge.catalog import resolve_device
from deepedge.demo import default_specs
from deepedge.interference import (
    RUN_CAMPAIGN,
    InterferenceModel,
    TrainLoad,
    UsageBook,
    device_key,
    learn_from_runs,
    refit,
    train_resident,
)
from deepedge.interference.learning import run_latencies
from deepedge.profile.kb import KnowledgeBase
from deepedge.spec import ClusterSpec, Plan
from tests.unit.test_interference_model import QUOTA, rows, synth

EMULATION = "test-emulation"
RATE = 50.0


@pytest.fixture
def spec() -> ClusterSpec:
    raw = ClusterSpec.model_validate(
        {
            "name": "learn",
            "devices": [
                {"name": "mini", "kind": "x86-mini"},
                {"name": "orin", "kind": "orin-nano"},
            ],
            "apps": [{"name": "cam", "device": "mini", "rate_rps": RATE, "deadline_ms": 100}],
        }
    )
    return raw.model_copy(update={"devices": [resolve_device(d) for d in raw.devices]})


def plan(**update) -> Plan:
    base = Plan(
        policy="deep-edge",
        global_batch=64,
        local_batches={"mini": 48, "orin": 16},
        intensities={"mini": 0.5},
    )
    return base.model_copy(update=update)


def records(n: int, start: float, seed: int = 0) -> list[RequestRecord]:
    """``n`` requests of "cam" at RATE from ``start``, lognormal latencies around 20 ms."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        at = start + i / RATE
        lat = float(rng.lognormal(np.log(20), 0.3))
        out.append(RequestRecord("cam", at, at, at + lat / 1e3, lat, True, None, lat))
    return out


def test_an_app_under_a_static_plan_gets_its_scenario_and_the_labs_estimator(spec):
    recs = records(300, start=100.0) + records(300, start=200.0, seed=1)
    rows_, skipped = run_latencies(spec, plan(), recs, 100.0, 106.0)
    assert skipped == {}
    [(device, app, sc, stats)] = rows_
    assert (device, app, sc.device, sc.app, sc.rate_rps) == (
        "mini",
        "cam",
        "mini",
        "cnn_inference",
        RATE,
    )
    assert sc.train == TrainLoad(48, 0.5)
    # only the run's requests, summarised exactly as the lab summarises its windows
    expected = latency_summary(recs, deadline_ms=1e9, start_s=100.0, end_s=106.0, app="cam")
    assert stats.requests == 300 == expected.requests
    assert stats.p95_ms == expected.p95_ms


def test_runs_without_a_fixed_operating_point_or_enough_requests_are_skipped(spec):
    recs = records(300, start=0.0)
    assert run_latencies(spec, plan(micro_batch=8), recs, 0.0, 10.0)[1] == {
        "cam": "dynamic dispatch has no fixed local batch"
    }
    rows_, skipped = run_latencies(spec, plan(), recs, 0.0, 2.0)
    assert rows_ == [] and "100 requests" in skipped["cam"]
    # a device the plan leaves out still measured its app, beside no training at all
    out = plan(local_batches={"orin": 64}, intensities={})
    [(_, _, sc, _)] = run_latencies(spec, out, recs, 0.0, 10.0)[0]
    assert sc.train is None


def test_an_app_whose_load_changed_is_learnt_at_the_rate_it_had(spec):
    recs = records(300, start=0.0)  # RATE for 6 s
    [(_, _, sc, _)] = run_latencies(spec, plan(), recs, 0.0, 6.0)[0]
    assert sc.rate_rps == RATE
    [(_, _, sc, _)] = run_latencies(spec, plan(), recs, 0.0, 10.0)[0]
    assert sc.rate_rps == pytest.approx(0.6 * RATE)  # nothing for the last 4 s


def test_rows_are_stored_even_without_a_model_to_refit(spec, tmp_path):
    _, job = default_specs()
    with KnowledgeBase(tmp_path / "kb.sqlite") as kb:
        learned = learn_from_runs(
            kb, spec, job, [(plan(), 0.0, 10.0)], records(500, 0.0), emulation=EMULATION
        )
        stored = kb.interference_runs(campaign=f"{RUN_CAMPAIGN}:learn")
    assert not learned.refitted
    assert [r.predicted for r in learned.rows] == [None]
    [row] = stored
    assert row.device == device_key(spec.devices[0], spec, EMULATION)
    assert row.scenario["train"] == {"batch": 48, "intensity": 0.5}
    assert row.result["p95_ms"] == learned.rows[0].measured.p95_ms
    assert row.result["train_samples_per_s"] is None


def test_a_run_refits_the_stored_model_on_its_rows(spec, tmp_path):
    _, job = default_specs()
    key = device_key(spec.devices[0], spec, EMULATION)
    resident = train_resident(job)
    with KnowledgeBase(tmp_path / "kb.sqlite") as kb:
        for r in rows():
            who = resident if r.resident.startswith("train:") else r.resident
            kb.add_usage(key, who, r.setting, r.usage)
        book = UsageBook.from_rows(key, QUOTA, [dataclasses.replace(r, device=key) for r in rows()])
        for o in synth(book, 48, seed=3):
            result = {"p95_ms": o.p95_ms, "p99_ms": o.p99_ms, "train_samples_per_s": None}
            kb.add_interference(key, "plan:learn", o.scenario.to_dict(), result)
        before = refit(kb, job, required=True)
        learned = learn_from_runs(
            kb, spec, job, [(plan(), 0.0, 10.0)], records(500, 0.0), emulation=EMULATION
        )
        after = InterferenceModel.load(kb)
    assert learned.refitted
    [row] = learned.rows
    sc = row.scenario
    assert row.predicted == before.predict_latency(key, sc)
    assert row.bound_ratio == pytest.approx(row.predicted.p95_upper_ms / row.measured.p95_ms)
    assert after.p95.n_points == before.p95.n_points + 1
    assert "learned 1 LC latency rows" in learned.describe()
