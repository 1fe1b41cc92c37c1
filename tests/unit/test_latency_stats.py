"""Latency statistics on constructed records: no processes, no clocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepedge.apps import RequestRecord, latency_summary, summarize_apps

T0 = 1_700_000_000.0


def rec(sched: float, latency_ms: float, *, ok: bool = True, app: str = "cam") -> RequestRecord:
    done = sched + latency_ms / 1000.0
    return RequestRecord(
        app,
        sched,
        sched,
        done,
        latency_ms,
        ok,
        None if ok else "ConnectionResetError",
        1.0 if ok else math.nan,
    )


def test_percentiles_match_numpy_when_all_ok() -> None:
    lats = np.random.default_rng(0).gamma(2.0, 5.0, 500)
    recs = [rec(T0 + i * 0.01, float(x)) for i, x in enumerate(lats)]
    s = latency_summary(recs, deadline_ms=1e9)
    assert s.requests == 500 and s.failed == 0
    for got, q in ((s.p50_ms, 50), (s.p95_ms, 95), (s.p99_ms, 99)):
        assert got == pytest.approx(float(np.percentile(lats, q)), rel=1e-12)
    assert s.miss_rate == 0.0


def test_miss_rate_counts_failures_and_strictly_late_requests() -> None:
    # 10 requests: 6 on time, 1 exactly at the deadline (not a miss), 2 late, 1 failed.
    lats = [1, 2, 3, 4, 5, 6, 20, 21, 22]
    recs = [rec(T0 + i, x) for i, x in enumerate(lats)] + [rec(T0 + 9, 0.5, ok=False)]
    s = latency_summary(recs, deadline_ms=20)
    assert s.requests == 10 and s.failed == 1
    assert s.miss_rate == pytest.approx(0.3)


def test_failures_count_as_infinite_latency_in_the_tail() -> None:
    recs = [rec(T0 + i * 0.01, 1.0) for i in range(90)]
    recs += [rec(T0 + 1 + i * 0.01, 0.1, ok=False) for i in range(10)]  # fast failures
    s = latency_summary(recs, deadline_ms=10)
    assert s.p50_ms == 1.0
    assert s.p95_ms == math.inf and s.p99_ms == math.inf  # never NaN
    assert not s.slo_met


def test_exactly_k_windows_violate() -> None:
    deadline, per_window = 10.0, 20
    violating = {1, 4, 7}
    recs = []
    for w in range(10):
        if w == 5:
            continue  # an empty window: skipped, not counted
        for j in range(per_window):
            slow = w in violating and j < 3  # 3/20 over the deadline -> p95 over it
            recs.append(rec(T0 + w + j / per_window, 50.0 if slow else 2.0))
    # A window whose p95 is blown by failures alone also violates.
    recs += [rec(T0 + 10 + j / per_window, 2.0, ok=j >= 3) for j in range(per_window)]
    s = latency_summary(recs, deadline_ms=deadline, start_s=T0, window_s=1.0)
    assert s.windows == 10
    assert s.slo_window_violations == len(violating) + 1
    assert s.worst_window_p95_ms == math.inf  # the window with failures in its tail
    calm = latency_summary(recs[:per_window], deadline_ms=deadline, start_s=T0)
    assert calm.worst_window_p95_ms == 2.0 and calm.p95_ms == 2.0


def test_one_slow_request_in_a_window_does_not_violate() -> None:
    # 1 of 40 over the deadline is 2.5% < 5%: the window's p95 stays within it.
    recs = [rec(T0 + j / 40, 60.0 if j == 0 else 2.0) for j in range(40)]
    s = latency_summary(recs, deadline_ms=10)
    assert s.windows == 1 and s.slo_window_violations == 0 and s.miss_rate == 1 / 40


def test_slicing_by_scheduled_time_is_half_open_and_aligns_windows() -> None:
    recs = [rec(T0 + i * 0.5, 100.0 if i >= 4 else 1.0) for i in range(8)]  # T0 .. T0+3.5
    s = latency_summary(recs, deadline_ms=10, start_s=T0 + 1.0, end_s=T0 + 2.0)
    assert s.requests == 2 and s.miss_rate == 0.0  # T0+1.0, T0+1.5; T0+2.0 excluded
    s = latency_summary(recs, deadline_ms=10, start_s=T0 + 0.5, window_s=1.0)
    # windows [0.5,1.5) [1.5,2.5) [2.5,3.5) [3.5,4.5): the last three hold slow requests
    assert s.windows == 4 and s.slo_window_violations == 3


def test_empty_input_gives_nan_stats_not_an_error() -> None:
    for s in (
        latency_summary([], deadline_ms=10),
        latency_summary([rec(T0, 1.0)], deadline_ms=10, start_s=T0 + 1),
    ):
        assert s.requests == 0 and s.failed == 0
        assert math.isnan(s.p50_ms) and math.isnan(s.p95_ms) and math.isnan(s.p99_ms)
        assert math.isnan(s.miss_rate)
        assert s.windows == 0 and s.slo_window_violations == 0
        assert not s.slo_met


def test_app_filter_and_summarize_apps() -> None:
    recs = [rec(T0 + i, 5.0, app="a") for i in range(4)] + [
        rec(T0 + i, 50.0, app="b") for i in range(6)
    ]
    by_app = summarize_apps(recs, {"a": 10.0, "b": 10.0})
    assert by_app["a"].requests == 4 and by_app["a"].miss_rate == 0.0
    assert by_app["b"].requests == 6 and by_app["b"].miss_rate == 1.0
    assert latency_summary(recs, deadline_ms=10, app="missing").requests == 0
    d = by_app["a"].to_dict()
    assert (
        d["requests"] == 4
        and d["deadline_ms"] == 10.0
        and set(d)
        >= {"failed", "p50_ms", "p95_ms", "p99_ms", "miss_rate", "windows", "slo_window_violations"}
    )


@pytest.mark.parametrize("kwargs", [{"deadline_ms": 0}, {"deadline_ms": 5, "window_s": 0}])
def test_bad_arguments_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        latency_summary([rec(T0, 1.0)], **kwargs)


samples = st.lists(
    st.tuples(
        st.floats(0, 10, allow_nan=False),  # scheduled offset, s
        st.floats(0.01, 500, allow_nan=False),  # latency, ms
        st.booleans(),
    ),  # ok
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(samples, st.floats(0.1, 400), st.floats(0.1, 400))
def test_miss_rate_bounded_and_monotone_in_deadline(data, d1: float, d2: float) -> None:
    recs = [rec(T0 + t, lat, ok=ok) for t, lat, ok in data]
    lo, hi = sorted((d1, d2))
    s_lo, s_hi = (latency_summary(recs, deadline_ms=d) for d in (lo, hi))
    assert 0.0 <= s_hi.miss_rate <= s_lo.miss_rate <= 1.0
    assert s_hi.slo_window_violations <= s_lo.slo_window_violations <= s_lo.windows
    assert s_lo.p50_ms <= s_lo.p95_ms <= s_lo.p99_ms  # inf allowed, NaN never
    assert s_lo.requests == len(recs) and s_lo.failed == sum(not ok for *_, ok in data)
    assert s_lo.miss_rate >= s_lo.failed / s_lo.requests
