"""How a flavour's p95 latency grows with the arrival rate and shrinks with replicas.

The provisioner must know, before it starts anything, how many replicas of which flavour
keep the p95 under the SLO at a forecast rate. Measuring every combination each interval is
impossible, so a few measured points per flavour are fitted to a queueing model that then
answers for any rate and replica count.

The model is M/M/c: ``c`` replicas behind join-shortest-queue, each serving one request at a
time at ``mu`` requests/s. Its response time ``T = W + S`` (Erlang-C wait plus an
exponential service) has the tail

    P(T > t) = e^(-mu t) + C(c, a) mu t e^(-lo t) g((hi - lo) t)

with ``a = lambda / mu``, ``theta = c mu - lambda``, ``lo, hi = sorted(theta, mu)`` and
``g(x) = (1 - e^-x) / x``: a numerically stable form of the convolution of the Erlang-C
wait ``P(W > t) = C e^(-theta t)`` with ``S``. Its 0.95 quantile is found by bisection.
Real replicas differ from M/M/c (service is not exponential; the CFS quota stalls a replica
when its period's budget is spent; the front end and the network add a constant), so the
prediction is ``p95 = base_ms + k * q95(T)``, with ``mu``, ``base_ms`` and ``k`` fitted per
flavour by least squares on log p95, so low-rate points weigh as much as the steep ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepedge.errors import SpecError

__all__ = [
    "LatencyError",
    "LatencyModel",
    "LatencyPoint",
    "fit_latency_models",
    "latency_error",
    "latency_png",
    "mmc_p95_s",
]

QUANTILE = 0.95
_TAIL = 1 - QUANTILE
_BISECT_STEPS = 50  # relative precision 2^-50 of the bracket: far below measurement noise
_REFINED_STARTS = 2  # least-squares runs per flavour, from the best grid starts
_SAT_SLOPE = 10.0  # log-p95 penalty per unit of utilisation beyond saturation, in the fit
K_MIN = 0.25
"""Smallest tail factor: a replica's service time is far less variable than the
exponential the queue assumes (a forward pass costs about the same every time), which
shrinks the tail by a factor of about two to four."""


@dataclass(frozen=True)
class LatencyPoint:
    """One measurement: ``replicas`` of ``flavour`` took ``rate_rps`` requests/s in total
    and answered with this p95; ``mean_service_ms`` (if measured) is a request's CPU time
    on that flavour, ``n`` how many requests the p95 was taken over."""

    flavour: str
    replicas: int
    rate_rps: float
    p95_ms: float
    mean_service_ms: float | None = None
    n: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int):
            raise SpecError(f"latency point of {self.flavour!r}: replicas is {self.replicas!r}")
        if self.replicas < 1:
            raise SpecError(
                f"latency point of {self.flavour!r} has {self.replicas} replicas",
                hint="measure with at least one replica",
            )
        if not (math.isfinite(self.rate_rps) and self.rate_rps >= 0):
            raise SpecError(f"latency point of {self.flavour!r}: rate {self.rate_rps!r} rps")
        if not (math.isfinite(self.p95_ms) and self.p95_ms > 0):
            raise SpecError(
                f"latency point of {self.flavour!r}: p95 {self.p95_ms!r} ms",
                hint="a measured p95 is a positive, finite number of milliseconds",
            )
        ms = self.mean_service_ms
        if ms is not None and not (math.isfinite(ms) and ms > 0):
            raise SpecError(f"latency point of {self.flavour!r}: mean service {ms!r} ms")


# ---------------------------------------------------------------------------------------
# the queue


def _erlang_c(c: int, a: float) -> float:
    """P(an arrival waits) in M/M/c at offered load ``a < c``, by the Erlang-B recursion
    (stable for any ``c``, unlike the factorial formula)."""
    if a <= 0:
        return 0.0
    b = 1.0
    for n in range(1, c + 1):
        b = a * b / (n + a * b)
    rho = a / c
    return b / (1 - rho * (1 - b))


def _g(x: float) -> float:
    """``(1 - e^-x) / x``, 1 at 0, without cancellation."""
    return 1.0 - x / 2 if x < 1e-8 else -math.expm1(-x) / x


def _tail(t: float, mu: float, theta: float, wait_p: float) -> float:
    lo, hi = (theta, mu) if theta < mu else (mu, theta)
    return math.exp(-mu * t) + wait_p * mu * t * math.exp(-lo * t) * _g((hi - lo) * t)


def mmc_p95_s(rate_rps: float, replicas: int, mu_rps: float) -> float:
    """The exact 0.95 quantile of the M/M/c response time in seconds (inf if saturated)."""
    theta = replicas * mu_rps - rate_rps
    if theta <= 0:
        return math.inf
    wait_p = _erlang_c(replicas, rate_rps / mu_rps)
    # P(T > t) >= P(S > t) bounds the quantile from below; P(T > t) <= 2 e^(-min t / 2)
    # from above, so the bracket always holds it.
    lo_t = math.log(1 / _TAIL) / mu_rps
    if wait_p == 0.0:
        return lo_t
    hi_t = 2 * math.log(2 / _TAIL) / min(theta, mu_rps)
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo_t + hi_t)
        if _tail(mid, mu_rps, theta, wait_p) > _TAIL:
            lo_t = mid
        else:
            hi_t = mid
    return 0.5 * (lo_t + hi_t)


def _mmc_p95_s_vec(rate: np.ndarray, c: np.ndarray, mu: float) -> np.ndarray:
    """:func:`mmc_p95_s` for many points at once (the fit calls it hundreds of times)."""
    theta = c * mu - rate
    stable = theta > 0
    a = np.where(stable, rate / mu, 0.0)
    b = np.ones_like(a)
    for n in range(1, int(c.max()) + 1):
        b = np.where(n <= c, a * b / (n + a * b), b)
    rho = a / c
    wait_p = np.where(a > 0, b / (1 - rho * (1 - b)), 0.0)
    theta_s = np.where(stable, theta, mu)
    low, high = np.minimum(theta_s, mu), np.maximum(theta_s, mu)
    lo_t = np.full_like(a, math.log(1 / _TAIL) / mu)
    hi_t = 2 * math.log(2 / _TAIL) / low
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo_t + hi_t)
        x = (high - low) * mid
        g = np.where(x < 1e-8, 1.0 - x / 2, -np.expm1(-x) / np.maximum(x, 1e-300))
        tail = np.exp(-mu * mid) + wait_p * mu * mid * np.exp(-low * mid) * g
        above = tail > _TAIL
        lo_t = np.where(above, mid, lo_t)
        hi_t = np.where(above, hi_t, mid)
    q = 0.5 * (lo_t + hi_t)
    q = np.where(wait_p > 0, q, math.log(1 / _TAIL) / mu)
    return np.where(stable, q, np.inf)


# ---------------------------------------------------------------------------------------
# the fitted model


@dataclass(frozen=True)
class LatencyModel:
    """The fitted p95 model of one flavour: ``mu_rps`` requests/s per replica, a constant
    ``base_ms`` and a tail factor ``k``; ``rmse_log`` is the fit's error in log p95."""

    flavour: str
    mu_rps: float
    base_ms: float
    k: float
    rmse_log: float = 0.0
    n_points: int = 0
    _max_rate: dict[tuple[int, float], float] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def p95_ms(self, rate_rps: float, replicas: int) -> float:
        """Predicted p95 (ms) of ``replicas`` replicas sharing ``rate_rps`` in total; inf
        when the rate reaches their capacity ``replicas * mu_rps``."""
        if replicas < 1:
            raise SpecError(f"{replicas} replicas of {self.flavour!r} cannot serve anything")
        q = mmc_p95_s(max(rate_rps, 0.0), replicas, self.mu_rps)
        return math.inf if math.isinf(q) else self.base_ms + self.k * 1000 * q

    def max_rate(self, replicas: int, slo_ms: float) -> float:
        """The largest total rate ``replicas`` replicas serve with p95 <= ``slo_ms``;
        0 when even an idle replica misses it. Cached: the optimiser asks every interval."""
        key = (replicas, float(slo_ms))
        if key not in self._max_rate:
            self._max_rate[key] = self._solve_max_rate(replicas, slo_ms)
        return self._max_rate[key]

    def _solve_max_rate(self, replicas: int, slo_ms: float) -> float:
        if self.p95_ms(0.0, replicas) > slo_ms:
            return 0.0
        lo, hi = 0.0, replicas * self.mu_rps  # p95 rises monotonically to inf at hi
        for _ in range(_BISECT_STEPS):
            mid = 0.5 * (lo + hi)
            if self.p95_ms(mid, replicas) <= slo_ms:
                lo = mid
            else:
                hi = mid
        return lo  # the feasible end, so max_rate never overstates capacity

    def to_dict(self) -> dict[str, Any]:
        return {
            "flavour": self.flavour,
            "mu_rps": self.mu_rps,
            "base_ms": self.base_ms,
            "k": self.k,
            "rmse_log": self.rmse_log,
            "n_points": self.n_points,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyModel:
        try:
            return cls(
                flavour=str(data["flavour"]),
                mu_rps=float(data["mu_rps"]),
                base_ms=float(data["base_ms"]),
                k=float(data["k"]),
                rmse_log=float(data.get("rmse_log", 0.0)),
                n_points=int(data.get("n_points", 0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SpecError(
                f"a stored latency model is malformed ({type(err).__name__}: {err})",
                hint="fit the latency models again",
            ) from None


# ---------------------------------------------------------------------------------------
# fitting


def _predict_log(params: np.ndarray, rate: np.ndarray, c: np.ndarray, cap_log: float) -> np.ndarray:
    """log p95 (ms) at ``params = (log mu, base, k)``; a saturated point is predicted at
    ``cap_log`` plus a slope in utilisation, so the fit feels which way saturation lies."""
    mu, base, k = math.exp(params[0]), params[1], params[2]
    q = _mmc_p95_s_vec(rate, c, mu)
    with np.errstate(over="ignore", invalid="ignore"):
        pred = np.log(base + k * 1000 * q)
    over = np.maximum(rate / (c * mu) - 1, 0.0)
    return np.where(np.isfinite(pred), np.minimum(pred, cap_log), cap_log + _SAT_SLOPE * over)


def _linear_base_k(q_ms: np.ndarray, p95: np.ndarray) -> tuple[float, float]:
    """Given the queue's quantiles, the (base >= 0, k >= K_MIN) minimising the relative error
    of ``base + k q``: a weighted linear least-squares fit, or the better of the two
    bounded ones when it leaves the bounds (a starting point, not the fit)."""
    w, wq = 1 / p95, q_ms / p95

    def cost(base: float, k: float) -> float:
        return float(np.sum((base * w + k * wq - 1) ** 2))

    base, k = np.linalg.lstsq(np.column_stack([w, wq]), np.ones_like(p95), rcond=None)[0]
    if base >= 0 and k >= K_MIN:
        return float(base), float(k)
    k0 = max(K_MIN, float(np.sum(wq) / np.sum(wq * wq)))  # base = 0
    b0 = max(0.0, float(np.sum(w * (1 - K_MIN * wq)) / np.sum(w * w)))  # k = K_MIN
    return (0.0, k0) if cost(0.0, k0) <= cost(b0, K_MIN) else (b0, K_MIN)


def _starts(
    pts: Sequence[LatencyPoint], rate: np.ndarray, c: np.ndarray, y: np.ndarray, cap_log: float
) -> list[np.ndarray]:
    """Starting points (log mu, base, k), best first: a grid of service rates from just
    above the busiest point's to 30 times it, plus the measured mean service rate if any,
    each with the best linear base and k. The fit's cost is flat beyond saturation and has
    local minima near it, so a refined start from the best few is robust and cheap."""
    per_replica = float((rate / c).max())
    mus = list(per_replica * np.geomspace(1.01, 30.0, 24))
    # at rate 0 the model is base + k ln(20) / mu: with base 0 and k 1, the fastest point
    mus.append(1000 * math.log(1 / _TAIL) / float(np.exp(y.min())))
    services = [p.mean_service_ms for p in pts if p.mean_service_ms is not None]
    if services:
        mus.append(1000 / float(np.median(services)))
    p95 = np.exp(y)
    scored: list[tuple[float, np.ndarray]] = []
    for mu in mus:
        q_ms = 1000 * _mmc_p95_s_vec(rate, c, mu)
        ok = np.isfinite(q_ms)
        if not ok.any():
            continue
        base, k = _linear_base_k(q_ms[ok], p95[ok])
        x0 = np.array([math.log(mu), base, k])
        cost = float(np.sum((_predict_log(x0, rate, c, cap_log) - y) ** 2))
        scored.append((cost, x0))
    scored.sort(key=lambda item: item[0])
    return [x0 for _, x0 in scored]


def _fit_one(
    flavour: str, pts: Sequence[LatencyPoint], capacity_rps: float | None = None
) -> LatencyModel:
    from scipy.optimize import least_squares

    if len(pts) < 3:
        raise SpecError(
            f"flavour {flavour!r} has {len(pts)} latency point(s); a fit needs at least 3",
            hint="measure p95 at three or more arrival rates",
        )
    rate = np.array([p.rate_rps for p in pts], dtype=float)
    c = np.array([p.replicas for p in pts], dtype=float)
    y = np.log(np.array([p.p95_ms for p in pts], dtype=float))
    if not np.any(rate > 0):
        raise SpecError(
            f"every latency point of flavour {flavour!r} is at rate 0",
            hint="measure p95 at several arrival rates: the service rate shows as it grows",
        )
    cap_log = float(y.max() + math.log(100.0))

    def residuals(params: np.ndarray) -> np.ndarray:
        return _predict_log(params, rate, c, cap_log) - y

    if capacity_rps is not None:  # measured: only the tail's shape is fitted
        log_mu = math.log(capacity_rps)
        q_ms = 1000 * _mmc_p95_s_vec(rate, c, capacity_rps)
        ok = np.isfinite(q_ms)
        base0, k0 = _linear_base_k(q_ms[ok], np.exp(y[ok])) if ok.any() else (0.0, 1.0)
        starts = [np.array([log_mu, base0, k0])]
        mu_bounds = (log_mu - 1e-9, log_mu + 1e-9)
    else:
        starts = _starts(pts, rate, c, y, cap_log)[:_REFINED_STARTS]
        mu_bounds = (-np.inf, np.inf)
    best = None
    for x0 in starts:
        result = least_squares(
            residuals,
            x0=x0,
            bounds=([mu_bounds[0], 0.0, K_MIN], [mu_bounds[1], np.inf, np.inf]),
            x_scale=np.array([1.0, max(x0[1], 0.1), 1.0]),
            method="trf",
        )
        if best is None or result.cost < best.cost:
            best = result
    mu = math.exp(best.x[0]) if best is not None else 0.0
    if best is None or not np.any(rate < c * mu):
        raise SpecError(
            f"every latency point of flavour {flavour!r} is at or beyond saturation",
            hint="measure p95 at rates well below the replicas' capacity too",
        )
    base, k = float(best.x[1]), float(best.x[2])
    rmse = float(np.sqrt(np.mean(best.fun**2)))
    return LatencyModel(flavour, mu, base, k, rmse_log=rmse, n_points=len(pts))


def fit_latency_models(
    points: Iterable[LatencyPoint], capacity_rps: Mapping[str, float] | None = None
) -> dict[str, LatencyModel]:
    """One :class:`LatencyModel` per flavour in ``points`` (each needs 3 points or more,
    some below saturation). Several starting rates are tried because a start past
    saturation sits on the fit's flat cap.

    ``capacity_rps`` fixes a flavour's service rate per replica where it was measured
    (its CPU quota over the CPU a request costs): p95 points below saturation pin the
    tail's shape far better than they pin where saturation lies."""
    by_flavour: dict[str, list[LatencyPoint]] = {}
    for p in points:
        by_flavour.setdefault(p.flavour, []).append(p)
    if not by_flavour:
        raise SpecError("no latency points to fit", hint="measure p95 per flavour first")
    fixed = capacity_rps or {}
    return {name: _fit_one(name, pts, fixed.get(name)) for name, pts in sorted(by_flavour.items())}


@dataclass(frozen=True)
class LatencyError:
    """Relative error |predicted - measured| / measured of p95 over ``n`` points; ``max``
    is over the points the model does not predict saturated (``saturated`` of them: a
    rate at or past the fitted capacity, where it predicts no finite p95)."""

    median: float
    max: float
    n: int
    saturated: int = 0

    def __str__(self) -> str:
        text = f"median {self.median:.1%}, max {self.max:.1%} over {self.n} points"
        if self.saturated:
            text += f" ({self.saturated} predicted saturated, left out of the max)"
        return text


def latency_error(
    models: Mapping[str, LatencyModel], points: Iterable[LatencyPoint]
) -> LatencyError:
    """How well ``models`` predict ``points`` (inf where a point is predicted saturated),
    so a caller can report the fit's quality or refuse a bad one."""
    errors: list[float] = []
    for p in points:
        model = models.get(p.flavour)
        if model is None:
            raise SpecError(
                f"no latency model for flavour {p.flavour!r}",
                hint=f"the models are for {', '.join(sorted(models)) or 'no flavour'}",
            )
        errors.append(abs(model.p95_ms(p.rate_rps, p.replicas) - p.p95_ms) / p.p95_ms)
    if not errors:
        raise SpecError("no latency points to compare with", hint="measure p95 first")
    finite = [e for e in errors if math.isfinite(e)]
    return LatencyError(
        float(np.median(errors)),
        max(finite, default=math.inf),
        len(errors),
        len(errors) - len(finite),
    )


def latency_png(
    models: Mapping[str, LatencyModel], points: Sequence[LatencyPoint], path: str | Path
) -> Path:
    """Plot p95 against the total rate, one panel per flavour: measured dots and the
    fitted curve per replica count measured, so a reader sees where the model holds."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    names = sorted(models)
    fig, axes = plt.subplots(
        1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.6), squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=False):
        model = models[name]
        pts = [p for p in points if p.flavour == name]
        for i, c in enumerate(sorted({p.replicas for p in pts})):
            color = f"C{i % 10}"
            mine = [p for p in pts if p.replicas == c]
            ax.scatter([p.rate_rps for p in mine], [p.p95_ms for p in mine], color=color, s=14)
            top = max([c * model.mu_rps * 0.98, *(p.rate_rps for p in mine)])
            rates = np.linspace(0, min(top, c * model.mu_rps * 0.995), 200)
            ax.plot(rates, [model.p95_ms(r, c) for r in rates], color=color, label=f"{c} repl.")
        measured = [p.p95_ms for p in pts] or [model.p95_ms(0, 1)]
        ax.set_ylim(0, 2.5 * max(measured))
        ax.set_title(
            f"{name}: mu {model.mu_rps:.0f}/s, base {model.base_ms:.1f} ms, k {model.k:.2f}",
            fontsize=9,
        )
        ax.set_xlabel("arrival rate, all replicas (req/s)")
        ax.set_ylabel("p95 (ms)")
        ax.legend(fontsize=7)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
