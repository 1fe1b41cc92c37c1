"""Request-rate traces for serving: the bundled bikeshare workload and user CSVs.

A :class:`RateTrace` is a piecewise-constant arrival rate (requests per second, one value
per interval). Replaying it means compressing time (a trace hour becomes seconds of
wall time), scaling the rate to the emulated cluster's capacity, and drawing open-loop
Poisson arrivals, so the load generator never waits for replies (no coordinated omission).
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from deepedge.errors import DataError

__all__ = [
    "BIKESHARE",
    "BIKESHARE_SOURCE",
    "RateTrace",
    "load_bikeshare",
    "load_hourly",
    "load_trace",
]

BIKESHARE = "bikeshare"
"""The name that stands for the bundled trace where a trace path is asked for."""

BIKESHARE_SOURCE = (
    "Capital Bikeshare 2011 hourly rentals, UCI Bike Sharing Dataset (Fanaee-T & Gama 2013), "
    "CC BY 4.0"
)
_HOUR_S = 3600.0


@dataclass(frozen=True)
class RateTrace:
    """Arrival rate per interval: ``rates[i]`` requests/s during
    ``[i * interval_s, (i + 1) * interval_s)``.

    ``filled`` counts intervals the source lacked and the loader filled in, so a user can
    judge how much of the trace is real.
    """

    rates: np.ndarray
    interval_s: float
    name: str
    source: str
    filled: int = 0

    def __post_init__(self) -> None:
        rates = np.asarray(self.rates, dtype=float)
        if rates.ndim != 1 or rates.size == 0:
            raise DataError(f"trace {self.name}: rates must be a non-empty 1-D array")
        if not np.all(np.isfinite(rates)) or np.any(rates < 0):
            raise DataError(f"trace {self.name}: rates must be finite and non-negative")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise DataError(f"trace {self.name}: interval_s must be positive")
        object.__setattr__(self, "rates", rates)

    def __len__(self) -> int:
        return int(self.rates.size)

    @property
    def duration_s(self) -> float:
        return len(self) * self.interval_s

    @property
    def counts(self) -> np.ndarray:
        """Expected requests per interval (for bikeshare: rentals per hour), the natural unit
        to forecast and plot in."""
        return self.rates * self.interval_s

    def compressed(self, hour_s: float) -> RateTrace:
        """Replay faster: one trace hour takes ``hour_s`` seconds. The requests of each
        interval are kept (the rate grows by ``3600 / hour_s``), so the shape and the total
        are the trace's own; :meth:`scaled` then fits the peak to the cluster."""
        if not (math.isfinite(hour_s) and hour_s > 0):
            raise DataError(f"hour_s must be positive, got {hour_s}")
        factor = _HOUR_S / hour_s
        return replace(self, rates=self.rates * factor, interval_s=self.interval_s / factor)

    def scaled(self, peak_rps: float) -> RateTrace:
        """Scale the rates so that the busiest interval asks for ``peak_rps`` requests/s:
        the cluster's capacity decides the load, the trace only its shape over time."""
        if not (math.isfinite(peak_rps) and peak_rps > 0):
            raise DataError(f"peak_rps must be positive, got {peak_rps}")
        peak = float(self.rates.max())
        if peak <= 0:
            raise DataError(f"trace {self.name} has no requests at all; it cannot be scaled")
        return replace(self, rates=self.rates * (peak_rps / peak))

    @functools.cached_property
    def peak_rps(self) -> float:
        """The busiest interval's rate (cached: spec validation asks it once per app)."""
        return float(self.rates.max())

    def hourly(self) -> RateTrace:
        """The trace on a grid of whole hours: each hour's mean rate, the requests of its
        intervals (or parts of them) divided by 3600 s; a trailing part-hour is dropped.

        Forecasters model hours (daily and weekly seasons), and an LC app's trace is
        replayed and planned hour by hour, so a user's trace of any interval comes here
        first. Exact for a piecewise-constant rate: the cumulative count is linear within
        an interval, so interpolating it at the hour edges integrates the rate.
        """
        if self.interval_s == _HOUR_S:
            return self
        n_hours = int(self.duration_s // _HOUR_S)
        if n_hours < 1:
            raise DataError(
                f"trace {self.name} lasts {self.duration_s:g} s, less than an hour",
                hint="an LC app's trace is replayed and forecast by the hour",
            )
        edges = np.arange(len(self) + 1) * self.interval_s
        cumulative = np.concatenate([[0.0], np.cumsum(self.counts)])
        at_hours = np.interp(np.arange(n_hours + 1) * _HOUR_S, edges, cumulative)
        rates = np.maximum(np.diff(at_hours), 0.0) / _HOUR_S  # rounding: never below 0
        return replace(self, rates=rates, interval_s=_HOUR_S)

    def schedule(
        self, start_hour: int, hours: int, hour_s: float
    ) -> tuple[tuple[float, float], ...]:
        """The trace's ``hours`` hours from ``start_hour`` as a load generator's
        piecewise-constant schedule: ``(offset s from the replay's start, rate rps)`` pairs,
        the first at offset 0, one trace hour lasting ``hour_s`` seconds of wall time.

        The rates are the trace's own: scale them first (:meth:`scaled`) to what the
        emulated cluster can take. Unlike :meth:`compressed`, compressing time here keeps
        the rates rather than the request counts: an LC app's replay is sized by its
        ``peak_rps``, not by the trace's totals. Consecutive equal rates are merged (night
        hours without requests), so the schedule stays short; a run past its end keeps its
        last rate. Rates are rounded to 6 significant digits (the schedule is sent as text).
        """
        if not (math.isfinite(hour_s) and hour_s > 0):
            raise DataError(f"hour_s must be positive, got {hour_s}")
        start_s = float(start_hour) * _HOUR_S
        end_s = min(start_s + hours * _HOUR_S, self.duration_s)
        if start_hour < 0 or hours < 1 or start_s >= self.duration_s:
            raise DataError(
                f"trace {self.name}: no hours to replay from hour {start_hour} "
                f"({hours} asked, the trace has {self.duration_s / _HOUR_S:g})"
            )
        first = int(start_s // self.interval_s)
        last = math.ceil(end_s / self.interval_s)
        factor = hour_s / _HOUR_S
        out: list[tuple[float, float]] = []
        for i in range(first, last):
            offset = max(0.0, i * self.interval_s - start_s) * factor
            rate = float(f"{self.rates[i]:.6g}")
            if not out or rate != out[-1][1]:
                out.append((offset, rate))
        return tuple(out)

    def poisson_arrivals(
        self, seed: int, start: float | None = None, end: float | None = None
    ) -> np.ndarray:
        """Sorted open-loop arrival times (s, trace time) in ``[start, end)``.

        Within each interval arrivals are a homogeneous Poisson process at that interval's
        rate: the count is Poisson(rate x overlap) and the times uniform over the overlap,
        which is exact for a piecewise-constant rate and needs no thinning.
        """
        lo = 0.0 if start is None else float(start)
        hi = self.duration_s if end is None else min(float(end), self.duration_s)
        if hi <= lo:
            return np.empty(0)
        edges = np.arange(len(self) + 1) * self.interval_s
        a = np.clip(edges[:-1], lo, hi)
        b = np.clip(edges[1:], lo, hi)
        width = b - a
        rng = np.random.default_rng(seed)
        n = rng.poisson(self.rates * width)
        times = np.repeat(a, n) + rng.random(int(n.sum())) * np.repeat(width, n)
        times.sort()
        return times


def load_bikeshare() -> RateTrace:
    """The bundled Capital Bikeshare 2011 trace: ``bikers`` per hour as requests/s on a
    regular hourly grid, index ``(day - 1) * 24 + hr``.

    The file lacks 115 of the 8,760 hours. Nearly all are single night hours (2-5 am) with
    no rental, and three runs are system closures (17 Jan, the 26 Jan blizzard, Hurricane
    Irene on 27 Aug). A missing hour is therefore filled with 0 requests: that is what the
    service would have received, and interpolation would invent load during closures.
    """
    ref = resources.files("deepedge.serving").joinpath("data/bikeshare.csv")
    with resources.as_file(ref) as path:
        return _read_bikeshare(Path(path))


def load_hourly(source: str | Path) -> RateTrace:
    """The trace ``source`` names on an hourly grid (:meth:`RateTrace.hourly`):
    :data:`BIKESHARE` for the bundled one, else a CSV as :func:`load_trace` reads it (a
    column of timestamps is counted per hour).

    Cached per file and its modification time, so that validating a cluster spec whose
    100,000 apps replay one trace reads it once, and an edited file is read again.
    """
    if str(source) == BIKESHARE:
        return _cached_hourly(BIKESHARE, None)
    path = Path(source).expanduser()
    try:
        stat = path.stat()
    except OSError as err:
        raise DataError(
            f"cannot read trace {path}: {err.strerror or err}",
            hint=f"give a CSV with columns t,rate or one column of timestamps, or {BIKESHARE!r}",
        ) from None
    return _cached_hourly(str(path.resolve()), (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _cached_hourly(source: str, stamp: tuple[int, int] | None) -> RateTrace:
    """``stamp`` (mtime, size) is only part of the cache key: a changed file misses."""
    if source == BIKESHARE:
        return load_bikeshare()
    return load_trace(source, bin_s=_HOUR_S).hourly()


def _read_bikeshare(path: Path) -> RateTrace:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        day = np.array([int(r["day"]) for r in rows])
        hr = np.array([int(r["hr"]) for r in rows])
        bikers = np.array([float(r["bikers"]) for r in rows])
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"cannot read the bikeshare trace {path}: {err}") from err
    n_hours = int(day.max()) * 24
    counts = np.zeros(n_hours)
    idx = (day - 1) * 24 + hr
    counts[idx] = bikers
    return RateTrace(
        rates=counts / _HOUR_S,
        interval_s=_HOUR_S,
        name="bikeshare",
        source=BIKESHARE_SOURCE,
        filled=n_hours - len(np.unique(idx)),
    )


def load_trace(path: str | Path, *, bin_s: float = 1.0) -> RateTrace:
    """A user trace from CSV, in one of two shapes (a header row is required):

    - columns ``t,rate``: interval start times in seconds (evenly spaced) and requests/s;
    - one column of request timestamps in seconds: binned into ``bin_s`` intervals, so the
      rate is the count per bin divided by ``bin_s``.
    """
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as err:
        raise DataError(
            f"cannot read trace {path}: {err.strerror or err}",
            hint="give a CSV with columns t,rate or one column of timestamps",
        ) from err
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DataError(f"trace {path} has no data rows", hint="a header row, then data")
    header = [c.strip().lower() for c in rows[0]]
    body = rows[1:]

    def column(i: int) -> np.ndarray:
        try:
            values = np.array([float(r[i]) for r in body])
        except (IndexError, ValueError) as err:
            raise DataError(
                f"trace {path}: column {header[i]!r} is not numeric on every row ({err})"
            ) from err
        if not np.all(np.isfinite(values)):
            raise DataError(f"trace {path}: column {header[i]!r} has non-finite values")
        return values

    if "t" in header and "rate" in header:
        t, rate = column(header.index("t")), column(header.index("rate"))
        if len(t) < 2:
            raise DataError(f"trace {path}: a t,rate trace needs at least two rows")
        step = np.diff(t)
        if np.any(step <= 0) or not np.allclose(step, step[0], rtol=1e-6, atol=1e-9):
            raise DataError(f"trace {path}: t must increase in even steps")
        if np.any(rate < 0):
            raise DataError(f"trace {path}: rate must be non-negative")
        return RateTrace(rate, float(step[0]), path.stem, str(path))
    if len(header) == 1:
        if not (math.isfinite(bin_s) and bin_s > 0):
            raise DataError(f"bin_s must be positive, got {bin_s}")
        stamps = column(0)
        rel = stamps - stamps.min()
        n_bins = int(rel.max() // bin_s) + 1
        counts = np.bincount((rel // bin_s).astype(int), minlength=n_bins)
        return RateTrace(counts / bin_s, float(bin_s), path.stem, str(path))
    raise DataError(
        f"trace {path}: columns {','.join(header)} are neither t,rate nor one timestamp column"
    )
