"""Lazy package exports (PEP 562): a package names its public API in ``__init__`` but
imports each defining module only when one of its names is first used.

Why: ``deepedge.apps`` and ``deepedge.interference`` re-export names from modules that
import torch, scikit-learn or sockets; a caller that needs one constant (the planner, a
worker starting under a small CPU quota) must not pay for the rest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], where: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose globals are ``namespace`` and
    whose name ``n`` is defined in module ``where[n]``:

        __getattr__, __dir__ = lazy_exports(globals(), _LAZY)
    """

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups are plain attribute reads
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return getattr_, dir_
