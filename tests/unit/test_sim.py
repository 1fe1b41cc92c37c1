"""The simulator's LC latency model (``deepedge.sim.fleet.lc_p95_ms``) and the limits it gives."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from deepedge.sim import (
    LC_CONTENTION,
    LC_STRETCH_CAP,
    LC_STRETCH_PER_SAMPLE,
    SimDevice,
    build_problem,
    lc_p95_ms,
    queueing_bound,
)

CALIBRATION = Path(__file__).parents[2] / "bench" / "results" / "sim_calibration.json"
LOADS = (0.0, 0.05, 0.3, 0.6, 0.97)
INTENSITIES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
BATCHES = (0, 1, 2, 3, 5, 8, 13, 15, 16, 21, 34, 64, 4096)


def law(b: int, c: float, u: float, *, contention: float = LC_CONTENTION) -> float:
    return lc_p95_ms(b, c, solo_p95_ms=20.0, app_load=u, per_sample_ms=10.0, contention=contention)


@pytest.mark.parametrize("contention", [LC_CONTENTION, 0.8])
def test_monotone_in_batch_and_intensity_and_solo_without_training(contention: float) -> None:
    for u in LOADS:
        for c in INTENSITIES:
            assert law(0, c, u, contention=contention) == 20.0  # no training: solo
            row = [law(b, c, u, contention=contention) for b in BATCHES]
            assert row == sorted(row), (u, c)
            assert all(v >= 20.0 for v in row)
        for b in BATCHES:
            col = [law(b, c, u, contention=contention) for c in INTENSITIES]
            assert col == sorted(col), (u, b)


def test_batch_matters_up_to_the_cap_and_intensity_through_the_tail() -> None:
    # the wait behind a stretch grows with the batch until the stretch reaches its cap
    knee = math.ceil(LC_STRETCH_CAP / LC_STRETCH_PER_SAMPLE)
    assert law(1, 1.0, 0.05) < law(knee // 2, 1.0, 0.05) < law(knee, 1.0, 0.05)
    assert law(knee, 1.0, 0.05) == law(10 * knee, 1.0, 0.05)
    # the p95 meets a stretch less often at a low intensity; at 5 % or less not at all
    assert law(knee, 0.25, 0.05) < law(knee, 1.0, 0.05)
    assert law(knee, 0.05, 0.05) == law(1, 0.01, 0.05) == 20.0
    # a SCHED_IDLE trainer gets at most what the app leaves: a saturated app never waits
    assert law(knee, 1.0, 0.97) == 20.0


def test_contention_raises_the_apps_own_queueing_with_its_load() -> None:
    def ratio(u: float) -> float:
        return law(1, 1.0, u, contention=0.8) / law(0, 1.0, u)

    assert ratio(0.05) < ratio(0.3) < ratio(0.5) < math.inf  # 1/(1 − ρ), ρ = u(1 + κc)
    assert ratio(0.6) == ratio(0.9) == math.inf  # ρ ≥ 0.98: the app's queue is unstable


def test_queueing_bound_is_lc_p95_ms() -> None:
    for u, c, b in itertools.product(LOADS, INTENSITIES, BATCHES):
        expected = lc_p95_ms(b, c, solo_p95_ms=12.0, app_load=u, per_sample_ms=7.0)
        assert queueing_bound(u, 12.0, 0.007)(b, c) == pytest.approx(expected, rel=1e-12)


def test_constants_agree_with_the_latest_calibration() -> None:
    """Each constant inside the calibration's bootstrap interval, and the fit at them no
    more than 0.02 rms log worse than at the best fit: a recalibration that moves a weakly
    pinned constant within its noise need not churn every model built on it."""
    calibration = json.loads(CALIBRATION.read_text())
    ours = {"kappa": LC_CONTENTION, "phi": LC_STRETCH_PER_SAMPLE, "Q": LC_STRETCH_CAP}
    for name, value in ours.items():
        lo, hi = calibration["bootstrap"]["intervals"][name]
        assert lo - 1e-3 <= value <= hi + 1e-3, (name, value, lo, hi)
    assert calibration["in_use"]["constants"] == pytest.approx(ours)
    assert (
        calibration["in_use"]["in_sample"]["rms_log"] <= calibration["fit_error"]["rms_log"] + 0.02
    )


def sim_device(load: float, solo: float, slack: float, per_sample_s: float = 0.010) -> SimDevice:
    return SimDevice("d", "rpi4", 0.02, per_sample_s, load, solo, solo * slack, 500.0, 4096)


def caps(device: SimDevice, global_batch: int = 256) -> dict[float, int]:
    (option,) = build_problem([device], global_batch).devices
    return {level.intensity: level.cap for level in option.levels}


def test_full_intensity_allowed_with_low_load_and_slack_forbidden_when_loaded_and_tight() -> None:
    generous = caps(sim_device(load=0.05, solo=20.0, slack=6.0))
    assert generous[1.0] == 256  # not even throttled
    tight = build_problem([sim_device(load=0.5, solo=40.0, slack=1.05)], 256).devices[0]
    assert {level.cap for level in tight.levels} == {0}
    assert not tight.usable
    assert "deadline" in (tight.excluded_reason or "")


def test_the_cap_depends_on_the_batch() -> None:
    # deadline between the bound at 1 sample and at the stretch's cap: the cap is the
    # batch where the growing stretch meets the deadline, and it grows with the deadline
    got = {}
    for slack in (1.2, 1.3, 1.5):
        d = sim_device(load=0.05, solo=20.0, slack=slack)
        limit = d.deadline_ms * 0.95
        per_sample_ms = d.per_sample_s * 1e3
        share = 1.0 - 0.05 / min(1.0, 1.0 - d.app_load)
        expected = math.floor(
            (limit - d.solo_p95_ms) / (share * LC_STRETCH_PER_SAMPLE * per_sample_ms) + 1e-9
        )
        c = caps(d)
        assert 1 <= c[1.0] < 256
        assert c[1.0] == expected
        assert c[0.25] >= c[1.0]  # the tail meets a stretch less often at low intensity
        got[slack] = c[1.0]
    assert got[1.2] < got[1.3] < got[1.5]
