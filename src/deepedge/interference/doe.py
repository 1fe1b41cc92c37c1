"""Design of experiments: which co-location scenarios to profile.

FECBench profiles a small, well-spread set of scenarios (how hard each LC app and each
training job pushes the device) and fits a surrogate model to them, instead of measuring
every combination. A :class:`FactorSpace` names the knobs; :meth:`FactorSpace.lhs` draws a
Latin hypercube over them (every one of ``n`` equal strata of every continuous factor holds
exactly one point), :meth:`FactorSpace.grid` gives a full factorial for small spaces, and
:meth:`FactorSpace.random` draws i.i.d. held-out scenarios to check the model on.

A point is a plain ``dict`` of factor name to ``float`` (continuous), ``int`` (integer) or
``str`` (categorical level), so it serialises to JSON as is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import qmc

__all__ = ["Factor", "FactorSpace", "Point"]

Point = dict[str, float | int | str]


@dataclass(frozen=True)
class Factor:
    """One knob of a scenario.

    Continuous on ``[low, high]`` by default; ``log`` samples it uniformly in log space
    (needs ``low > 0``); ``integer`` makes it an integer in ``[ceil(low), floor(high)]``.
    Setting ``levels`` makes it categorical (``low``/``high``/``log``/``integer`` ignored).
    """

    name: str
    low: float = 0.0
    high: float = 1.0
    levels: tuple[str, ...] | None = None
    log: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"factor name must be a non-empty string, got {self.name!r}")
        if self.levels is not None:
            levels = tuple(self.levels)
            object.__setattr__(self, "levels", levels)
            if not levels:
                raise ValueError(f"factor {self.name!r}: categorical factor needs >= 1 level")
            if len(set(levels)) != len(levels):
                raise ValueError(f"factor {self.name!r}: duplicate levels in {list(levels)}")
            if not all(isinstance(level, str) for level in levels):
                raise ValueError(f"factor {self.name!r}: levels must be strings, got {levels}")
            return
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"factor {self.name!r}: low and high must be finite")
        if low >= high:
            raise ValueError(f"factor {self.name!r}: low ({low:g}) must be below high ({high:g})")
        if self.log and low <= 0:
            raise ValueError(f"factor {self.name!r}: a log-scale factor needs low > 0, got {low:g}")
        if self.integer and math.ceil(low) > math.floor(high):
            raise ValueError(f"factor {self.name!r}: no integer lies in [{low:g}, {high:g}]")

    @property
    def categorical(self) -> bool:
        return self.levels is not None

    def from_unit(self, u: np.ndarray) -> list[float | int | str]:
        """Map values in ``[0, 1)`` to factor values (stratum-preserving)."""
        u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        if self.levels is not None:
            # level i gets exactly the unit interval [i/L, (i+1)/L)
            idx = np.minimum(np.floor(u * len(self.levels)).astype(int), len(self.levels) - 1)
            return [self.levels[i] for i in idx]
        if self.integer:
            lo, hi = math.ceil(self.low), math.floor(self.high)
            if self.log:
                x = np.exp(np.log(self.low) + u * (np.log(self.high) - np.log(self.low)))
                ints = np.clip(np.rint(x), lo, hi)
            else:
                # every integer gets an equal share of the unit interval
                ints = np.minimum(np.floor(lo + u * (hi - lo + 1)), hi)
            return [int(v) for v in ints]
        if self.log:
            x = np.exp(np.log(self.low) + u * (np.log(self.high) - np.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        return [float(v) for v in np.clip(x, self.low, self.high)]

    def grid_values(self, k: int) -> list[float | int | str]:
        """``k`` evenly spaced values including both ends (log-spaced if ``log``);
        all levels for a categorical factor. Integer values are de-duplicated."""
        if self.levels is not None:
            return list(self.levels)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
            raise ValueError(
                f"factor {self.name!r}: a grid needs >= 2 levels per continuous factor, got {k!r}"
            )
        if self.log:
            x = np.geomspace(self.low, self.high, int(k))
        else:
            x = np.linspace(self.low, self.high, int(k))
        x[0], x[-1] = self.low, self.high  # exact ends despite rounding
        if not self.integer:
            return [float(v) for v in x]
        lo, hi = math.ceil(self.low), math.floor(self.high)
        ints = [int(v) for v in np.clip(np.rint(x), lo, hi)]
        return list(dict.fromkeys(ints))


@dataclass(frozen=True)
class FactorSpace:
    """The scenario space: an ordered set of uniquely named factors."""

    factors: tuple[Factor, ...]

    def __post_init__(self) -> None:
        factors = tuple(self.factors)
        object.__setattr__(self, "factors", factors)
        if not factors:
            raise ValueError("a factor space needs at least one factor")
        for f in factors:
            if not isinstance(f, Factor):
                raise ValueError(f"factor space entries must be Factor, got {f!r}")
        names = [f.name for f in factors]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"duplicate factor names: {', '.join(dups)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.factors)

    @property
    def d(self) -> int:
        return len(self.factors)

    def _points(self, u: np.ndarray) -> list[Point]:
        columns = [f.from_unit(u[:, j]) for j, f in enumerate(self.factors)]
        names = self.names
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]

    def lhs(self, n: int, seed: int = 0, *, optimize: bool = True) -> list[Point]:
        """A Latin hypercube of ``n`` points: each of ``n`` equal strata of each continuous
        factor (equal in log space for ``log`` factors) holds exactly one point; a
        categorical factor with ``L`` levels gets ``n / L`` points per level when ``L``
        divides ``n``. Reproducible for a given ``seed``.

        ``optimize`` permutes the strata to lower the centred discrepancy (scipy's
        ``random-cd``; it keeps the Latin property and costs about a second for 100 points
        in 15 dimensions); ``False`` gives a plain Latin hypercube at once."""
        n = _check_n(n)
        d = self.d
        # random-cd permutes within columns, so it keeps the LHS property while
        # spreading the points better in the joint space; it needs d >= 2
        optimization = "random-cd" if optimize and d >= 2 and n >= 2 else None
        engine = qmc.LatinHypercube(d, optimization=optimization, rng=seed)
        return self._points(engine.random(n))

    def random(self, n: int, seed: int) -> list[Point]:
        """``n`` i.i.d. uniform points (uniform in log space for ``log`` factors)."""
        n = _check_n(n)
        return self._points(np.random.default_rng(seed).random((n, self.d)))

    def _grid_values(self, levels: int | Mapping[str, int]) -> list[list[float | int | str]]:
        if isinstance(levels, Mapping):
            unknown = sorted(set(levels) - set(self.names))
            if unknown:
                raise ValueError(f"grid levels name unknown factors: {', '.join(unknown)}")
            missing = [f.name for f in self.factors if not f.categorical and f.name not in levels]
            if missing:
                raise ValueError(
                    f"grid levels missing for continuous factors: {', '.join(missing)}"
                )
            return [f.grid_values(levels.get(f.name, 0)) for f in self.factors]
        return [f.grid_values(levels) for f in self.factors]

    def grid(self, levels: int | Mapping[str, int]) -> list[Point]:
        """Full factorial: ``levels`` evenly spaced values per continuous factor (one count
        for all, or per factor name), both ends included; all levels of categorical ones.
        The last factor varies fastest."""
        values = self._grid_values(levels)
        names = self.names
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]

    def grid_size(self, levels: int | Mapping[str, int]) -> int:
        """Number of points :meth:`grid` would return."""
        return math.prod(len(v) for v in self._grid_values(levels))

    @classmethod
    def of(cls, factors: Sequence[Factor]) -> FactorSpace:
        return cls(tuple(factors))


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"number of points must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"number of points must be >= 1, got {n}")
    return int(n)
