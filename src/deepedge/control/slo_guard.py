"""The SLO guard: a closed loop from each LC app's live latency to its device's training.

The plan keeps every LC app under its deadline *as predicted*; the guard covers what the
prediction missed (an app's load rises, the interference model was wrong). It reads the
live request stream, keeps each app's p95 over the last :attr:`GuardSettings.window_s`
seconds (by completion time, failures as infinite latency), and when an app on a
training device reaches :attr:`GuardSettings.trip` of its deadline it cuts that device's
training intensity (down to taking the device out of the plan). Once every app of a
capped device has stayed under :attr:`GuardSettings.clear` of its deadline for
``clear_s`` seconds, with no more load than it had when it tripped (a device out of the
plan has quiet apps however high their load: that says nothing about training beside
them), it lifts the cap one level; a device that trips again soon after a
lift waits twice as long before the next one (hysteresis with back-off, so a lasting
load change does not make the plan flap).

Pure bookkeeping: the run controller feeds records and applies the actions.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from deepedge.apps.stats import RequestRecord

__all__ = ["GuardAction", "GuardSettings", "SloGuard"]


@dataclass(frozen=True)
class GuardSettings:
    window_s: float = 1.0
    """The rolling window of each app's p95 (completed requests)."""
    trip: float = 0.8
    """Act when an app's rolling p95 reaches this share of its deadline: the window
    around the action still has a margin for the queue to drain."""
    clear: float = 0.5
    """A capped device's apps must stay under this share of their deadlines ..."""
    clear_s: float = 5.0
    """... for this long before its cap is lifted one level (doubled after each lift
    that tripped again within ``clear_s``)."""
    hold_s: float = 1.0
    """After acting on a device, how long its apps get to show the effect before the
    next cut there."""
    cut: float = 0.5
    """Each trip multiplies the device's intensity by this."""
    min_intensity: float = 0.2
    """Below this the device stops training (its share moves to the others)."""
    min_requests: int = 4
    """A window with fewer requests says nothing about a p95."""
    rate_window_s: float = 5.0
    """Each app's request rate is counted over this long (a 1 s count is too noisy)."""
    load_margin: float = 1.2
    """A cap is lifted only while each app on the device gets at most this times the
    request rate it had when the device was cut: while the load that tripped the guard
    lasts, an idle device's quiet apps say nothing about training beside them."""

    def __post_init__(self) -> None:
        if not (0 < self.clear < self.trip <= 1 and 0 < self.cut < 1):
            raise ValueError("need 0 < clear < trip <= 1 and 0 < cut < 1")
        if not (0 < self.min_intensity < 1 and self.window_s > 0 and self.clear_s > 0):
            raise ValueError("need 0 < min_intensity < 1, window_s > 0 and clear_s > 0")


@dataclass(frozen=True)
class GuardAction:
    """One decision: ``device``'s intensity cap goes from ``before`` to ``after`` (0: out
    of the plan, 1: no cap), because of ``app``'s rolling p95 against its deadline."""

    device: str
    app: str
    p95_ms: float
    deadline_ms: float
    before: float
    after: float

    @property
    def kind(self) -> str:
        if self.after > self.before:
            return "restore"
        return "off" if self.after == 0 else "cut"

    def describe(self) -> str:
        level = {0.0: "out of the plan", 1.0: "no cap"}.get(self.after, f"{self.after:.2f}")
        return (
            f"{self.app} p95 {self.p95_ms:.0f} ms of {self.deadline_ms:.0f} ms: "
            f"{self.device} intensity {self.before:.2f} -> {level}"
        )


class _Window:
    """An app's completed requests of the last seconds: (done time, latency), and their
    completion times over the longer window its request rate is counted on."""

    def __init__(self) -> None:
        self.items: deque[tuple[float, float]] = deque()
        self.done: deque[float] = deque()
        self.first_s = math.inf  # the first completion seen: a younger window is shorter

    def add(self, done_s: float, latency_ms: float) -> None:
        self.items.append((done_s, latency_ms))
        self.done.append(done_s)
        self.first_s = min(self.first_s, done_s)

    def rate_rps(self, now: float, window_s: float) -> float:
        while self.done and self.done[0] < now - window_s:
            self.done.popleft()
        span = min(window_s, now - self.first_s)
        return bisect.bisect_right(self.done, now) / span if span > 0 else 0.0

    def p95_ms(self, since_s: float, min_requests: int) -> float | None:
        while self.items and self.items[0][0] < since_s:
            self.items.popleft()
        if len(self.items) < min_requests:
            return None
        lat = sorted(v for _, v in self.items)
        h = (len(lat) - 1) * 0.95  # linear interpolation, as everywhere in apps.stats
        lo = math.floor(h)
        hi = min(lo + 1, len(lat) - 1)
        if math.isinf(lat[hi]):
            return math.inf
        return lat[lo] + (lat[hi] - lat[lo]) * (h - lo)


