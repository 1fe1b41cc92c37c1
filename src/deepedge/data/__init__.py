"""Data sets for re-training: synthetic shapes, image folders and digits, plus drift.

:func:`build_dataset` is the one entry point the rest of deepedge uses: given a
:class:`~deepedge.spec.DatasetSpec` it returns the train or test split, in the source
domain or the drifted target domain, always as an :class:`ArrayDataset`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from deepedge.data.arrays import (
    PIXEL_MEAN,
    PIXEL_SCALE,
    ArrayDataset,
    split_train_test,
    stratified_indices,
)
from deepedge.data.digits import load_digits
from deepedge.data.drift import apply_drift, check_class_weights, reweight_classes
from deepedge.data.folder import clean_class_name, load_image_folder
from deepedge.data.synthetic import MAX_CLASSES, make_split, make_synthetic, split_seed
from deepedge.errors import DataError, SpecError
from deepedge.spec import DatasetSpec

__all__ = [
    "MAX_CLASSES",
    "PIXEL_MEAN",
    "PIXEL_SCALE",
    "ArrayDataset",
    "apply_drift",
    "build_dataset",
    "clean_class_name",
    "load_digits",
    "load_image_folder",
    "make_split",
    "make_synthetic",
    "reweight_classes",
    "split_train_test",
    "stratified_indices",
]

log = logging.getLogger(__name__)

Split = Literal["train", "test"]


def build_dataset(spec: DatasetSpec, split: Split, *, drifted: bool) -> ArrayDataset:
    """The ``split`` of ``spec``; with ``drifted`` the target domain described by
    ``spec.drift``.

    * ``synthetic``: generated on the fly (:func:`make_split`); train and test come from
      independent seeds, the drift is rendered with the objects' foreground mask.
    * ``digits`` / ``image_folder``: the first ``spec.num_classes`` classes are split with a
      seeded stratified split into test (``test_size``) and train (``train_size``), or
      proportionally smaller if the data set has fewer samples. The drift is the same
      :func:`apply_drift` transform (clutter blended, no mask) and ``class_weights``
      resamples the split to the new class mix.

    Every result is a pure function of ``(spec, split, drifted)``, so each device can
    build its own copy and all agree.
    """
    if split not in ("train", "test"):
        raise SpecError(f"split must be 'train' or 'test', got {split!r}")
    if spec.kind == "custom":
        raise SpecError(
            "dataset.kind 'custom' is data given in Python; no spec file can build it",
            hint="train it with deepedge.fit(deepedge.Job(data=(X, y), ...), cluster)",
        )
    check_class_weights(spec.drift.class_weights, spec.num_classes)  # fail early, either domain
    if spec.kind == "synthetic":
        return make_split(spec, split, drifted=drifted)
    part = _real_split(spec, split)
    if not drifted:
        return part
    rng = np.random.default_rng(np.random.SeedSequence([split_seed(spec.seed, split), 2]))
    if spec.drift.class_weights is not None:
        part = reweight_classes(part, spec.drift.class_weights, len(part), rng)
    return ArrayDataset(
        images=apply_drift(part.images, spec.drift, rng),
        labels=part.labels,
        num_classes=part.num_classes,
        class_names=part.class_names,
    )


def _real_split(spec: DatasetSpec, split: Split) -> ArrayDataset:
    full = _first_classes(_load_real(spec), spec.num_classes, spec)
    n = len(full)
    want = spec.train_size + spec.test_size
    n_test = spec.test_size if want <= n else round(n * spec.test_size / want)
    if not 0 < n_test < n:
        raise DataError(
            f"{spec.kind} data set has {n} samples in {spec.num_classes} classes, too few to "
            f"split into train and test",
            hint="use more classes or a larger image folder",
        )
    train, test = split_train_test(full, n_test / n, seed=spec.seed)
    if split == "test":
        return test
    if len(train) > spec.train_size:
        rng = np.random.default_rng(np.random.SeedSequence([int(spec.seed) % 2**64, 3]))
        train = train.subset(stratified_indices(train.labels, spec.train_size, rng))
    return train


def _first_classes(ds: ArrayDataset, k: int, spec: DatasetSpec) -> ArrayDataset:
    """Keep classes ``0..k-1`` (``spec.num_classes`` caps a large folder, e.g. Caltech-256,
    for a quick experiment); asking for more than exist is a spec error."""
    if k > ds.num_classes:
        where = f" at {spec.path}" if spec.path else ""
        raise SpecError(
            f"dataset.num_classes is {k} but the {spec.kind} data set{where} has only "
            f"{ds.num_classes} classes",
            hint=f"set dataset.num_classes to at most {ds.num_classes}",
        )
    if k == ds.num_classes:
        return ds
    log.info("using the first %d of %d classes of the %s data set", k, ds.num_classes, spec.kind)
    keep = np.flatnonzero(ds.labels < k)
    return ArrayDataset(
        images=ds.images[keep],
        labels=ds.labels[keep],
        num_classes=k,
        class_names=ds.class_names[:k],
    )


def _load_real(spec: DatasetSpec) -> ArrayDataset:
    if spec.kind == "digits":
        return _cached_digits(spec.image_size)
    if spec.kind == "image_folder":
        root = Path(spec.path or "").expanduser()
        return _cached_folder(str(root), spec.image_size, spec.seed, _folder_stamp(root))
    raise SpecError(f"unknown dataset kind {spec.kind!r}")


def _folder_stamp(root: Path) -> tuple[int, ...]:
    """Modification times of ``root`` and its class directories: they change when a class
    or an image is added, removed or renamed, so the cache below re-reads the folder."""
    try:
        return (
            root.stat().st_mtime_ns,
            *sorted(d.stat().st_mtime_ns for d in root.iterdir() if d.is_dir()),
        )
    except OSError:
        return ()  # the loader reports the missing folder properly


# Both the train and the test split (and both domains) start from the same decoded data
# set; caching avoids decoding an image folder four times.
@functools.lru_cache(maxsize=2)
def _cached_folder(root: str, image_size: int, seed: int, _stamp: tuple[int, ...]) -> ArrayDataset:
    return load_image_folder(root, image_size=image_size, seed=seed)


@functools.lru_cache(maxsize=2)
def _cached_digits(image_size: int) -> ArrayDataset:
    return load_digits(image_size=image_size)
