"""In-memory image classification data sets as plain numpy arrays.

Every data source (synthetic, image folder, digits) ends up as an :class:`ArrayDataset`:
uint8 images plus int64 labels. Keeping the canonical form uint8 makes a data set small
enough to ship to an edge device as one ``.npz`` file and lets the drift transforms work
in pixel units; conversion to float tensors happens only at the edge, in
:meth:`ArrayDataset.to_tensors`, with fixed constants so every device normalises alike.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepedge.errors import DataError, SpecError

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_SCALE",
    "ArrayDataset",
    "split_train_test",
    "stratified_indices",
]

#: ``to_tensors`` maps a pixel ``p`` in 0..255 to ``(p/255 - PIXEL_MEAN) / PIXEL_SCALE``,
#: i.e. onto [-2, 2]. Fixed constants, not data statistics: source and drifted domains are
#: normalised identically (so the drift stays visible to the model) and nothing extra has
#: to travel with a checkpoint.
PIXEL_MEAN = 0.5
PIXEL_SCALE = 0.25


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64 in ``0..num_classes-1``.

    Frozen so a data set handed to several workers cannot be rebound by one of them;
    the arrays themselves are not copied, so treat them as read-only (every method here
    returns new arrays rather than editing in place).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if not isinstance(imgs, np.ndarray) or imgs.dtype != np.uint8 or imgs.ndim != 4:
            raise DataError(
                f"images must be a uint8 array of shape (N, C, H, W), got "
                f"{type(imgs).__name__} {getattr(imgs, 'dtype', '?')} "
                f"shape {getattr(imgs, 'shape', '?')}",
                hint="convert with np.asarray(x, dtype=np.uint8) in NCHW layout",
            )
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
            raise DataError(
                f"labels must be an int64 array of shape (N,), got "
                f"{type(labels).__name__} {getattr(labels, 'dtype', '?')} "
                f"shape {getattr(labels, 'shape', '?')}",
                hint="convert with np.asarray(y, dtype=np.int64)",
            )
        if len(labels) != len(imgs):
            raise DataError(
                f"{len(imgs)} images but {len(labels)} labels",
                hint="images and labels must pair up one to one",
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int | np.integer):
            raise DataError(f"num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise DataError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"{len(self.class_names)} class names for num_classes={self.num_classes}",
                hint="give exactly one name per class",
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = int(labels.min() if labels.min() < 0 else labels.max())
            raise DataError(
                f"label {bad} is outside 0..{self.num_classes - 1}",
                hint="labels must index class_names",
            )
        # Normalise the container types so equality/serialisation never depend on them.
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, the input shape models are built for."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 images scaled by ``(x/255 - 0.5) / 0.25`` (range [-2, 2]) and int64 labels.

        See :data:`PIXEL_MEAN` for why the constants are fixed.
        """
        x = self.images.astype(np.float32)
        x *= 1.0 / (255.0 * PIXEL_SCALE)
        x -= PIXEL_MEAN / PIXEL_SCALE
        return torch.from_numpy(x), torch.from_numpy(self.labels.copy())

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        """A new data set holding copies of the rows at ``indices`` (in that order)."""
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise DataError(
                f"subset indices must be a 1-D integer sequence, got dtype {idx.dtype} "
                f"shape {idx.shape}"
            )
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = int(idx.min() if idx.min() < -n else idx.max())
            raise DataError(f"subset index {bad} is out of range for {n} samples")
        return ArrayDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            num_classes=self.num_classes,
            class_names=self.class_names,
        )

    def class_counts(self) -> np.ndarray:
        """Samples per class, length ``num_classes``."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed ``.npz`` (fast to load on a slow device); returns the path."""
        p = Path(path)
        try:
            with p.open("wb") as fh:
                np.savez(
                    fh,
                    images=self.images,
                    labels=self.labels,
                    num_classes=np.int64(self.num_classes),
                    class_names=np.array(self.class_names, dtype=np.str_),
                )
        except OSError as err:
            raise DataError(
                f"cannot write data set to {p}: {err.strerror}",
                hint="check the directory exists and is writable",
            ) from None
        return p

    @classmethod
    def load(cls, path: str | Path) -> ArrayDataset:
        """Read a file written by :meth:`save`; a missing or damaged file is a DataError."""
        p = Path(path)
        if not p.is_file():
            raise DataError(
                f"no data set file at {p}",
                hint="check the path, or re-create it with ArrayDataset.save",
            )
        try:
            with np.load(p, allow_pickle=False) as z:
                images = z["images"]
                labels = z["labels"]
                num_classes = int(z["num_classes"])
                names = tuple(str(s) for s in z["class_names"].tolist())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(
                f"{p} is not a readable deepedge data set ({err})",
                hint="the file is corrupt or truncated; re-create it",
            ) from None
        return cls(images=images, labels=labels, num_classes=num_classes, class_names=names)


def stratified_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick exactly ``n`` distinct indices whose class mix matches ``labels``' as closely
    as integers allow (largest-remainder apportionment), returned in random order.

    Exact sizes matter because the planner sizes batches from the data set length.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if not 0 <= n <= total:
        raise SpecError(f"cannot take {n} samples from a data set of {total}")
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * (n / total) if total else counts.astype(float)
    take = np.floor(quotas).astype(np.int64)
    leftover = n - int(take.sum())
    # Ties broken by class order so the result is a pure function of (labels, rng state).
    order = np.lexsort((classes, -(quotas - take)))
    take[order[:leftover]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    picked = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return rng.permutation(picked).astype(np.int64)


def split_train_test(
    ds: ArrayDataset, test_fraction: float, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Stratified, seeded split into disjoint ``(train, test)``.

    The test part has ``round(test_fraction * len(ds))`` samples with the same class mix
    as ``ds``; stratifying keeps rare classes from vanishing from one side on small
    folders such as Caltech-101's smallest categories.
    """
    if not isinstance(test_fraction, float | int) or not 0.0 < float(test_fraction) < 1.0:
        raise SpecError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    rng = np.random.default_rng(np.random.SeedSequence(int(seed) % 2**64))
    n_test = round(float(test_fraction) * len(ds))
    test_idx = stratified_indices(ds.labels, n_test, rng)
    mask = np.ones(len(ds), dtype=bool)
    mask[test_idx] = False
    train_idx = rng.permutation(np.flatnonzero(mask))
    return ds.subset(train_idx), ds.subset(test_idx)
