"""Surrogate models of interference: predict an LC app's tail latency (or a training job's
throughput) from a scenario's features, with a calibrated one-sided bound.

FECBench fits a regression model to a few dozen profiled co-location scenarios and uses it
to predict scenarios never run. The targets are positive and span orders of magnitude
(a p99 goes from milliseconds to seconds once a device saturates), so every model here is
fitted on ``log(y)`` and errors are relative.

Five candidate models are tried — gradient boosting, histogram gradient boosting with
monotone constraints (latency never falls as load, batch or intensity rises), a random
forest, a Gaussian process and ridge regression — and the one with the lowest out-of-fold
mean absolute log error in shuffled K-fold cross-validation is kept. The chosen model is
then refitted on all points.

The bound is split-free conformal on the chosen model's out-of-fold log residuals ``r``
(a simple CV+ / jackknife+ variant), in one of two forms:

* *global*: one margin for every scenario, the ``⌈(n+1)(1−α)⌉``-th smallest residual, so
  that a fresh scenario's true value lies below ``prediction · exp(margin)`` with
  probability about ``1 − α``;
* *adaptive* (normalised conformal): a second model (a random forest on ``log |r|``)
  learns the typical size ``σ(x)`` of each scenario's residual (out of fold as well,
  floored at a fraction of the mean ``|r|``), and the margin is ``q · σ(x)`` with ``q``
  the same conformal quantile of the normalised residuals ``r / σ(x)``. Easy scenarios
  (the app alone) get narrow bounds, hard ones (training beside a loaded app) wide ones,
  at the same marginal coverage. The difficulty model obeys the point model's monotone
  constraints (reversed for a lower bound), so a monotone "hgb" keeps a monotone bound.

With at least :data:`ADAPTIVE_MIN_POINTS` points both are computed and the one with the
smaller mean log margin on the fitting points is kept; below that, the global one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import sklearn
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.ensemble import (
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController

from deepedge.errors import DeepEdgeError

__all__ = [
    "ADAPTIVE_MIN_POINTS",
    "CANDIDATES",
    "CorruptModel",
    "NotEnoughPoints",
    "StaleModel",
    "Surrogate",
    "ape",
    "coverage",
    "fit_surrogate",
    "min_points",
]

CANDIDATES: tuple[str, ...] = ("gbr", "hgb", "rf", "gp", "linear")

BoundKind = Literal["upper", "lower"]
Conformal = Literal["global", "adaptive"]

ADAPTIVE_MIN_POINTS = 30
"""Fewest points for a locally adaptive bound: below it the difficulty model, fitted per
fold on a few dozen residuals, is mostly noise, and the global margin is used."""

_SIGMA_FLOOR = 0.4
"""The difficulty σ(x) is floored at this fraction of the mean |out-of-fold log residual|,
so that a scenario the difficulty model calls trivial still gets a margin."""

_MAGIC = b"DEEPEDGE-SURROGATE\n"
_FORMAT = 2
"""2: monotone constraints and locally adaptive bounds (format 1 had one global margin)."""
_EPS = 1e-9
_REFIT = "refit with 'deepedge interference fit'"


class NotEnoughPoints(DeepEdgeError):
    """Too few profiled scenarios to fit and calibrate a surrogate model."""

    def __init__(self, what: str, have: int, need: int, *, hint: str | None = None) -> None:
        self.what, self.have, self.need = what, int(have), int(need)
        self.more = max(self.need - self.have, 0)
        super().__init__(
            f"{what}: {self.have} profiling points, a model needs at least {self.need}: "
            f"run {self.more} more",
            hint=hint
            or f"profile more scenarios: deepedge interference profile --runs {self.more}",
        )


class StaleModel(DeepEdgeError):
    """A saved surrogate was fitted with another scikit-learn version."""


class CorruptModel(DeepEdgeError):
    """Saved surrogate bytes are not a deepedge surrogate or cannot be read."""


def min_points(n_features: int, *, alpha: float = 0.05, folds: int = 5) -> int:
    """Fewest points :func:`fit_surrogate` accepts.

    The largest of: ``folds``-fold CV with at least two test points per fold; a finite
    conformal quantile at level ``1 − alpha``, i.e. ``⌈(n+1)(1−alpha)⌉ ≤ n`` or
    ``n ≥ ⌈1/alpha⌉ − 1`` (19 for 5 %); and ``n_features + 2``.
    """
    _check_alpha_folds(alpha, folds)
    if n_features < 1:
        raise ValueError(f"need at least one feature, got {n_features}")
    conformal = math.ceil(1.0 / alpha - _EPS) - 1
    return max(2 * folds, conformal, int(n_features) + 2)


def _check_alpha_folds(alpha: float, folds: int) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")


def ape(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Absolute percentage error of each prediction, in %."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    return 100.0 * np.abs(y_pred - y_true) / np.abs(y_true)


def coverage(y_true: ArrayLike, bound: ArrayLike, kind: BoundKind = "upper") -> float:
    """Fraction of ``y_true`` at or below an upper ``bound`` (at or above a lower one)."""
    y_true = np.asarray(y_true, dtype=float)
    bound = np.asarray(bound, dtype=float)
    if y_true.shape != bound.shape:
        raise ValueError(f"y_true {y_true.shape} and bound {bound.shape} differ in shape")
    if y_true.size == 0:
        raise ValueError("coverage of no points is undefined")
    if kind == "upper":
        return float(np.mean(y_true <= bound))
    if kind == "lower":
        return float(np.mean(y_true >= bound))
    raise ValueError(f"kind must be 'upper' or 'lower', got {kind!r}")


# --- candidates --------------------------------------------------------------------------


def _gbr(cst: tuple[int, ...], seed: int) -> Any:
    return GradientBoostingRegressor(
        n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed
    )


def _hgb(cst: tuple[int, ...], seed: int) -> Any:
    # small-data settings: a few dozen points, so small leaves, shallow trees, no early
    # stopping (its validation split would take a fifth of them)
    return HistGradientBoostingRegressor(
        learning_rate=0.05,
        max_iter=200,
        max_depth=3,
        max_leaf_nodes=8,
        min_samples_leaf=3,
        l2_regularization=1e-3,
        monotonic_cst=list(cst) if any(cst) else None,
        early_stopping=False,
        random_state=seed,
    )


def _sigma(cst: tuple[int, ...], seed: int) -> Any:
    """The difficulty model of an adaptive bound: ``log(|log residual| + floor)`` from the
    features. A forest of large leaves (|r| is a noisy target: a half-normal's spread is
    three quarters of its mean), in log terms (a leaf's σ is a geometric mean, not led by
    one outlier), with the point model's monotone constraints (a monotone prediction
    keeps a monotone bound)."""
    return RandomForestRegressor(
        n_estimators=50,
        min_samples_leaf=10,
        max_features=1.0,
        monotonic_cst=list(cst) if any(cst) else None,
        random_state=seed,
        n_jobs=1,
    )


def _rf(cst: tuple[int, ...], seed: int) -> Any:
    return RandomForestRegressor(
        n_estimators=100, min_samples_leaf=2, max_features=1.0, random_state=seed, n_jobs=1
    )


def _gp(cst: tuple[int, ...], seed: int) -> Any:
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
        length_scale=np.ones(len(cst)), length_scale_bounds=(1e-2, 1e3), nu=2.5
    ) + WhiteKernel(noise_level=1e-2, noise_level_bounds=(1e-6, 1.0))
    return make_pipeline(
        StandardScaler(),
        GaussianProcessRegressor(
            # restarts from random length scales wander for hundreds of L-BFGS steps
            # towards the bounds of irrelevant features (~4x the fit time) and found no
            # better optimum in tests; unit length scales on standardised features are a
            # good start
            kernel=kernel,
            normalize_y=True,
            n_restarts_optimizer=0,
            random_state=seed,
        ),
    )


def _linear(cst: tuple[int, ...], seed: int) -> Any:
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))


_BUILDERS: dict[str, Callable[[tuple[int, ...], int], Any]] = {
    "gbr": _gbr,
    "hgb": _hgb,
    "rf": _rf,
    "gp": _gp,
    "linear": _linear,
}


_THREADS: ThreadpoolController | None = None


@contextlib.contextmanager
def _one_thread(*, blas: bool = False) -> Iterator[None]:
    """Run OpenMP code (the histogram boosters) and, with ``blas``, BLAS (the Gaussian
    process's Cholesky solves) on one thread: on a few dozen points threads only cost, and
    on a busy machine their spin-waits cost seconds per fit. OpenMP's thread count is per
    calling thread; BLAS's is process-wide, so it is limited only while fitting."""
    global _THREADS
    if _THREADS is None:
        _THREADS = ThreadpoolController()
    with _THREADS.limit(limits=1, user_api=None if blas else "openmp"):
        yield


def _fit(model: Any, X: np.ndarray, z: np.ndarray) -> Any:
    with _one_thread(blas=True), warnings.catch_warnings():
        # the GP's optimiser hits a kernel bound on flat or tiny data sets; that is fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, z)
    return model


# --- the model ---------------------------------------------------------------------------


@dataclass
class Surrogate:
    """A fitted surrogate of one positive target, with a calibrated one-sided bound."""

    target: str
    feature_names: tuple[str, ...]
    chosen: str
    model: Any
    cv_error: dict[str, float]
    """Per candidate: out-of-fold median absolute percentage error, in %."""
    cv_p90_error: dict[str, float]
    """Per candidate: out-of-fold 90th-percentile absolute percentage error, in %."""
    bound: BoundKind
    alpha: float
    log_margin: float
    """Global conformal quantile of the chosen model's out-of-fold log residuals (>= 0):
    the margin of every scenario when ``conformal`` is "global"."""
    n_points: int
    oof_pred: np.ndarray
    """Out-of-fold predictions of the chosen model, in target units."""
    cv_log_error: dict[str, float] = field(default_factory=dict)
    """Per candidate: out-of-fold mean absolute log error, the selection criterion."""
    monotone: tuple[int, ...] = ()
    """Per feature: +1 (the target never falls as it rises), -1 or 0; the "hgb" candidate
    and the difficulty model obey it."""
    conformal: Conformal = "global"
    """How the bound's log margin is set: one global margin, or locally adaptive."""
    sigma_model: Any = None
    """Adaptive bounds: the difficulty model, ``log(|log residual| + sigma_floor)`` from
    the features."""
    sigma_floor: float = 0.0
    """Adaptive bounds: the least difficulty σ(x) (a fraction of the mean |residual|)."""
    scale_quantile: float = 0.0
    """Adaptive bounds: the conformal quantile q of the normalised residuals r / σ(x)."""
    oof_log_margin: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Per fitting point: the log margin its out-of-fold bound had (for plots, reports)."""

    def _X(self, X: ArrayLike) -> np.ndarray:
        arr = np.asarray(X, dtype=float)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != len(self.feature_names):
            raise ValueError(
                f"{self.target}: expected rows of {len(self.feature_names)} features "
                f"({', '.join(self.feature_names)}), got shape {np.shape(X)}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{self.target}: features must be finite")
        return arr

    def require_features(self, names: Sequence[str]) -> None:
        """Raise :class:`StaleModel` unless the model was fitted on exactly ``names`` (in
        order): a model of another feature set would silently misread every input."""
        names = tuple(names)
        if self.feature_names == names:
            return
        added = [n for n in names if n not in self.feature_names]
        dropped = [n for n in self.feature_names if n not in names]
        what = "; ".join(
            part
            for part in (
                f"new: {', '.join(added)}" if added else "",
                f"gone: {', '.join(dropped)}" if dropped else "",
            )
            if part
        )
        raise StaleModel(
            f"{self.target}: the model was fitted on other features than this version of "
            f"deepedge computes ({what or 'another order'}): {_REFIT}",
            hint="deepedge interference fit",
        )

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Point prediction (always > 0); one value per row of ``X``."""
        arr = self._X(X)
        with _one_thread():
            return np.exp(np.asarray(self.model.predict(arr), dtype=float))

    def log_margin_at(self, X: ArrayLike) -> np.ndarray:
        """The bound's log margin (>= 0) for each row of ``X``: the global one, or
        ``q · max(σ(x), floor)`` for an adaptive bound."""
        arr = self._X(X)
        with _one_thread():
            return self._margins(arr)

    def _margins(self, arr: np.ndarray) -> np.ndarray:
        if self.conformal == "adaptive" and self.sigma_model is not None:
            log_sigma = np.asarray(self.sigma_model.predict(arr), float)
            return self.scale_quantile * np.maximum(np.exp(log_sigma), self.sigma_floor)
        return np.full(len(arr), self.log_margin)

    def predict_bound(self, X: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``(prediction, bound)``: the bound lies above the prediction for an upper bound,
        below it for a lower one, and holds with probability about ``1 − alpha``."""
        arr = self._X(X)
        with _one_thread():
            pred = np.exp(np.asarray(self.model.predict(arr), dtype=float))
            factor = np.exp(self._margins(arr))
        bound = pred * factor if self.bound == "upper" else pred / factor
        return pred, bound

    def bound_factors(self) -> np.ndarray:
        """Per fitting point, the factor between its out-of-fold bound and prediction."""
        return np.exp(self.oof_log_margin)

    def median_bound_factor(self) -> float:
        """The median of :meth:`bound_factors` (the global factor for a global bound)."""
        return float(np.median(self.bound_factors())) if len(self.oof_log_margin) else 1.0

    def save(self) -> bytes:
        """Serialise (pickle, behind a header recording the library versions)."""
        header = {
            "format": _FORMAT,
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "target": self.target,
            "chosen": self.chosen,
        }
        buf = io.BytesIO()
        buf.write(_MAGIC)
        buf.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        pickle.dump(self, buf, protocol=pickle.HIGHEST_PROTOCOL)
        return buf.getvalue()

    @staticmethod
    def load(data: bytes) -> Surrogate:
        """Read bytes from :meth:`save`. Only load data you wrote: it is a pickle.

        Raises :class:`StaleModel` for a model of another format or scikit-learn version
        and :class:`CorruptModel` for bytes that are not a readable model, both saying to
        refit."""
        data = bytes(data)
        if not data.startswith(_MAGIC):
            raise CorruptModel("not a deepedge surrogate model", hint=_REFIT)
        rest = data[len(_MAGIC) :]
        line, sep, payload = rest.partition(b"\n")
        try:
            header = json.loads(line)
            fitted_with = str(header["sklearn"])
            fmt = int(header["format"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptModel("surrogate model header is unreadable", hint=_REFIT) from exc
        if fmt != _FORMAT:
            raise StaleModel(
                f"the surrogate model is of format {fmt}, this version of deepedge reads "
                f"format {_FORMAT}: {_REFIT}",
                hint="deepedge interference fit",
            )
        if not sep:
            raise CorruptModel("surrogate model data is truncated", hint=_REFIT)
        if _minor(fitted_with) != _minor(sklearn.__version__):
            raise StaleModel(
                f"fitted with scikit-learn {fitted_with}, this is {sklearn.__version__}: {_REFIT}",
                hint="deepedge interference fit",
            )
        try:
            obj = pickle.loads(payload)
        except Exception as exc:
            raise CorruptModel(f"surrogate model data is corrupt: {exc}", hint=_REFIT) from exc
        if not isinstance(obj, Surrogate):
            raise CorruptModel(
                f"surrogate model data holds a {type(obj).__name__}, not a Surrogate",
                hint=_REFIT,
            )
        return obj


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


# --- fitting -----------------------------------------------------------------------------


def _conformal_margin(residuals: np.ndarray, alpha: float) -> float:
    """The ``⌈(n+1)(1−alpha)⌉``-th smallest residual, clipped below at 0."""
    n = len(residuals)
    k = math.ceil((n + 1) * (1.0 - alpha) - _EPS)
    if k > n:  # min_points guarantees this does not happen
        return math.inf
    return max(float(np.sort(residuals)[k - 1]), 0.0)


def _monotone(names: tuple[str, ...], monotone: Mapping[str, int] | None) -> tuple[int, ...]:
    """Per feature of ``names``: its constraint in ``monotone`` (names it lacks are
    unconstrained; constraints of features not in ``names`` are ignored, so a caller may
    pass the map of a full feature set with some columns left out)."""
    monotone = dict(monotone or {})
    bad = {k: v for k, v in monotone.items() if v not in (-1, 0, 1)}
    if bad:
        raise ValueError(f"monotone constraints must be -1, 0 or +1, got {bad}")
    return tuple(int(monotone.get(n, 0)) for n in names)


@dataclass(frozen=True)
class _Adaptive:
    model: Any
    floor: float
    quantile: float
    oof_margin: np.ndarray


def _adaptive(
    X: np.ndarray,
    residuals: np.ndarray,
    scores_sign: float,
    splits: list[tuple[np.ndarray, np.ndarray]],
    cst: tuple[int, ...],
    alpha: float,
    seed: int,
) -> _Adaptive:
    """Normalised conformal on out-of-fold log ``residuals``: a difficulty model σ(x) of
    |r|, itself out of fold on the same splits, and the conformal quantile of the
    one-sided scores ``sign · r / σ``; the final σ model is fitted on all points."""
    size = np.abs(residuals)
    floor = max(_SIGMA_FLOOR * float(np.mean(size)), 1e-6)
    # an upper bound pred·exp(qσ) keeps the prediction's monotonicity when σ has it; a
    # lower bound pred·exp(−qσ) when σ has the opposite one
    cst = cst if scores_sign > 0 else tuple(-c for c in cst)
    target = np.log(size + floor)
    sigma = np.empty(len(size))
    for train, test in splits:
        model = _fit(_sigma(cst, seed), X[train], target[train])
        sigma[test] = np.maximum(np.exp(model.predict(X[test])), floor)
    q = _conformal_margin(scores_sign * residuals / sigma, alpha)
    final = _fit(_sigma(cst, seed), X, target)
    return _Adaptive(final, floor, q, q * sigma)


def fit_surrogate(
    X: ArrayLike,
    y: ArrayLike,
    feature_names: Sequence[str],
    *,
    target: str,
    bound: BoundKind = "upper",
    alpha: float = 0.05,
    folds: int = 5,
    seed: int = 0,
    candidates: Sequence[str] = CANDIDATES,
    monotone: Mapping[str, int] | None = None,
    conformal: Conformal | Literal["auto"] = "auto",
) -> Surrogate:
    """Choose a model for ``y`` (positive) from ``X`` by K-fold CV, calibrate a conformal
    ``bound`` at level ``1 − alpha`` on the out-of-fold residuals, refit on all points.

    ``monotone`` maps feature names to +1 (the target never falls as the feature rises),
    -1 or 0; the "hgb" candidate and an adaptive bound's difficulty model obey it.
    ``conformal``: "global" (one margin), "adaptive" (normalised by a difficulty model;
    needs :data:`ADAPTIVE_MIN_POINTS`) or "auto" (adaptive when there are enough points
    and its mean log margin on the fitting points is the smaller).

    Raises :class:`NotEnoughPoints` below :func:`min_points`, ``ValueError`` for a
    non-positive or non-finite target, malformed shapes or unknown candidates.
    """
    _check_alpha_folds(alpha, folds)
    if bound not in ("upper", "lower"):
        raise ValueError(f"bound must be 'upper' or 'lower', got {bound!r}")
    if conformal not in ("auto", "global", "adaptive"):
        raise ValueError(f"conformal must be 'auto', 'global' or 'adaptive', got {conformal!r}")
    candidates = tuple(candidates)
    unknown = [c for c in candidates if c not in _BUILDERS]
    if not candidates or unknown:
        raise ValueError(
            f"candidates must be a non-empty subset of {CANDIDATES}, got {list(candidates)}"
        )
    Xa = np.asarray(X, dtype=float)
    ya = np.asarray(y, dtype=float)
    if Xa.ndim != 2:
        raise ValueError(f"{target}: X must be 2-D (points x features), got shape {Xa.shape}")
    if ya.ndim != 1 or len(ya) != len(Xa):
        raise ValueError(
            f"{target}: y must be 1-D with one value per row of X ({len(Xa)}), got shape {ya.shape}"
        )
    names = tuple(str(n) for n in feature_names)
    if len(names) != Xa.shape[1]:
        raise ValueError(f"{target}: {len(names)} feature names for {Xa.shape[1]} feature columns")
    if len(set(names)) != len(names):
        raise ValueError(f"{target}: duplicate feature names")
    cst = _monotone(names, monotone)
    if not np.all(np.isfinite(Xa)):
        raise ValueError(f"{target}: features must be finite")
    if not np.all(np.isfinite(ya)) or np.any(ya <= 0):
        bad = int(np.sum(~np.isfinite(ya) | (ya <= 0)))
        raise ValueError(f"{target}: target values must be positive and finite ({bad} are not)")
    n, d = Xa.shape
    need = min_points(d, alpha=alpha, folds=folds)
    if n < need:
        raise NotEnoughPoints(target, n, need)
    if conformal == "adaptive" and n < ADAPTIVE_MIN_POINTS:
        raise NotEnoughPoints(
            f"{target} (adaptive bound)",
            n,
            ADAPTIVE_MIN_POINTS,
            hint="profile more scenarios, or use a global bound (conformal='global')",
        )

    z = np.log(ya)
    splits = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(Xa))
    oof: dict[str, np.ndarray] = {}
    log_err: dict[str, float] = {}
    med_ape: dict[str, float] = {}
    p90_ape: dict[str, float] = {}
    for name in candidates:
        proto = _BUILDERS[name](cst, seed)
        pred = np.empty(n)
        for train, test in splits:
            model = _fit(clone(proto), Xa[train], z[train])
            with _one_thread():
                pred[test] = model.predict(Xa[test])
        oof[name] = pred
        log_err[name] = float(np.mean(np.abs(z - pred)))
        errs = ape(ya, np.exp(pred))
        med_ape[name] = float(np.median(errs))
        p90_ape[name] = float(np.percentile(errs, 90))

    chosen = min(candidates, key=lambda c: log_err[c])  # ties: first in `candidates`
    residuals = z - oof[chosen]
    sign = 1.0 if bound == "upper" else -1.0
    margin = _conformal_margin(sign * residuals, alpha)
    adaptive = None
    if conformal != "global" and n >= ADAPTIVE_MIN_POINTS:
        adaptive = _adaptive(Xa, residuals, sign, splits, cst, alpha, seed)
        # "auto" keeps it only when it is narrower on average (in log terms: the
        # geometric mean of bound / prediction) than one global margin
        if conformal == "auto" and not np.mean(adaptive.oof_margin) < margin:
            adaptive = None
    final = _fit(_BUILDERS[chosen](cst, seed), Xa, z)
    return Surrogate(
        target=target,
        feature_names=names,
        chosen=chosen,
        model=final,
        cv_error=med_ape,
        cv_p90_error=p90_ape,
        bound=bound,
        alpha=float(alpha),
        log_margin=margin,
        n_points=n,
        oof_pred=np.exp(oof[chosen]),
        cv_log_error=log_err,
        monotone=cst,
        conformal="adaptive" if adaptive else "global",
        sigma_model=adaptive.model if adaptive else None,
        sigma_floor=adaptive.floor if adaptive else 0.0,
        scale_quantile=adaptive.quantile if adaptive else 0.0,
        oof_log_margin=adaptive.oof_margin if adaptive else np.full(n, margin),
    )
