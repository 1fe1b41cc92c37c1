"""Integer shares of a global batch, identical on every machine.

The planner splits each global batch into per-device shares and the sampler on every rank
splits the last, partial step the same way, independently: so the split is exact rational
arithmetic (no float rounding that could differ between ranks), in a module of its own
that both can import without loading the other's dependencies.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

from deepedge.errors import SpecError

__all__ = ["is_int", "split_batch"]


def is_int(value: object) -> bool:
    # bool is an int subclass, but ``True`` as a batch size is always a bug.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _exact(weight: object, index: int) -> Fraction:
    """Turn a weight into an exact fraction so every rank rounds identically."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise SpecError(f"split_batch: weight {index} is {weight!r}, not a number")
    value = Fraction(weight) if isinstance(weight, numbers.Rational) else None
    if value is None:
        as_float = float(weight)
        if not math.isfinite(as_float):
            raise SpecError(f"split_batch: weight {index} is {weight!r}, not a finite number")
        value = Fraction(as_float)
    if value < 0:
        raise SpecError(f"split_batch: weight {index} is {weight!r}, which is negative")
    return value


def _largest_remainder(total: int, weights: Sequence[Fraction]) -> list[int]:
    """Hamilton apportionment: floors of the exact quotas, then the leftover units go to
    the largest remainders, ties to the lowest index (rank)."""
    weight_sum = sum(weights, Fraction(0))
    quotas = [total * w / weight_sum for w in weights]
    shares = [math.floor(q) for q in quotas]
    leftover = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[:leftover]:
        shares[i] += 1
    return shares


def split_batch(total: int, weights: Sequence[float], *, min_each: int = 0) -> list[int]:
    """Split ``total`` items into integer shares proportional to ``weights``.

    Uses the largest-remainder method, so the shares sum to ``total`` and each one is
    within 1 of its exact proportional quota; ties go to the lower index. Arithmetic is
    exact (floats are converted to fractions), which makes the result identical on every
    machine — the sampler relies on that, since all ranks compute it independently.

    ``min_each`` guarantees every share is at least that many (the planner uses it so no
    device is handed a zero local batch). Shares whose quota falls below the floor are
    pinned to it and the rest is re-apportioned among the others, so shares that are not
    pinned stay as proportional as possible. If ``total < min_each * len(weights)`` the
    floor cannot be met and :class:`SpecError` is raised.
    """
    if not is_int(total) or total < 0:
        raise SpecError(f"split_batch: total must be an integer >= 0, got {total!r}")
    if not is_int(min_each) or min_each < 0:
        raise SpecError(f"split_batch: min_each must be an integer >= 0, got {min_each!r}")
    if len(weights) == 0:
        raise SpecError("split_batch: weights is empty; need at least one share")
    exact = [_exact(w, i) for i, w in enumerate(weights)]
    if sum(exact) == 0:
        raise SpecError(f"split_batch: weights {list(weights)!r} sum to zero")
    total, min_each = int(total), int(min_each)
    n = len(exact)
    if min_each * n > total:
        raise SpecError(
            f"split_batch: cannot give each of {n} shares at least {min_each} out of {total}",
            hint=f"raise the total to at least {min_each * n} or lower min_each",
        )

    # Water-filling: pin shares whose proportional quota is under the floor, then
    # re-apportion what is left among the free ones until no new share needs pinning.
    # Pinning only lowers the others' quotas, so this ends within n rounds; and because
    # total >= min_each * n, at least one share (with positive weight) always stays free.
    pinned: set[int] = set()
    while True:
        free = [i for i in range(n) if i not in pinned]
        remaining = total - min_each * len(pinned)
        free_sum = sum((exact[i] for i in free), Fraction(0))
        newly = [i for i in free if remaining * exact[i] < min_each * free_sum]
        if not newly:
            break
        pinned.update(newly)

    shares = [min_each] * n
    for i, share in zip(free, _largest_remainder(remaining, [exact[i] for i in free]), strict=True):
        shares[i] = share
    return shares
