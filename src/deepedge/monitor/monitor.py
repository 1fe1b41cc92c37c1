"""The monitor: one background thread sampling every source at a fixed interval.

One thread, not one per sampler: sampling is a handful of cheap reads, and a single
thread makes the monitor's own cost measurable with ``time.thread_time()`` — on an edge
device the monitor competes for the same CPU as the LC apps it watches, so its
overhead is reported (:meth:`Monitor.overhead`) rather than assumed small.

A sampler that fails is dropped and reported once (a log warning and
:attr:`Monitor.unavailable`), never retried every tick: a missing GPU does not come back,
and a warning per second would drown the ones that matter.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from deepedge.apps.stats import RequestRecord
from deepedge.cluster.api import DeviceHandle
from deepedge.errors import MonitorError
from deepedge.monitor.samplers import (
    DeviceSampler,
    HostSampler,
    LcLatencySampler,
    NvmlSampler,
    ProcessSampler,
    Sampler,
    SamplerUnavailable,
    TegrastatsSampler,
)
from deepedge.monitor.samples import Labels, Sample
from deepedge.monitor.store import TimeSeriesStore
from deepedge.spec import AppSpec

__all__ = ["Monitor", "build_samplers", "default_samplers"]

log = logging.getLogger(__name__)

_STALE_TICKS = 3  # a series not refreshed for this many intervals leaves latest()


def build_samplers(
    factories: Mapping[str, Callable[[], Sampler]],
) -> tuple[list[Sampler], dict[str, str]]:
    """Construct each sampler; those raising :class:`SamplerUnavailable` are left out.

    Returns the samplers and ``{name: reason}`` for the unavailable ones, to be passed
    to :class:`Monitor` (``unavailable=``) which reports them.
    """
    samplers: list[Sampler] = []
    unavailable: dict[str, str] = {}
    for name, factory in factories.items():
        try:
            samplers.append(factory())
        except SamplerUnavailable as err:
            unavailable[name] = str(err)
    return samplers, unavailable


def default_samplers(
    devices: Mapping[str, DeviceHandle],
    *,
    lc_drain: Callable[[], Sequence[RequestRecord]] | None = None,
    apps: Sequence[AppSpec] = (),
    lc_window_s: float = 5.0,
) -> tuple[list[Sampler], dict[str, str]]:
    """Every sampler deepedge knows, minus those this machine cannot run (with reasons)."""
    factories: dict[str, Callable[[], Sampler]] = {
        "host": HostSampler,
        "devices": lambda: DeviceSampler(devices),
        "processes": lambda: ProcessSampler(devices),
        "nvml": NvmlSampler,
        "tegrastats": TegrastatsSampler,
    }
    if lc_drain is not None:
        factories["lc_latency"] = lambda: LcLatencySampler(lc_drain, apps, lc_window_s)
    return build_samplers(factories)


class Monitor:
    """Samples every ``interval_s`` into ``store`` (if any) and keeps the latest values.

    Use as a context manager, or :meth:`start`/:meth:`stop`; :meth:`tick` runs one round
    synchronously (tests, or a caller with its own loop). The monitor owns its samplers:
    :meth:`stop` closes those that have a ``close()``, but never the store, which the
    caller opened and may still read.
    """

    def __init__(
        self,
        samplers: Sequence[Sampler],
        *,
        store: TimeSeriesStore | None = None,
        interval_s: float = 1.0,
        unavailable: Mapping[str, str] | None = None,
        on_unavailable: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_unavailable(sampler, reason)`` hears of each sampler that is off, once
        (default: a logged warning)."""
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.store = store
        self.unavailable: dict[str, str] = {}
        self.store_error: str | None = None
        self._samplers = list(samplers)
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, Labels], Sample] = {}
        self._cpu_s = 0.0
        self._created = time.perf_counter()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopped: float | None = None
        self._on_unavailable = on_unavailable or (
            lambda name, reason: log.warning("monitor: %s sampler off: %s", name, reason)
        )
        for name, reason in (unavailable or {}).items():
            self._report(name, reason)

    # ----------------------------------------------------------------- sampling

    def _report(self, name: str, reason: str) -> None:
        self.unavailable[name] = reason
        self._on_unavailable(name, reason)

    def _drop(self, sampler: Sampler, reason: str) -> None:
        self._samplers.remove(sampler)
        self._report(sampler.name, reason)
        close = getattr(sampler, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()

    def _sample_all(self, now: float) -> list[Sample]:
        samples: list[Sample] = []
        for sampler in list(self._samplers):
            try:
                samples.extend(sampler.sample(now))
            except SamplerUnavailable as err:
                self._drop(sampler, str(err))
            except Exception as err:  # a buggy source must not stop the others
                log.debug("sampler %s failed", sampler.name, exc_info=True)
                self._drop(sampler, f"{type(err).__name__}: {err}")
        return samples

    def _write(self, samples: list[Sample]) -> None:
        if self.store is None:
            return
        try:
            self.store.write(samples)
            self.store_error = None
        except MonitorError as err:  # e.g. locked too long by the profiler: keep sampling
            if str(err) != self.store_error:
                log.warning("monitor: %s", err.one_line())
            self.store_error = str(err)

    def tick(self, now: float | None = None) -> list[Sample]:
        """One round: sample everything, store it, update :meth:`latest`; returns the samples.

        The monitor's own metrics go out with the round's samples; the CPU time of this
        round's store write is counted in the next round's counter.
        """
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        now = time.time() if now is None else now
        samples = self._sample_all(now)
        cpu_s = self._cpu_s + (time.thread_time() - cpu0)
        samples += [
            Sample.of("deepedge_monitor_cpu_seconds_total", cpu_s, now),
            Sample.of("deepedge_monitor_tick_duration_seconds", time.perf_counter() - wall0, now),
            Sample.of("deepedge_monitor_samplers", len(self._samplers), now),
        ]
        self._remember(samples, now)
        self._write(samples)
        with self._lock:
            self._cpu_s += time.thread_time() - cpu0
        return samples

    def _remember(self, samples: list[Sample], now: float) -> None:
        horizon = now - _STALE_TICKS * self.interval_s
        with self._lock:
            for s in samples:
                self._latest[s.key] = s
            # exited processes and dropped samplers must not linger in the exporter
            for key in [k for k, s in self._latest.items() if s.ts < horizon]:
                del self._latest[key]

    # ------------------------------------------------------------------ reading

    def latest(self) -> list[Sample]:
        """The last sample of every live series (a snapshot; safe from any thread)."""
        with self._lock:
            return list(self._latest.values())

    def overhead(self) -> float:
        """The monitor's CPU use: its CPU seconds per wall second since it was created.

        A fraction of one core (0.01 = 1 %). Counts the sampling thread only, not
        tegrastats's reader thread (which sleeps on a pipe) nor scrapes of the exporter.
        """
        wall = (self._stopped or time.perf_counter()) - self._created  # frozen once stopped
        with self._lock:
            cpu = self._cpu_s
        return cpu / wall if wall > 0 else 0.0

    @property
    def samplers(self) -> list[str]:
        """Names of the samplers still running."""
        return [s.name for s in self._samplers]

    # ---------------------------------------------------------------- lifecycle

    def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            try:
                self.tick()
            except Exception:  # never let the thread die silently
                log.exception("monitor tick failed")
            next_at += self.interval_s
            late = time.monotonic() - next_at
            if late > 0:  # a slow tick: skip the rounds missed instead of bursting
                next_at += math.ceil(late / self.interval_s) * self.interval_s
            if self._stop_event.wait(next_at - time.monotonic()):
                return

    def start(self) -> Monitor:
        """Start the sampling thread (the first round runs at once). Idempotent.

        A stopped monitor has closed its samplers and cannot be started again.
        """
        if self._closed:
            raise RuntimeError("a stopped Monitor cannot be restarted; build a new one")
        if self._thread is None:
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._run, name="deepedge-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread, wait for it, and close the samplers. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop_event.set()
            thread.join()
        if self._closed:
            return
        self._closed = True
        self._stopped = time.perf_counter()
        for sampler in self._samplers:
            close = getattr(sampler, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
