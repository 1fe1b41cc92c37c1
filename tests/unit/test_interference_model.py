"""Usage books, composition of co-runners, design points and the fitted interference model.

Pure: solo usage rows and "measured" latencies are synthesised from a known queueing-like
law, so the tests can check the model recovers it and composes unseen combinations.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deepedge.interference import (
    LATENCY_FEATURES,
    CampaignSettings,
    InterferenceModel,
    NoInterferenceModel,
    NotEnoughPoints,
    Observation,
    Scenario,
    TrainLoad,
    UsageBook,
    design,
    factor_space,
    latency_features,
    scenario_from_point,
    throughput_features,
)
from deepedge.interference.usage import MissingUsage
from deepedge.profile.kb import KnowledgeBase, UsageRow

KEY = json.dumps({"kind": "x86-mini", "cpu_cores": 0.4})
QUOTA = 0.4
CPU_PER_REQ = {"cnn_inference": 1.5e-3, "kv_lookup": 8e-4, "log_ingest": 4e-4, "frame_relay": 1e-4}
STRESSOR_CPU = {"cpu": 1.0, "membw": 0.9, "llc": 0.9}  # cores used per unit of duty


def rows() -> list[UsageRow]:
    out = []
    for kind, c in CPU_PER_REQ.items():
        for load in (0.05, 0.2, 0.4):
            rate = load * QUOTA / c
            usage = {"cpu_cores": rate * c, "rss_mb": 50.0, "p95_ms": 1e3 * c / QUOTA * 2}
            usage |= {"p99_ms": usage["p95_ms"] * 1.5, "p50_ms": 1e3 * c / QUOTA}
            out.append(UsageRow(KEY, f"app:{kind}", {"rate_rps": rate}, usage, 0.0))
    for kind, per in STRESSOR_CPU.items():
        for level in (0.25, 0.5, 1.0):
            usage = {
                "cpu_cores": level * QUOTA * per,
                "membw_mbps": 100 * level * (kind == "membw"),
            }
            out.append(UsageRow(KEY, f"stressor:{kind}", {"intensity": level}, usage, 0.0))
    for batch in (8, 32, 64):
        for level in (0.25, 0.5, 1.0):
            usage = {"cpu_cores": level * QUOTA, "samples_per_s": 40 * level * batch / (batch + 8)}
            usage["rss_mb"] = 300.0 + batch
            out.append(
                UsageRow(KEY, "train:sig/adam", {"batch": batch, "intensity": level}, usage, 0)
            )
    return out


@pytest.fixture
def book() -> UsageBook:
    return UsageBook.from_rows(KEY, QUOTA, rows())


def test_curves_interpolate_between_measured_settings(book: UsageBook) -> None:
    assert book.stressor("cpu", 0.75)["cpu_cores"] == pytest.approx(0.75 * QUOTA)
    assert book.stressor("cpu", 0.1)["cpu_cores"] == pytest.approx(0.1 * QUOTA)  # to the origin
    assert book.stressor("cpu", 0.0) == {}
    assert book.cpu_per_request("cnn_inference") == pytest.approx(1.5e-3)
    assert book.rate_for_load("cnn_inference", 0.3) == pytest.approx(0.3 * QUOTA / 1.5e-3)
    # training: exact at a measured point, between neighbours in log-batch elsewhere
    assert book.training(TrainLoad(32, 0.5))["cpu_cores"] == pytest.approx(0.5 * QUOTA)
    mid = book.training(TrainLoad(16, 1.0))["samples_per_s"]
    lo, hi = (
        book.training(TrainLoad(8, 1.0))["samples_per_s"],
        book.training(TrainLoad(32, 1.0))["samples_per_s"],
    )
    assert lo < mid < hi
    with pytest.raises(MissingUsage, match="stressor disk"):
        book.stressor("disk", 0.5)


def test_composition_adds_solo_vectors(book: UsageBook) -> None:
    total = book.compose(
        stressors={"cpu": 0.5, "membw": 1.0},
        train=TrainLoad(32, 0.25),
        apps={"kv_lookup": book.rate_for_load("kv_lookup", 0.2)},
    )
    assert total["cpu_cores"] == pytest.approx(
        0.5 * QUOTA + 0.9 * QUOTA + 0.25 * QUOTA + 0.2 * QUOTA
    )
    assert total["membw_mbps"] == pytest.approx(100.0)


def test_book_round_trips_through_dict(book: UsageBook) -> None:
    again = UsageBook.from_dict(json.loads(json.dumps(book.to_dict())))
    sc = Scenario("d", "cnn_inference", 50.0, stressors={"cpu": 0.3}, train=TrainLoad(16, 0.6))
    assert latency_features(again, sc) == latency_features(book, sc)
    assert throughput_features(again, sc) == throughput_features(book, sc)
    assert len(latency_features(book, sc)) == len(LATENCY_FEATURES)


def test_design_points_become_scenarios(book: UsageBook) -> None:
    space = factor_space(["d"], list(CPU_PER_REQ), ["cpu", "membw", "llc"], (8, 32, 64))
    scenarios = design(space, {"d": book}, 24, seed=1)
    assert len(scenarios) == 24
    assert {s.app for s in scenarios} == set(CPU_PER_REQ)
    assert any(s.train is None for s in scenarios) and any(s.train for s in scenarios)
    for s in scenarios:
        assert s.rate_rps > 0 and all(0 < v <= 1 for v in s.stressors.values())
    point = {
        "device": "d",
        "app": "kv_lookup",
        "app_load": 0.2,
        "busy": 0.5,
        "train_weight": 0.1,
        "train_batch": 16,
        "stressor": "cpu",
        "stressor_weight": 0.4,
        "second": "cpu",
        "second_weight": 0.4,
    }
    sc = scenario_from_point(point, book)
    assert sc.train is None  # weight below 0.15: no training
    # co-runners take busy × (0.95 − load) = 0.375; one kind in both slots adds up
    assert sc.stressors == {"cpu": pytest.approx(0.375)}
    both = scenario_from_point(point | {"train_weight": 0.8, "second": "none"}, book)
    assert both.train is not None and both.train.batch == 16
    assert both.train.intensity == pytest.approx(0.375 * 0.8 / 1.2)
    assert both.stressors == {"cpu": pytest.approx(0.375 * 0.4 / 1.2)}
    assert scenario_from_point(point | {"stressor": "none", "second": "disk"}, book).stressors == {}


def law(book: UsageBook, sc: Scenario, rng: np.random.Generator) -> tuple[float, float, float]:
    """Synthetic truth: M/M/1-like blow-up with total utilisation, 3 % noise."""
    x = dict(zip(LATENCY_FEATURES, latency_features(book, sc), strict=True))
    util = min(x["total_util"], 0.95)
    base = math.exp(x["log_solo_p95_ms"])
    noise = float(rng.lognormal(0, 0.03))
    p95 = base * (1 + 2 * util / (1 - util)) * noise
    thr = None
    if sc.train is not None:
        solo = book.training(sc.train)["samples_per_s"]
        thr = solo / (1 + x["own_util"] + 0.5 * x["co_util"]) * noise
    return p95, p95 * 1.4, thr


def synth(book: UsageBook, n: int, seed: int) -> list[Observation]:
    rng = np.random.default_rng(seed)
    space = factor_space(["d"], list(CPU_PER_REQ), ["cpu", "membw", "llc"], (8, 32, 64))
    out = []
    for sc in design(space, {"d": book}, n, seed=seed, sampler="random"):
        sc = Scenario(KEY, sc.app, sc.rate_rps, sc.stressors, sc.train)
        p95, p99, thr = law(book, sc, rng)
        out.append(Observation(sc, book, p95, p99, thr))
    return out


def test_model_learns_the_law_and_bounds_it(book: UsageBook, tmp_path) -> None:
    train = synth(book, 120, seed=0)
    model = InterferenceModel.fit(train, {KEY: book})
    # out-of-fold predictions come back in ms whichever target (latency or slowdown) won
    oof = model.out_of_fold_ms("p95", train)
    assert 0.8 < np.median(oof / np.array([o.p95_ms for o in train])) < 1.25
    test = synth(book, 200, seed=9)
    pred = [model.predict_latency(KEY, o.scenario) for o in test]
    ape = [abs(p.p95_ms - o.p95_ms) / o.p95_ms for p, o in zip(pred, test, strict=True)]
    assert np.median(ape) < 0.15
    covered = np.mean([o.p95_ms <= p.p95_upper_ms for p, o in zip(pred, test, strict=True)])
    assert covered >= 0.85
    assert all(p.p95_upper_ms >= p.p95_ms for p in pred)
    trained = [o for o in test if o.scenario.train is not None]
    value, low = model.predict_throughput(KEY, trained[0].scenario)
    assert 0 < low <= value
    # more training intensity beside an app never predicts *less* latency by much
    rate = book.rate_for_load("cnn_inference", 0.2)
    alone = model.predict_latency(KEY, Scenario("d", "cnn_inference", rate)).p95_ms
    loaded = model.predict_latency(
        KEY, Scenario("d", "cnn_inference", rate, train=TrainLoad(32, 0.8))
    ).p95_ms
    assert loaded > alone
    # stored in the knowledge base and read back: same predictions
    with KnowledgeBase(tmp_path / "kb.sqlite") as kb:
        model.save(kb)
        again = InterferenceModel.load(kb)
    sc = test[0].scenario
    assert again.predict_latency(KEY, sc) == model.predict_latency(KEY, sc)


def test_planner_question_counts_the_other_apps(book: UsageBook) -> None:
    model = InterferenceModel.fit(synth(book, 60, seed=1), {KEY: book})
    rate = book.rate_for_load("cnn_inference", 0.2)
    alone = model.apps_beside_training(KEY, {"cam": ("cnn_inference", rate)}, TrainLoad(32, 0.2))
    shared = model.apps_beside_training(
        KEY,
        {"cam": ("cnn_inference", rate), "kv": ("kv_lookup", book.rate_for_load("kv_lookup", 0.3))},
        TrainLoad(32, 0.2),
    )
    assert set(shared) == {"cam", "kv"}
    assert shared["cam"].p95_ms > alone["cam"].p95_ms


def test_unknown_device_and_too_few_runs_are_clear_errors(book: UsageBook, tmp_path) -> None:
    with pytest.raises(NotEnoughPoints, match=r"run \d+ more"):
        InterferenceModel.fit(synth(book, 10, seed=2), {KEY: book})
    model = InterferenceModel.fit(synth(book, 40, seed=3), {KEY: book})
    other = json.dumps({"kind": "rpi4", "cpu_cores": 0.1})
    with pytest.raises(NoInterferenceModel, match="rpi4"):
        model.predict_latency(other, Scenario("d", "cnn_inference", 10.0))
    with KnowledgeBase(tmp_path / "empty.sqlite") as kb, pytest.raises(NoInterferenceModel):
        InterferenceModel.load(kb)


def test_settings_batch_levels_follow_the_job() -> None:
    from deepedge.spec import JobSpec

    assert CampaignSettings().batch_levels(JobSpec(global_batch=128)) == (8, 32, 64)
    assert CampaignSettings(batches=(4, 4, 16)).batch_levels(JobSpec()) == (4, 16)
