"""User code that must reach other processes: import paths and callables pickled by value.

Training agents, the profiler's runs and the interference lab's training co-runner are
separate processes (on a Ray backend, other machines), so a model factory, loss or
optimiser factory has to travel as data in the job spec (:class:`~deepedge.spec.CodeSpec`):

* ``"package.module:function"`` (a string) is imported where it runs, like torchrun or
  uvicorn do: robust, and the code is whatever is installed there. The coordinator's
  working directory and the directory of the script it runs go on ``sys.path`` first, so
  a module beside the script imports on an emulated cluster as it does at home.
* a callable that lives in an importable module is sent as that import path;
* a callable that does not (defined in ``__main__``, a lambda, a closure) is pickled by
  value with cloudpickle, so a one-file script works without packaging.

No torch here: the planner and the CLI import this without paying for it.
"""

from __future__ import annotations

import base64
import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from deepedge.errors import SpecError
from deepedge.spec import CodeSpec

__all__ = ["code_spec", "default_sys_path", "resolve"]


def default_sys_path() -> list[str]:
    """Where the agents look for user modules first: the coordinator's working directory
    and its main script's directory (what ``python script.py`` itself puts on the path)."""
    paths = [os.getcwd()]
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main:
        paths.append(os.path.dirname(os.path.abspath(main)))
    return list(dict.fromkeys(paths))


def _importable(obj: Any) -> str | None:
    """``module:qualname`` when importing that gives back ``obj`` itself, else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is obj else None


def code_spec(obj: Any, what: str) -> CodeSpec:
    """``obj`` (an import-path string or a callable) as a :class:`CodeSpec`; ``what``
    names its role in messages ("model factory", "loss")."""
    if isinstance(obj, str):
        spec = _spec(what, name=obj, ref=obj)
        resolve(spec, what=what)  # a typo fails here, not in every agent
        return spec
    if not callable(obj):
        raise SpecError(
            f"the {what} must be a callable or an import path 'package.module:name', "
            f"got {type(obj).__name__}",
            hint="pass the function itself, e.g. model=make_model",
        )
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    ref = _importable(obj)
    if ref is not None:
        return _spec(what, name=name, ref=ref)
    import cloudpickle

    try:
        blob = cloudpickle.dumps(obj)
    except Exception as err:  # cloudpickle raises whatever the object's state raises
        raise SpecError(
            f"the {what} {name!r} cannot be pickled to send it to the devices: "
            f"{type(err).__name__}: {_first_line(err)}",
            hint="define it at module level (in the script or a module), without open "
            "files, locks or sockets in its closure, or pass 'package.module:name'",
        ) from None
    return _spec(what, name=name, pickled=base64.b64encode(blob).decode("ascii"))


def _spec(what: str, **fields: Any) -> CodeSpec:
    from pydantic import ValidationError

    try:
        return CodeSpec(**fields)
    except ValidationError:
        raise SpecError(
            f"the {what} {fields.get('name')!r} is not an import path 'package.module:name'",
            hint="write it as 'package.module:function' (a colon before the attribute)",
        ) from None


def resolve(spec: CodeSpec, *, what: str = "code", sys_path: Sequence[str] = ()) -> Callable:
    """The callable ``spec`` names, imported or unpickled here (once per process).

    ``sys_path`` entries are put first on ``sys.path`` (the coordinator's, see
    :func:`default_sys_path`), so the same import path works in every process.
    """
    return _resolve(spec.ref, spec.pickled, spec.name, what, tuple(sys_path))


@functools.lru_cache(maxsize=64)
def _resolve(
    ref: str | None, pickled: str | None, name: str, what: str, sys_path: tuple[str, ...]
) -> Callable:
    for path in reversed(sys_path):
        if path not in sys.path:
            sys.path.insert(0, path)
    if ref is not None:
        module, _, attr = ref.partition(":")
        try:
            found: Any = importlib.import_module(module)
            for part in attr.split("."):
                found = getattr(found, part)
        except Exception as err:  # ImportError, AttributeError, or the module's own error
            raise SpecError(
                f"cannot import the {what} {ref!r}: {type(err).__name__}: {_first_line(err)}",
                hint="check the module is importable here (installed, or beside the script) "
                "and the name after ':' exists in it",
            ) from None
    else:
        import cloudpickle

        assert pickled is not None
        try:
            found = cloudpickle.loads(base64.b64decode(pickled))
        except Exception as err:
            raise SpecError(
                f"cannot unpickle the {what} {name!r} here: "
                f"{type(err).__name__}: {_first_line(err)}",
                hint="the code it uses must be importable in every process (same packages "
                "and versions); or pass 'package.module:name'",
            ) from None
    if not callable(found):
        raise SpecError(f"the {what} {name!r} is a {type(found).__name__}, not a callable")
    return found


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"
