"""Surrogate models of interference: predict an LC app's tail latency (or a training job's
throughput) from a scenario's features, with a calibrated one-sided bound.

FECBench fits a regression model to a few dozen profiled co-location scenarios and uses it
to predict scenarios never run. The targets are positive and span orders of magnitude
(a p99 goes from milliseconds to seconds once a device saturates), so every model here is
fitted on ``log(y)`` and errors are relative.

Four candidate models are tried — gradient boosting, a random forest, a Gaussian process
and ridge regression — and the one with the lowest out-of-fold mean absolute log error in
shuffled K-fold cross-validation is kept. Its out-of-fold log residuals give a split-free
conformal margin (a simple CV+ / jackknife+ variant): for an upper bound the
``⌈(n+1)(1−α)⌉``-th smallest residual, so that a fresh scenario's true value lies below
``prediction · exp(margin)`` with probability about ``1 − α``. The chosen model is then
refitted on all points.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import sklearn
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from deepedge.errors import DeepEdgeError

__all__ = [
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

CANDIDATES: tuple[str, ...] = ("gbr", "rf", "gp", "linear")

BoundKind = Literal["upper", "lower"]

_MAGIC = b"DEEPEDGE-SURROGATE\n"
_FORMAT = 1
_EPS = 1e-9


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


def _gbr(n_features: int, seed: int) -> Any:
    return GradientBoostingRegressor(
        n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed
    )


def _rf(n_features: int, seed: int) -> Any:
    return RandomForestRegressor(
        n_estimators=100, min_samples_leaf=2, max_features=1.0, random_state=seed, n_jobs=1
    )


def _gp(n_features: int, seed: int) -> Any:
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
        length_scale=np.ones(n_features), length_scale_bounds=(1e-2, 1e3), nu=2.5
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


def _linear(n_features: int, seed: int) -> Any:
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))


_BUILDERS: dict[str, Callable[[int, int], Any]] = {
    "gbr": _gbr,
    "rf": _rf,
    "gp": _gp,
    "linear": _linear,
}


def _fit(model: Any, X: np.ndarray, z: np.ndarray) -> Any:
    with warnings.catch_warnings():
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
    """Conformal quantile of the chosen model's out-of-fold log residuals (>= 0)."""
    n_points: int
    oof_pred: np.ndarray
    """Out-of-fold predictions of the chosen model, in target units."""
    cv_log_error: dict[str, float] = field(default_factory=dict)
    """Per candidate: out-of-fold mean absolute log error, the selection criterion."""

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

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Point prediction (always > 0); one value per row of ``X``."""
        return np.exp(np.asarray(self.model.predict(self._X(X)), dtype=float))

    def predict_bound(self, X: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``(prediction, bound)``: the bound lies above the prediction for an upper bound,
        below it for a lower one, and holds with probability about ``1 − alpha``."""
        pred = self.predict(X)
        factor = math.exp(self.log_margin)
        bound = pred * factor if self.bound == "upper" else pred / factor
        return pred, bound

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
        """Read bytes from :meth:`save`. Only load data you wrote: it is a pickle."""
        data = bytes(data)
        if not data.startswith(_MAGIC):
            raise CorruptModel(
                "not a deepedge surrogate model", hint="refit with 'deepedge interference fit'"
            )
        rest = data[len(_MAGIC) :]
        line, sep, payload = rest.partition(b"\n")
        try:
            header = json.loads(line)
            fitted_with = str(header["sklearn"])
            fmt = int(header["format"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptModel(
                "surrogate model header is unreadable",
                hint="refit with 'deepedge interference fit'",
            ) from exc
        if not sep or fmt != _FORMAT:
            raise CorruptModel(
                f"surrogate model data is truncated or of format {fmt}, not {_FORMAT}",
                hint="refit with 'deepedge interference fit'",
            )
        if _minor(fitted_with) != _minor(sklearn.__version__):
            raise StaleModel(
                f"fitted with scikit-learn {fitted_with}, this is {sklearn.__version__}: "
                "refit with 'deepedge interference fit'",
                hint="deepedge interference fit",
            )
        try:
            obj = pickle.loads(payload)
        except Exception as exc:
            raise CorruptModel(
                f"surrogate model data is corrupt: {exc}",
                hint="refit with 'deepedge interference fit'",
            ) from exc
        if not isinstance(obj, Surrogate):
            raise CorruptModel(
                f"surrogate model data holds a {type(obj).__name__}, not a Surrogate",
                hint="refit with 'deepedge interference fit'",
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
) -> Surrogate:
    """Choose a model for ``y`` (positive) from ``X`` by K-fold CV, calibrate a conformal
    ``bound`` at level ``1 − alpha`` on the out-of-fold residuals, refit on all points.

    Raises :class:`NotEnoughPoints` below :func:`min_points`, ``ValueError`` for a
    non-positive or non-finite target, malformed shapes or unknown candidates.
    """
    _check_alpha_folds(alpha, folds)
    if bound not in ("upper", "lower"):
        raise ValueError(f"bound must be 'upper' or 'lower', got {bound!r}")
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
    if not np.all(np.isfinite(Xa)):
        raise ValueError(f"{target}: features must be finite")
    if not np.all(np.isfinite(ya)) or np.any(ya <= 0):
        bad = int(np.sum(~np.isfinite(ya) | (ya <= 0)))
        raise ValueError(f"{target}: target values must be positive and finite ({bad} are not)")
    n, d = Xa.shape
    need = min_points(d, alpha=alpha, folds=folds)
    if n < need:
        raise NotEnoughPoints(target, n, need)

    z = np.log(ya)
    splits = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(Xa))
    oof: dict[str, np.ndarray] = {}
    log_err: dict[str, float] = {}
    med_ape: dict[str, float] = {}
    p90_ape: dict[str, float] = {}
    for name in candidates:
        proto = _BUILDERS[name](d, seed)
        pred = np.empty(n)
        for train, test in splits:
            model = _fit(clone(proto), Xa[train], z[train])
            pred[test] = model.predict(Xa[test])
        oof[name] = pred
        log_err[name] = float(np.mean(np.abs(z - pred)))
        errs = ape(ya, np.exp(pred))
        med_ape[name] = float(np.median(errs))
        p90_ape[name] = float(np.percentile(errs, 90))

    chosen = min(candidates, key=lambda c: log_err[c])  # ties: first in `candidates`
    residuals = z - oof[chosen]
    margin = _conformal_margin(residuals if bound == "upper" else -residuals, alpha)
    final = _fit(_BUILDERS[chosen](d, seed), Xa, z)
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
    )
