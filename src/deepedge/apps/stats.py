"""LC request records and their statistics: percentiles, misses and SLO-violating windows.

Records are what the load generator produces (stored as compact ``.npz`` while in
flight between processes); everything here is pure and cheap to import.

The SLO of an app is "p95 latency ≤ deadline". A failed request (refused, reset, timed
out) was not served in time, so everywhere here it counts as an *infinite* latency: it is
a miss, and it pushes percentiles up (to ``inf`` once failures reach the tail). Leaving
failures out would let a dead server report a healthy p95. Percentiles use numpy's
default (linear) interpolation, computed by hand so infinities do not turn into NaN.

Records are sliced by *scheduled* time, the time the request should have been sent
(the open-loop generator measures latency from it), so a phase's requests are the ones
its load asked for, however late they completed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "AppLatencyStats",
    "RequestRecord",
    "latency_summary",
    "load_records",
    "rows_to_records",
    "save_records",
    "summarize_apps",
]


class RequestRecord(NamedTuple):
    """One request. Times are ``time.time()`` seconds so callers can slice by phase.

    ``latency_ms`` is ``done_s - scheduled_s``. ``sent_s`` is NaN when no connection could
    be had; for a failure ``done_s`` is when it failed. ``service_ms`` is the server-side
    inference time (NaN on failure), so queueing = latency - service.
    """

    app: str
    scheduled_s: float
    sent_s: float
    done_s: float
    latency_ms: float
    ok: bool
    error: str | None
    service_ms: float = math.nan


def save_records(
    path: Path, apps: Sequence[str], errors: Sequence[str], rows: Iterable[float]
) -> None:
    """Write flat rows of (app index, scheduled, sent, done, service_ms, error index or -1)
    as the ``.npz`` :func:`load_records` reads, sorted by scheduled time, atomically."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 6)
    a = a[np.argsort(a[:, 1], kind="stable")]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        apps=np.array(list(apps), dtype=str),
        errors=np.array(list(errors), dtype=str),
        app=a[:, 0].astype(np.int16),
        scheduled=a[:, 1],
        sent=a[:, 2],
        done=a[:, 3],
        service=a[:, 4],
        err=a[:, 5].astype(np.int32),
    )
    os.replace(tmp, path)


def load_records(path: Path) -> list[RequestRecord]:
    """Read a :func:`save_records` file (the load generator's output) into records."""
    with np.load(path, allow_pickle=False) as z:
        apps = [str(a) for a in z["apps"]]
        errors = [str(e) for e in z["errors"]]
        sched, sent, done, svc = (z[k].tolist() for k in ("scheduled", "sent", "done", "service"))
        app_idx, err = z["app"].tolist(), z["err"].tolist()
    rows = zip(app_idx, sched, sent, done, err, svc, strict=True)
    return [_record(apps, errors, a, s, se, d, e, sv) for a, s, se, d, e, sv in rows]


def rows_to_records(
    apps: Sequence[str], errors: Sequence[str], flat: Sequence[float]
) -> list[RequestRecord]:
    """Flat rows of (app index, scheduled, sent, done, service_ms, error index or -1)."""
    return [
        _record(apps, errors, int(flat[i]), *flat[i + 1 : i + 4], int(flat[i + 5]), flat[i + 4])
        for i in range(0, len(flat), 6)
    ]


def _record(
    apps: Sequence[str],
    errors: Sequence[str],
    a: int,
    s: float,
    se: float,
    d: float,
    e: int,
    sv: float,
) -> RequestRecord:
    return RequestRecord(
        apps[a], s, se, d, (d - s) * 1000.0, e < 0, errors[e] if e >= 0 else None, sv
    )


