"""Usage books, composition of co-runners, design points and the fitted interference model.

Pure: solo usage rows and "measured" latencies are synthesised from a known queueing-like
law, so the tests can check the model recovers it and composes unseen combinations.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pickle
from typing import Any

import numpy as np
import pytest

from deepedge.interference import (
    LATENCY_FEATURES,
    LATENCY_MONOTONE,
    MODEL_NAME,
    THROUGHPUT_FEATURES,
    THROUGHPUT_MONOTONE,
    CampaignSettings,
    InterferenceModel,
    NoInterferenceModel,
    NotEnoughPoints,
    Observation,
    Scenario,
    StaleModel,
    TrainLoad,
    UsageBook,
    design,
    factor_space,
    fit_surrogate,
    latency_features,
    scenario_from_point,
    throughput_features,
)
from deepedge.interference.kb import UsageRow
from deepedge.interference.usage import (
    STRETCH_CAP,
    STRETCH_PER_SAMPLE,
    TRAIN_FEATURES,
    MissingUsage,
)
from deepedge.profile.kb import KnowledgeBase

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


# --- the training co-runner's features ------------------------------------------------------


def _named(book: UsageBook, sc: Scenario) -> dict[str, float]:
    return dict(zip(LATENCY_FEATURES, latency_features(book, sc), strict=True))


def test_features_without_training_are_zero_in_the_training_columns(book: UsageBook) -> None:
    rate = book.rate_for_load("kv_lookup", 0.2)
    x = _named(book, Scenario("d", "kv_lookup", rate, stressors={"cpu": 0.5}))
    assert all(x[f] == 0.0 for f in TRAIN_FEATURES)
    assert x["cpu_throttle"] == 0.0  # 0.2 + 0.5 of the quota: no throttling
    busy = _named(book, Scenario("d", "kv_lookup", rate, stressors={"cpu": 1.0, "llc": 1.0}))
    # demand 0.2 + 1.0 + 0.9 = 2.1 quotas: the quota serves 1/2.1 of it
    assert busy["cpu_throttle"] == pytest.approx(1 - 1 / 2.1)
    trained = _named(book, Scenario("d", "kv_lookup", rate, train=TrainLoad(32, 0.5)))
    assert all(trained[f] > 0 for f in TRAIN_FEATURES)


def test_training_features_follow_the_stretch_model(book: UsageBook) -> None:
    rate = book.rate_for_load("cnn_inference", 0.2)

    def at(batch: int, level: float = 1.0, **kw: Any) -> dict[str, float]:
        return _named(
            book, Scenario("d", "cnn_inference", rate, train=TrainLoad(batch, level), **kw)
        )

    t = book.per_sample_ms()
    assert t == pytest.approx(1e3 / (40 * 64 / 72))  # largest batch, full intensity
    xs = [at(b) for b in (1, 2, 4, 8, 15, 16, 32, 64)]
    stretch = [x["train_stretch_ms"] for x in xs]
    # a bigger batch raises the stretch (φ·b per-sample steps) up to the cap Q
    assert stretch[:5] == pytest.approx([STRETCH_PER_SAMPLE * b * t for b in (1, 2, 4, 8, 15)])
    assert all(a < b for a, b in itertools.pairwise(stretch[:5]))
    assert stretch[5:] == pytest.approx([STRETCH_CAP * t] * 3)
    for name in ("log_train_batch", "log1p_train_step_ms", "log_train_wait"):
        values = [x[name] for x in xs]
        assert all(a <= b for a, b in itertools.pairwise(values)), name
    x = at(32, 0.5)
    assert x["train_intensity"] == 0.5
    assert x["log_train_batch"] == pytest.approx(math.log(32))
    solo = book.training(TrainLoad(32, 0.5))["samples_per_s"]
    assert x["log1p_train_step_ms"] == pytest.approx(math.log1p(1e3 * 32 / solo))
    # the share of arrivals that meet the trainer: min(c, 1 − normal-priority load)
    assert x["train_share"] == pytest.approx(0.5)
    assert at(32, 1.0)["train_share"] == pytest.approx(0.8)  # the app uses 0.2
    crowded = at(32, 1.0, stressors={"cpu": 0.5})
    assert crowded["train_share"] == pytest.approx(0.3)
    # the wait's share of the p95: log(1 + r(p)·stretch / solo p95), r(p) = 1 − 0.05/p
    solo_p95 = math.exp(x["log_solo_p95_ms"])
    wait = (1 - 0.05 / 0.5) * STRETCH_CAP * t
    assert x["log_train_wait"] == pytest.approx(math.log1p(wait / solo_p95))
    # an intensity below 5 % is never in the p95
    assert at(32, 0.04)["log_train_wait"] == 0.0


def test_stretch_constants_mirror_the_simulator() -> None:
    from deepedge.sim.fleet import LC_STRETCH_CAP, LC_STRETCH_PER_SAMPLE, LC_TAIL

    assert (STRETCH_CAP, STRETCH_PER_SAMPLE) == (LC_STRETCH_CAP, LC_STRETCH_PER_SAMPLE)
    assert pytest.approx(0.05) == 1 - LC_TAIL


def test_monotone_maps_name_real_features() -> None:
    assert set(LATENCY_MONOTONE) <= set(LATENCY_FEATURES)
    assert set(THROUGHPUT_MONOTONE) <= set(THROUGHPUT_FEATURES)
    assert {LATENCY_MONOTONE[f] for f in TRAIN_FEATURES} == {1}
    assert not any(LATENCY_MONOTONE.get(f"app={k}") for k in CPU_PER_REQ)


def stretch_law(book: UsageBook, sc: Scenario, rng: np.random.Generator) -> float:
    """Synthetic truth shaped like the lab's: stressors slow the app, training adds the
    residual of a batch-long stretch when an arrival meets it; 3 % noise."""
    own = book.app(str(sc.app), sc.rate_rps)
    u = own["cpu_cores"] / QUOTA
    normal = book.compose(stressors=sc.stressors)["cpu_cores"] / QUOTA
    p95 = own["p95_ms"] * (1 + 1.5 * normal)
    if sc.train is not None:
        p = min(sc.train.intensity, max(0.0, 1 - u - normal))
        seen = max(0.0, 1 - 0.05 / p) if p > 0 else 0.0
        p95 += seen * min(3.5, 0.23 * sc.train.batch) * book.per_sample_ms()
    return p95 * float(rng.lognormal(0, 0.03))


def test_training_features_explain_the_waiting(book: UsageBook) -> None:
    """Fitted on 48 runs of the stretch law, the model with the training features is
    several times more accurate than on the composed consumption vector alone."""
    rng = np.random.default_rng(0)
    space = factor_space(["d"], list(CPU_PER_REQ), ["cpu", "membw", "llc"], (2, 8, 32, 64))

    def runs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        scs = design(space, {"d": book}, n, seed=seed, sampler="random")
        X = np.array([latency_features(book, sc) for sc in scs])
        return X, np.array([stretch_law(book, sc, rng) for sc in scs])

    (X, y), (X_test, y_test) = runs(48, 0), runs(300, 5)
    old = [i for i, f in enumerate(LATENCY_FEATURES) if f not in (*TRAIN_FEATURES, "cpu_throttle")]
    errors = {}
    for name, cols in (("all", list(range(len(LATENCY_FEATURES)))), ("old", old)):
        names = [LATENCY_FEATURES[i] for i in cols]
        s = fit_surrogate(X[:, cols], y, names, target="p95", monotone=LATENCY_MONOTONE)
        errors[name] = float(np.median(np.abs(s.predict(X_test[:, cols]) / y_test - 1)))
    assert errors["all"] < 0.06, errors  # about 0.03
    assert errors["old"] > 3 * errors["all"], errors  # about 0.28


@pytest.fixture(scope="module")
def small_model() -> InterferenceModel:
    """A model fitted on 40 runs of :func:`law` (shared: fitting takes seconds)."""
    book = UsageBook.from_rows(KEY, QUOTA, rows())
    return InterferenceModel.fit(synth(book, 40, seed=4), {KEY: book})


def test_batched_bounds_match_the_single_question(
    book: UsageBook, small_model: InterferenceModel
) -> None:
    model = small_model
    apps = {
        "cam": ("cnn_inference", book.rate_for_load("cnn_inference", 0.2)),
        "kv": ("kv_lookup", book.rate_for_load("kv_lookup", 0.1)),
    }
    batches = [0, 1, 8, 20, 64]
    many = model.p95_upper_beside_training(KEY, apps, batches, 0.5)
    for i, b in enumerate(batches):
        one = model.apps_beside_training(KEY, apps, TrainLoad(b, 0.5) if b else None)
        for name in apps:
            assert many[name][i] == pytest.approx(one[name].p95_upper_ms)


def test_a_model_of_other_features_or_format_asks_for_a_refit(
    small_model: InterferenceModel, tmp_path
) -> None:
    model = small_model
    sc = Scenario("d", "cnn_inference", 20.0, train=TrainLoad(8, 0.5))
    old_features = LATENCY_FEATURES[: -len(TRAIN_FEATURES) - 1]  # before the training ones
    stale = dataclasses.replace(
        model, p95=dataclasses.replace(model.p95, feature_names=old_features)
    )
    for ask in (
        lambda m: m.predict_latency(KEY, sc),
        lambda m: m.p95_upper_beside_training(KEY, {"a": ("cnn_inference", 20.0)}, [8], 0.5),
    ):
        with pytest.raises(
            StaleModel, match=r"new: train_intensity, .*cpu_throttle\): refit with"
        ) as info:
            ask(stale)
        assert "deepedge interference fit" in info.value.hint
    with KnowledgeBase(tmp_path / "kb.sqlite") as kb:
        stale.save(kb)
        with pytest.raises(StaleModel, match="refit"):
            InterferenceModel.load(kb)
        # a surrogate stored in the old format (one global margin)
        model.save(kb)
        blob, meta = kb.load_model(MODEL_NAME)
        data = pickle.loads(blob)
        magic, header, payload = data["p95"].split(b"\n", 2)
        fields = json.loads(header) | {"format": 1}
        data["p95"] = b"\n".join([magic, json.dumps(fields).encode(), payload])
        kb.save_model(MODEL_NAME, pickle.dumps(data), meta)
        with pytest.raises(StaleModel, match=r"format 1.*refit with 'deepedge interference fit'"):
            InterferenceModel.load(kb)


def test_summary_reports_the_conformal_method(small_model: InterferenceModel) -> None:
    summary = small_model.summary()
    for part in ("p95", "p99"):
        assert summary[part]["conformal"] in ("global", "adaptive")
        assert summary[part]["bound_factor_median"] >= 1.0
        assert summary[part]["bound_factor"] >= 1.0
