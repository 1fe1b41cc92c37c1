"""The fitted interference model the planner asks: "p95 of app A on device D if training
runs there with batch b at intensity c?" and "how fast does training go beside the apps?"

It bundles three surrogates (LC p95 and p99 latency with an upper bound, training
throughput with a lower bound) and the usage books of the devices it was fitted on, so a
prediction needs only the stored model, not a live cluster.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepedge.api import Scenario, TrainLoad
from deepedge.errors import DeepEdgeError
from deepedge.interference.kb import InterferenceRow
from deepedge.interference.surrogate import NotEnoughPoints, Surrogate, fit_surrogate
from deepedge.interference.usage import (
    LATENCY_FEATURES,
    LATENCY_MONOTONE,
    THROUGHPUT_FEATURES,
    THROUGHPUT_MONOTONE,
    UsageBook,
    latency_features,
    throughput_features,
)
from deepedge.profile.kb import KnowledgeBase

__all__ = [
    "MODEL_NAME",
    "InterferenceModel",
    "LatencyPrediction",
    "NoInterferenceModel",
    "Observation",
    "latency_rows",
    "observations",
    "throughput_rows",
]

MODEL_NAME = "interference"
_FORMAT = 1


class NoInterferenceModel(DeepEdgeError):
    """No fitted model (or none for this device) in the knowledge base."""


@dataclass(frozen=True)
class LatencyPrediction:
    """Predicted tail latency of one LC app, with upper bounds at the model's coverage."""

    app: str
    p95_ms: float
    p95_upper_ms: float
    p99_ms: float
    p99_upper_ms: float
    solo_p95_ms: float

    def to_dict(self) -> dict[str, float | str]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class Observation:
    """One measured run, ready for fitting: its scenario, device book and outcomes."""

    scenario: Scenario
    book: UsageBook
    p95_ms: float
    p99_ms: float
    train_samples_per_s: float | None


def observations(
    rows: Sequence[InterferenceRow], books: Mapping[str, UsageBook]
) -> list[Observation]:
    """Knowledge-base runs whose device has a usage book, as fitting rows."""
    return [
        Observation(
            Scenario.from_dict(row.scenario),
            books[row.device],
            float(row.result["p95_ms"]),
            float(row.result["p99_ms"]),
            row.result.get("train_samples_per_s"),
        )
        for row in rows
        if row.device in books
    ]


def _solo(book: UsageBook, sc: Scenario, q: str) -> float:
    """The app's latency quantile ``q`` alone at the scenario's rate (from calibration)."""
    return max(float(book.app(str(sc.app), sc.rate_rps).get(f"{q}_ms", 0.0)), 1e-3)


def app_scenarios(
    apps: Mapping[str, tuple[str, float]], train: TrainLoad | None
) -> dict[str, Scenario]:
    """Per app (name -> (kind, rate)) the scenario of it beside the device's other apps and
    ``train``; two apps of one kind merge their rates (the model knows one per kind)."""
    out = {}
    for name, (kind, rate) in apps.items():
        others: dict[str, float] = {}
        for other, (k, r) in apps.items():
            if other != name:
                others[k] = others.get(k, 0.0) + r
        if kind in others:
            rate += others.pop(kind)
        out[name] = Scenario(device="", app=kind, rate_rps=rate, train=train, other_apps=others)
    return out


def latency_rows(obs: Sequence[Observation]) -> list[Observation]:
    return [
        o
        for o in obs
        if o.scenario.app is not None and math.isfinite(o.p95_ms) and math.isfinite(o.p99_ms)
    ]


def throughput_rows(obs: Sequence[Observation]) -> list[Observation]:
    return [
        o
        for o in obs
        if o.scenario.train is not None and o.train_samples_per_s and o.train_samples_per_s > 0
    ]