class SloGuard:
    """See the module doc. ``deadlines_ms``: app -> deadline; ``app_devices``: app ->
    the device it runs on."""

    def __init__(
        self,
        deadlines_ms: Mapping[str, float],
        app_devices: Mapping[str, str],
        settings: GuardSettings | None = None,
    ) -> None:
        self.settings = settings or GuardSettings()
        self.deadlines_ms = dict(deadlines_ms)
        self.app_devices = {a: d for a, d in app_devices.items() if a in self.deadlines_ms}
        self.caps: dict[str, float] = {}
        """Each capped device's most intensity (0: not training); absent: no cap."""
        self._windows = {a: _Window() for a in self.deadlines_ms}
        self._acted: dict[str, float] = {}  # device -> when the guard last acted on it
        self._clear_since: dict[str, float] = {}
        self._clear_s: dict[str, float] = {}  # device -> its current (backed-off) clear_s
        self._lifted: dict[str, float] = {}  # device -> when its cap was last lifted
        self._tripped_at_rps: dict[str, float] = {}  # app -> its request rate when it tripped

    def observe(self, records: Iterable[RequestRecord]) -> None:
        """Take completed requests (in any order of completion)."""
        for r in records:
            window = self._windows.get(r.app)
            if window is None:
                continue
            latency = r.latency_ms if r.ok and math.isfinite(r.latency_ms) else math.inf
            if window.items and r.done_s < window.items[-1][0]:
                bisect.insort(window.items, (r.done_s, latency))
                bisect.insort(window.done, r.done_s)
            else:
                window.add(r.done_s, latency)

    def p95_ms(self, now: float) -> dict[str, float]:
        """Each app's rolling p95 (apps with too few requests in the window left out)."""
        s = self.settings
        out = {}
        for app, window in self._windows.items():
            p = window.p95_ms(now - s.window_s, s.min_requests)
            if p is not None:
                out[app] = p
        return out

    def check(self, now: float, training: Mapping[str, float]) -> list[GuardAction]:
        """Actions due at ``now``. ``training``: each device's intensity in the running
        plan (devices not in it do not train, so there is nothing to cut there)."""
        s = self.settings
        p95 = self.p95_ms(now)
        worst: dict[str, tuple[float, str]] = {}  # device -> (p95/deadline, app)
        for app, value in p95.items():
            device = self.app_devices[app]
            ratio = value / self.deadlines_ms[app]
            if ratio > worst.get(device, (-1.0, ""))[0]:
                worst[device] = (ratio, app)
        actions = []
        for device, (ratio, app) in worst.items():
            current = self.caps.get(device, 1.0)
            if ratio >= s.trip:
                self._clear_since.pop(device, None)
                intensity = training.get(device, 0.0)
                if intensity <= 0 or now - self._acted.get(device, -math.inf) < s.hold_s:
                    continue
                after = intensity * s.cut
                after = 0.0 if after < s.min_intensity else after
                if now - self._lifted.get(device, -math.inf) < self._clear(device):
                    self._clear_s[device] = 2 * self._clear(device)  # it flapped: back off
                for a in self._apps_on(device):
                    rate = self._windows[a].rate_rps(now, s.rate_window_s)
                    self._tripped_at_rps[a] = max(rate, self._tripped_at_rps.get(a, 0.0))
                actions.append(self._act(device, app, p95[app], intensity, after, now))
            elif device in self.caps and ratio <= s.clear and self._load_back(device, now):
                since = self._clear_since.setdefault(device, now)
                if now - since >= self._clear(device):
                    after = s.min_intensity if current == 0 else min(1.0, current / s.cut)
                    self._lifted[device] = now
                    self._clear_since.pop(device, None)
                    actions.append(self._act(device, app, p95[app], current, after, now))
            else:
                self._clear_since.pop(device, None)
        return actions

    def _apps_on(self, device: str) -> list[str]:
        return [a for a, d in self.app_devices.items() if d == device]

    def _load_back(self, device: str, now: float) -> bool:
        """Every app on ``device`` at most ``load_margin`` times its rate at the trip."""
        s = self.settings
        return all(
            self._windows[a].rate_rps(now, s.rate_window_s)
            <= s.load_margin * self._tripped_at_rps.get(a, math.inf)
            for a in self._apps_on(device)
        )

    def _clear(self, device: str) -> float:
        return self._clear_s.get(device, self.settings.clear_s)

    def _act(
        self, device: str, app: str, p95: float, before: float, after: float, now: float
    ) -> GuardAction:
        if after >= 1.0:
            self.caps.pop(device, None)
        else:
            self.caps[device] = after
        self._acted[device] = now
        return GuardAction(device, app, p95, self.deadlines_ms[app], before, after)
