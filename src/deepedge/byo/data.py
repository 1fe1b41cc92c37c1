"""A user's data set as two arrays: inputs ``x`` (N, ...) and targets ``y`` (N, ...).

``deepedge.fit`` takes a torch ``Dataset`` or ``(X, y)`` arrays/tensors and turns them
into a :class:`TensorData` once, on the coordinator: every device then loads the same
samples from one ``.npz`` file (no pickle), as it does the built-in image data sets, and
the uneven-batch sampler indexes them by position. Floats become float32 and integers
int64 (class labels, token ids), the dtypes every agent's model and loss expect.

It offers what the run controller and the agents use of
:class:`~deepedge.data.ArrayDataset`: ``len``, ``save``, ``load`` and ``to_tensors``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepedge.errors import DataError, SpecError

__all__ = ["FORMAT", "TensorData", "as_tensor_data", "is_tensor_file"]

FORMAT = "deepedge-tensors-1"
"""The ``format`` entry of a saved :class:`TensorData` (an ArrayDataset file has none)."""

MAX_ITEMS = 10_000_000


def _canonical(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        return np.ascontiguousarray(a, dtype=np.float32)
    if np.issubdtype(a.dtype, np.integer):
        return np.ascontiguousarray(a, dtype=np.int64)
    raise SpecError(
        f"{what} must be numbers, got dtype {a.dtype}",
        hint="convert to float or integer arrays (strings and objects cannot be trained on)",
    )


@dataclass(frozen=True, eq=False)
class TensorData:
    """Inputs and targets as numpy arrays of equal length (float32 or int64)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        for name in ("x", "y"):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.ndim < 1:
                raise DataError(f"TensorData.{name} must be an array with a sample axis")
            object.__setattr__(self, name, _canonical(value, name))
        if len(self.x) != len(self.y):
            raise SpecError(
                f"the data has {len(self.x)} inputs but {len(self.y)} targets",
                hint="X and y must pair up one to one",
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes + self.y.nbytes)

    def to_tensors(self) -> tuple[Any, Any]:
        """``(x, y)`` as torch tensors sharing the arrays' memory."""
        import torch

        return torch.from_numpy(self.x), torch.from_numpy(self.y)

    def head(self, n: int) -> tuple[Any, Any]:
        """The first ``n`` samples as tensors (validation and evaluation batches)."""
        import torch

        return torch.from_numpy(self.x[:n].copy()), torch.from_numpy(self.y[:n].copy())

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed ``.npz``; ``labels`` is ``y`` (the run controller and the
        agent pool read the data set's size from that entry)."""
        p = Path(path)
        try:
            with p.open("wb") as fh:
                np.savez(fh, format=np.str_(FORMAT), x=self.x, labels=self.y)
        except OSError as err:
            raise DataError(
                f"cannot write data set to {p}: {err.strerror}",
                hint="check the directory exists and is writable",
            ) from None
        return p

    @classmethod
    def load(cls, path: str | Path) -> TensorData:
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                return cls(z["x"], z["labels"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(
                f"{p} is not a readable deepedge tensor data set ({err})",
                hint="the file is corrupt or truncated; run deepedge.fit again",
            ) from None


def is_tensor_file(path: str | Path) -> bool:
    """Whether ``path`` holds a :class:`TensorData` (not an image ArrayDataset)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "format" in z.files and str(z["format"]) == FORMAT
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def _array(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value)
    except Exception as err:
        raise SpecError(
            f"{what} cannot be read as an array: {type(err).__name__}: {err}",
            hint="give numpy arrays or torch tensors of numbers",
        ) from None
    if a.dtype == object:
        raise SpecError(
            f"{what} holds objects of mixed shapes or types, not numbers",
            hint="every sample must have the same shape",
        )
    return a


def as_tensor_data(data: Any, what: str = "data") -> TensorData:
    """``data`` as :class:`TensorData`: a TensorData, an ``(X, y)`` pair of arrays or
    tensors, or a map-style torch ``Dataset`` whose items are ``(x, y)`` pairs (read once,
    in order: random augmentation in ``__getitem__`` is frozen at its first draw)."""
    if isinstance(data, TensorData):
        return data
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = (_array(v, f"{what}[{i}]") for i, v in enumerate(data))
        if x.ndim < 1 or y.ndim < 1:
            raise SpecError(
                f"{what}: X and y need a sample axis, got shapes {x.shape} and {y.shape}",
                hint="pass X of shape (N, ...) and y of shape (N,) or (N, ...)",
            )
        return TensorData(x, y)
    if (
        isinstance(data, Sized)
        and hasattr(data, "__getitem__")
        and not isinstance(data, str | bytes)
    ):
        n = len(data)
        if not 0 < n <= MAX_ITEMS:
            raise SpecError(f"{what} has {n} samples", hint="give at least one sample")
        xs, ys = [], []
        for i in range(n):
            try:
                item = data[i]
            except Exception as err:
                raise SpecError(
                    f"{what}[{i}] raised {type(err).__name__}: {err}",
                    hint="the Dataset must answer every index in 0..len-1",
                ) from None
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise SpecError(
                    f"{what}[{i}] is a {type(item).__name__}, not an (x, y) pair",
                    hint="__getitem__ must return (input, target)",
                )
            xs.append(_array(item[0], f"{what}[{i}][0]"))
            ys.append(_array(item[1], f"{what}[{i}][1]"))
        for label, parts in (("inputs", xs), ("targets", ys)):
            shapes = {p.shape for p in parts}
            if len(shapes) > 1:
                raise SpecError(
                    f"{what}'s {label} differ in shape: {sorted(shapes)[:3]}",
                    hint="every sample must have the same shape (pad or resize them)",
                )
        return TensorData(np.stack(xs), np.stack(ys))
    raise SpecError(
        f"{what} is a {type(data).__name__}; expected (X, y) arrays or a torch Dataset",
        hint="pass data=(X, y) or a Dataset whose items are (x, y) pairs",
    )
