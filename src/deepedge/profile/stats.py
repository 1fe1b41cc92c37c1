"""Statistics for timed steps: a robust summary with a confidence interval, and the fit.

Step times on a loaded edge device are skewed: most steps take the device's share of CPU,
a few collide with a burst of LC requests and take longer. The *median* is what a long
training run sees step after step, so it is the point estimate, with a distribution-free
confidence interval from order statistics (no normality assumption), which the reports
show next to it.

Across batch sizes the per-step time of a data-parallel worker is close to affine,
``t(b) = a + s·b``: a fixed part (optimiser step, Python and framework overhead, kernel
launches) and a per-sample part. Both coefficients are fitted non-negative, so the model
never predicts a negative time or a faster step for a bigger batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = ["AffineModel", "TimingSummary", "median_ci"]


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics.

    The number of samples below the median is Binomial(n, 1/2); the interval runs between
    the order statistics that bracket its central ``confidence`` mass. With fewer than six
    samples no such pair reaches 95 %, so the interval is the whole range.
    """
    xs = np.sort(np.asarray(samples, dtype=float))
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci needs at least one sample")
    # largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2
    tail, k, cdf = (1 - confidence) / 2, 0, 0.0
    while k < n and cdf + math.comb(n, k) / 2**n <= tail:
        cdf += math.comb(n, k) / 2**n
        k += 1
    if k < 1 or n - k <= k - 1:
        return float(xs[0]), float(xs[-1])
    return float(xs[k - 1]), float(xs[n - k])


@dataclass(frozen=True)
class TimingSummary:
    """Median step time of repeated timed steps, with its 95 % confidence interval."""

    n: int
    median_s: float
    ci_low_s: float
    ci_high_s: float
    mean_s: float

    @classmethod
    def of(cls, times: Sequence[float]) -> TimingSummary:
        lo, hi = median_ci(times)
        return cls(len(times), float(np.median(times)), lo, hi, float(np.mean(times)))


@dataclass(frozen=True)
class AffineModel:
    """``t(b) = intercept_s + slope_s · b``, fitted non-negative by least squares.

    ``max_rel_residual`` is the worst relative error of the fit on its own points, a
    quick check that the affine shape holds; ``batches`` records the fitted range so a
    caller can tell interpolation from extrapolation.
    """

    intercept_s: float
    slope_s: float
    batches: tuple[int, ...]
    max_rel_residual: float

    @classmethod
    def fit(cls, points: Mapping[int, float]) -> AffineModel:
        """Fit to ``{batch: step seconds}``; relative errors are weighted equally.

        Each row is divided by its own time, so a small batch's 20 ms matters as much as
        a large batch's 2 s (the planner's small shares would otherwise be fitted poorly).
        One point gives a line through the origin.
        """
        if not points:
            raise ValueError("AffineModel.fit needs at least one point")
        b = np.array(sorted(points), dtype=float)
        t = np.array([points[int(x)] for x in b], dtype=float)
        if np.any(t <= 0) or np.any(b <= 0):
            raise ValueError("batch sizes and step times must be positive")
        if len(b) == 1:
            intercept, slope = 0.0, float(t[0] / b[0])
        else:
            intercept, slope = _nonnegative_affine(b, t)
        predicted = intercept + slope * b
        worst = float(np.max(np.abs(predicted - t) / t))
        return cls(float(intercept), float(slope), tuple(int(x) for x in b), worst)

    def predict(self, batch: float) -> float:
        return self.intercept_s + self.slope_s * batch

    def scaled(self, factor: float) -> AffineModel:
        """The same device running ``factor`` times slower (a straggler, a capped trainer)."""
        if factor == 1.0:
            return self
        return replace(self, intercept_s=self.intercept_s * factor, slope_s=self.slope_s * factor)

    def throughput(self, batch: float) -> float:
        """Samples per second at ``batch``."""
        return batch / self.predict(batch)

    def batch_for(self, step_s: float) -> float:
        """The (fractional) batch that takes ``step_s``; 0 where even an empty step is slower."""
        if self.slope_s <= 0:
            return math.inf if step_s >= self.intercept_s else 0.0
        return max(0.0, (step_s - self.intercept_s) / self.slope_s)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _nonnegative_affine(b: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Least squares of ``(a + s·b - t) / t`` with ``a, s >= 0``.

    With two coefficients the constrained optimum is the unconstrained one when that is
    feasible, else the better of the two one-coefficient fits (through the origin, or a
    constant), which is what a general NNLS solver would return.
    """
    w = 1.0 / t
    design = np.column_stack([w, b * w])
    (a, s), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if a >= 0 and s >= 0:
        return float(a), float(s)

    def loss(a: float, s: float) -> float:
        return float(np.sum(((a + s * b) * w - 1.0) ** 2))

    through_origin = (0.0, float(np.sum(b * w) / np.sum((b * w) ** 2)))
    constant = (float(np.sum(w) / np.sum(w**2)), 0.0)
    return min(through_origin, constant, key=lambda c: loss(*c))