@dataclass
class InterferenceModel:
    p95: Surrogate
    p99: Surrogate
    throughput: Surrogate | None
    books: dict[str, UsageBook]
    relative: dict[str, bool] = field(default_factory=dict)
    """Per latency target: whether the surrogate predicts the slowdown over the app alone
    (latency / solo latency) rather than the latency itself (chosen by CV)."""
    resident: str = ""
    """The training job it models as a co-runner (its knowledge-base resident name; empty
    when unknown). Its usage books hold that job's training rows, so another job's plan
    must not use it."""

    # --- fitting

    @classmethod
    def fit(
        cls,
        obs: Sequence[Observation],
        books: Mapping[str, UsageBook],
        *,
        alpha: float = 0.05,
        seed: int = 0,
        folds: int = 5,
        resident: str = "",
    ) -> InterferenceModel:
        """Fit the latency and throughput surrogates on ``obs`` (see :func:`observations`).

        Raises :class:`~deepedge.interference.surrogate.NotEnoughPoints` saying how many
        more runs a model needs. Throughput is left out (None) when too few runs had the
        training job and fitting it alone would fail.
        """
        lat = latency_rows(obs)
        X = np.array([latency_features(o.book, o.scenario) for o in lat], dtype=float)
        X = X.reshape(-1, len(LATENCY_FEATURES))
        kwargs: dict[str, Any] = {"alpha": alpha, "seed": seed, "folds": folds}
        fitted: dict[str, Surrogate] = {}
        relative: dict[str, bool] = {}
        for q in ("p95", "p99"):
            y = np.array([getattr(o, f"{q}_ms") for o in lat], dtype=float)
            solo = np.array([_solo(o.book, o.scenario, q) for o in lat], dtype=float)
            # Latency itself, or the slowdown over the app alone: in log space their CV
            # residuals are the same quantity, so the lower CV error picks one fairly.
            absolute = fit_surrogate(
                X,
                y,
                LATENCY_FEATURES,
                target=f"LC {q} latency",
                monotone=LATENCY_MONOTONE,
                **kwargs,
            )
            slowdown = fit_surrogate(
                X,
                y / solo,
                LATENCY_FEATURES,
                target=f"LC {q} slowdown",
                monotone=LATENCY_MONOTONE,
                **kwargs,
            )
            better = slowdown.cv_log_error[slowdown.chosen] < absolute.cv_log_error[absolute.chosen]
            fitted[q], relative[q] = (slowdown, True) if better else (absolute, False)
        p95, p99 = fitted["p95"], fitted["p99"]
        thr = throughput_rows(obs)
        throughput = None
        Xt = np.array([throughput_features(o.book, o.scenario) for o in thr], dtype=float)
        with contextlib.suppress(NotEnoughPoints):
            throughput = fit_surrogate(
                Xt.reshape(-1, len(THROUGHPUT_FEATURES)),
                [float(o.train_samples_per_s or 0) for o in thr],
                THROUGHPUT_FEATURES,
                target="training throughput",
                bound="lower",
                monotone=THROUGHPUT_MONOTONE,
                **kwargs,
            )
        return cls(p95, p99, throughput, dict(books), relative, resident)

    # --- prediction

    def check_features(self) -> None:
        """Raise :class:`~deepedge.interference.surrogate.StaleModel` (saying to refit)
        when a part was fitted on other features than this version computes."""
        self.p95.require_features(LATENCY_FEATURES)
        self.p99.require_features(LATENCY_FEATURES)
        if self.throughput is not None:
            self.throughput.require_features(THROUGHPUT_FEATURES)

    def book(self, device_key: str) -> UsageBook:
        book = self.books.get(device_key)
        if book is None:
            kind = json.loads(device_key).get("kind", "?")
            raise NoInterferenceModel(
                f"the interference model has no profile of device kind {kind!r} "
                "with this hardware and emulation",
                hint="run `deepedge interference profile` on a cluster with this device, "
                "then `deepedge interference fit`",
            )
        return book

    def predict_latency(self, device_key: str, sc: Scenario) -> LatencyPrediction:
        """Tail latency of ``sc``'s target app beside its co-runners."""
        self.check_features()
        book = self.book(device_key)
        out = []
        for q in ("p95", "p99"):
            value, bound = self._latency_ms(q, book, [sc])
            out += [float(value[0]), float(bound[0])]
        return LatencyPrediction(str(sc.app), *out, _solo(book, sc, "p95"))

    def _latency_ms(
        self, q: str, book: UsageBook, scenarios: Sequence[Scenario]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Latency quantile ``q`` of each scenario's app and its upper bound, in ms (a
        slowdown surrogate's output times the app's solo latency)."""
        part = self.p95 if q == "p95" else self.p99
        X = np.array([latency_features(book, sc) for sc in scenarios], dtype=float)
        value, bound = part.predict_bound(X.reshape(-1, len(LATENCY_FEATURES)))
        if self.relative.get(q):
            scale = np.array([_solo(book, sc, q) for sc in scenarios])
            value, bound = value * scale, bound * scale
        return value, bound

    def out_of_fold_ms(self, q: str, obs: Sequence[Observation]) -> np.ndarray:
        """Cross-validation predictions of latency quantile ``q`` ("p95"/"p99") in ms, for
        the fitting rows ``obs`` (the surrogate's own are slowdowns when it chose those)."""
        part = self.p95 if q == "p95" else self.p99
        rows = latency_rows(obs)
        scale = [_solo(o.book, o.scenario, q) if self.relative.get(q) else 1.0 for o in rows]
        return part.oof_pred * np.asarray(scale, dtype=float)

    def predict_throughput(self, device_key: str, sc: Scenario) -> tuple[float, float]:
        """Training samples/s of ``sc`` beside its co-runners, and a lower bound."""
        if self.throughput is None:
            raise NoInterferenceModel(
                "the interference model has no training-throughput part",
                hint="profile with runs that include the training job, then refit",
            )
        self.check_features()
        pred, low = self.throughput.predict_bound([throughput_features(self.book(device_key), sc)])
        return float(pred[0]), float(low[0])

    def apps_beside_training(
        self,
        device_key: str,
        apps: Mapping[str, tuple[str, float]],
        train: TrainLoad | None,
    ) -> dict[str, LatencyPrediction]:
        """The planner's question for one device: each LC app's latency when training runs
        there at ``train`` (None: no training). ``apps`` maps app name -> (kind, rate);
        the device's other apps count as co-runners of each."""
        return {
            name: self.predict_latency(device_key, sc)
            for name, sc in app_scenarios(apps, train).items()
        }

    def p95_upper_beside_training(
        self,
        device_key: str,
        apps: Mapping[str, tuple[str, float]],
        batches: Sequence[int],
        intensity: float,
    ) -> dict[str, np.ndarray]:
        """Each app's p95 upper bound (ms) beside training at each of ``batches`` (0: no
        training) and ``intensity``: :meth:`apps_beside_training` for many batches in one
        surrogate call per app, so the planner can check every batch size."""
        self.check_features()
        book = self.book(device_key)
        per_batch = [
            app_scenarios(apps, TrainLoad(b, intensity) if b > 0 else None) for b in batches
        ]
        return {
            name: self._latency_ms("p95", book, [row[name] for row in per_batch])[1]
            for name in apps
        }

    # --- storage

    def save(self, kb: KnowledgeBase, name: str = MODEL_NAME) -> None:
        blob = pickle.dumps(
            {
                "format": _FORMAT,
                "p95": self.p95.save(),
                "p99": self.p99.save(),
                "throughput": self.throughput.save() if self.throughput else None,
                "books": {k: b.to_dict() for k, b in self.books.items()},
                "relative": self.relative,
                "resident": self.resident,
            }
        )
        kb.save_model(name, blob, self.summary())

    @classmethod
    def load(cls, kb: KnowledgeBase, name: str = MODEL_NAME) -> InterferenceModel:
        """The model stored in ``kb``. Raises :class:`NoInterferenceModel` when there is
        none, :class:`~deepedge.interference.surrogate.StaleModel` when it was fitted by
        another version (another surrogate format, scikit-learn or feature set) and must
        be refitted."""
        stored = kb.load_model(name)
        if stored is None:
            raise NoInterferenceModel(
                f"knowledge base {kb.path} has no fitted interference model",
                hint="run `deepedge interference profile` then `deepedge interference fit`",
            )
        return cls.from_blob(stored[0])

    @classmethod
    def from_blob(cls, blob: bytes) -> InterferenceModel:
        """The model :meth:`save` stored as ``blob`` (for readers that open the knowledge
        base themselves, read-only); raises as :meth:`load` does."""
        data = pickle.loads(blob)
        if data.get("format") != _FORMAT:
            raise NoInterferenceModel(
                "the stored interference model has an unknown format",
                hint="refit it with `deepedge interference fit`",
            )
        model = cls(
            Surrogate.load(data["p95"]),
            Surrogate.load(data["p99"]),
            Surrogate.load(data["throughput"]) if data["throughput"] else None,
            {k: UsageBook.from_dict(b) for k, b in data["books"].items()},
            dict(data.get("relative", {})),
            str(data.get("resident", "")),
        )
        model.check_features()
        return model

    def summary(self) -> dict[str, Any]:
        """What was fitted and how well it cross-validated (for reports and `fit`'s table)."""
        parts = {"p95": self.p95, "p99": self.p99, "throughput": self.throughput}
        return {
            name: None
            if s is None
            else {
                "chosen": s.chosen,
                "target": s.target,
                "points": s.n_points,
                "cv_median_ape_pct": s.cv_error,
                "cv_p90_ape_pct": s.cv_p90_error,
                "bound": s.bound,
                "alpha": s.alpha,
                "conformal": s.conformal,
                "bound_factor": math.exp(s.log_margin),
                "bound_factor_median": s.median_bound_factor(),
            }
            for name, s in parts.items()
        } | {"devices": [json.loads(k)["kind"] for k in self.books]}