@dataclass(frozen=True)
class AppLatencyStats:
    """Latency summary of one app over one time slice.

    With no requests in the slice, ``requests`` is 0 and the percentiles and
    ``miss_rate`` are NaN (nothing was measured, which is not the same as 0 ms or no
    misses); ``windows`` and ``slo_window_violations`` are 0. A percentile is ``inf``
    when failed requests reach that tail.
    """

    requests: int
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    miss_rate: float
    windows: int
    slo_window_violations: int
    deadline_ms: float
    window_s: float
    worst_window_p95_ms: float = math.nan
    """The highest p95 of any window: by how much the worst window missed its deadline."""

    @property
    def slo_met(self) -> bool:
        """p95 within the deadline (False when nothing was measured)."""
        return self.requests > 0 and self.p95_ms <= self.deadline_ms

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON/CSV reports (NaN/inf stay floats: ``json`` writes them)."""
        return asdict(self)


def _group_percentile(
    vals: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float
) -> np.ndarray:
    """The ``q``-th percentile of each group ``vals[start:start+count]`` (each sorted).

    Same as ``np.percentile(..., method="linear")`` but ``inf`` values give ``inf``
    instead of the NaN numpy's interpolation yields for ``inf - inf``.
    """
    h = (counts - 1) * (q / 100.0)
    lo = np.floor(h).astype(np.int64)
    frac = h - lo
    hi = np.minimum(lo + 1, counts - 1)
    a, b = vals[starts + lo], vals[starts + hi]
    with np.errstate(invalid="ignore"):
        out = a + (b - a) * frac
    out = np.where(frac == 0, a, out)
    return np.where(np.isinf(b) & (frac > 0), np.inf, out)  # sorted, so inf a => inf b


def latency_summary(
    records: Iterable[RequestRecord],
    *,
    deadline_ms: float,
    start_s: float | None = None,
    end_s: float | None = None,
    window_s: float = 1.0,
    app: str | None = None,
) -> AppLatencyStats:
    """Summarise ``records`` scheduled in ``[start_s, end_s)`` (either end open if None).

    ``app`` keeps only that app's records (a generator may drive several apps).
    ``miss_rate`` is the share of requests slower than ``deadline_ms`` or failed.
    ``slo_window_violations`` counts the ``window_s`` windows, by scheduled time and
    aligned to ``start_s`` (or the first request), whose p95 exceeds ``deadline_ms``;
    ``windows`` is how many windows had requests (empty ones are skipped).
    """
    if not deadline_ms > 0:
        raise ValueError(f"deadline_ms must be positive, got {deadline_ms}")
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    recs: Sequence[RequestRecord] = [r for r in records if app is None or r.app == app]
    sched = np.fromiter((r.scheduled_s for r in recs), dtype=np.float64, count=len(recs))
    ok = np.fromiter((r.ok for r in recs), dtype=bool, count=len(recs))
    lat = np.fromiter((r.latency_ms for r in recs), dtype=np.float64, count=len(recs))
    keep = np.ones(len(recs), dtype=bool)
    if start_s is not None:
        keep &= sched >= start_s
    if end_s is not None:
        keep &= sched < end_s
    sched, ok, lat = sched[keep], ok[keep], lat[keep]
    # A failure, or an "ok" record without a usable latency, was not served in time.
    eff = np.where(ok & np.isfinite(lat), lat, np.inf)
    n = int(eff.size)
    if n == 0:
        nan = math.nan
        return AppLatencyStats(0, 0, nan, nan, nan, nan, 0, 0, float(deadline_ms), float(window_s))

    srt = np.sort(eff)
    one = np.zeros(1, dtype=np.int64)
    p50, p95, p99 = (float(_group_percentile(srt, one, one + n, q)[0]) for q in (50, 95, 99))
    miss_rate = float(np.count_nonzero(eff > deadline_ms)) / n

    origin = start_s if start_s is not None else float(sched.min())
    win = np.floor((sched - origin) / window_s).astype(np.int64)
    order = np.lexsort((eff, win))  # by window, then latency within it
    _, starts, counts = np.unique(win[order], return_index=True, return_counts=True)
    win_p95 = _group_percentile(eff[order], starts, counts, 95)
    return AppLatencyStats(
        requests=n,
        failed=int(np.count_nonzero(~ok)),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        miss_rate=miss_rate,
        windows=int(counts.size),
        slo_window_violations=int(np.count_nonzero(win_p95 > deadline_ms)),
        deadline_ms=float(deadline_ms),
        window_s=float(window_s),
        worst_window_p95_ms=float(win_p95.max()),
    )


def summarize_apps(
    records: Iterable[RequestRecord],
    deadlines_ms: Mapping[str, float],
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    window_s: float = 1.0,
) -> dict[str, AppLatencyStats]:
    """:func:`latency_summary` for each app in ``deadlines_ms`` (app name -> deadline)."""
    recs = list(records)
    return {
        name: latency_summary(
            recs, deadline_ms=d, start_s=start_s, end_s=end_s, window_s=window_s, app=name
        )
        for name, d in deadlines_ms.items()
    }
